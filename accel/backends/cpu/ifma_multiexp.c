/* Pippenger window sums of pec_multiexp on the IFMA lanes. */
#include "ifma_arith.h"
#include "multiexp_windows.h"
#include "thread_pool.h"

#if PEC_HAVE_IFMA

/* ---- multi-exponentiation window sums --------------------------------------------------- */

typedef struct {
    const pec_modulus *m;
    ifma_mod c;
    const uint64_t *bases; /* P x K, normal form */
    const uint64_t *exps;  /* K x M x E */
    int64_t P, K, M, E;
    int width;
    const int64_t *first_window;
    int64_t tasks;
    uint64_t *bases52; /* P x K x n digits, Montgomery form */
    uint64_t *sums;    /* tasks x limbs, out */
} mexp8_job;

IFMA static int mexp8_convert(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const mexp8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs, count = job->P * job->K;
    const size_t vec = (size_t)n * LANES;
    uint64_t *v = aligned_scratch(scratch), *t = v + vec;
    for (int64_t g = begin; g < end; g++) {
        for (int l = 0; l < LANES; l++) {
            int64_t i = g * LANES + l < count ? g * LANES + l : g * LANES;
            to_digits(v + l, LANES, job->bases + i * L, L, n);
        }
        amm8(v, v, c->r2_v, c, t);
        for (int l = 0; l < LANES && g * LANES + l < count; l++)
            for (int64_t k = 0; k < n; k++)
                job->bases52[(g * LANES + l) * n + k] = v[k * LANES + l];
    }
    return PEC_OK;
}

/* Eight (p, column, window) tasks in lockstep. Every bucket starts at 1, so empty buckets
 * and idle lanes need no special case: lanes whose digit is 0 work on a spare slot 0. */
IFMA static int mexp8_sums(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const mexp8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs, per_p = job->first_window[job->M];
    const size_t vec = (size_t)n * LANES;
    const int w = job->width;
    const unsigned top = (1u << w) - 1;
    uint64_t *a = aligned_scratch(scratch), *b = a + vec, *t = b + vec;
    uint64_t *running = t + (2 * n + 1) * LANES, *sum = running + vec, *buckets = sum + vec;
    for (int64_t g = begin; g < end; g++) {
        int64_t p[LANES], j[LANES], bit[LANES], task[LANES];
        for (int l = 0; l < LANES; l++) {
            task[l] = g * LANES + l < job->tasks ? g * LANES + l : g * LANES;
            p[l] = task[l] / per_p;
            int64_t slot = task[l] % per_p;
            j[l] = window_column(job->first_window, job->M, slot);
            bit[l] = (slot - job->first_window[j[l]]) * w;
        }
        for (unsigned d = 0; d <= top; d++)
            memcpy(buckets + d * vec, c->one_v, vec * sizeof(uint64_t));
        for (int64_t k = 0; k < job->K; k++) {
            unsigned digit[LANES], any = 0;
            for (int l = 0; l < LANES; l++) {
                digit[l] = exp_bits_at(job->exps + (k * job->M + j[l]) * job->E, job->E,
                                       bit[l], w);
                any |= digit[l];
            }
            if (!any)
                continue;
            for (int64_t i = 0; i < n; i++)
                for (int l = 0; l < LANES; l++) {
                    b[i * LANES + l] = buckets[digit[l] * vec + i * LANES + l];
                    a[i * LANES + l] = job->bases52[(p[l] * job->K + k) * n + i];
                }
            amm8(b, b, a, c, t);
            for (int64_t i = 0; i < n; i++)
                for (int l = 0; l < LANES; l++)
                    buckets[digit[l] * vec + i * LANES + l] = b[i * LANES + l];
        }
        memcpy(running, c->one_v, vec * sizeof(uint64_t));
        memcpy(sum, c->one_v, vec * sizeof(uint64_t));
        for (unsigned d = top; d >= 1; d--) {
            amm8(running, running, buckets + d * vec, c, t);
            amm8(sum, sum, running, c, t);
        }
        /* Hand the sums over in the portable path's Montgomery form (times R64). */
        amm8(sum, sum, c->fix_v, c, t);
        reduce8(sum, c, t);
        for (int l = 0; l < LANES && g * LANES + l < job->tasks; l++)
            from_digits(job->sums + task[l] * L, sum, l, L, n);
    }
    return PEC_OK;
}

int pec_ifma_multiexp_sums(const pec_modulus *m, const uint64_t *bases, const uint64_t *exps,
                           int64_t exp_limbs, int64_t P, int64_t K, int64_t M, int width,
                           const int64_t *first_window, uint64_t *sums, int threads)
{
    mexp8_job job = {.m = m,
                     .bases = bases,
                     .exps = exps,
                     .P = P,
                     .K = K,
                     .M = M,
                     .E = exp_limbs,
                     .width = width,
                     .first_window = first_window,
                     .tasks = P * first_window[M],
                     .sums = sums};
    int rc = ifma_mod_init(&job.c, m, 1, 64 * m->limbs);
    if (rc != PEC_OK)
        return rc;
    const int64_t n = job.c.n;
    job.bases52 = malloc(((size_t)(P * K) * n + 1) * sizeof(uint64_t));
    if (!job.bases52) {
        ifma_mod_free(&job.c);
        return PEC_NO_MEMORY;
    }
    rc = pec_parallel_for((P * K + LANES - 1) / LANES, 4, threads, (4 * (size_t)n + 1) * LANES + 8,
                          mexp8_convert, &job);
    size_t scratch = (6 * (size_t)n + 1 + ((size_t)n << width)) * LANES + 8;
    if (rc == PEC_OK)
        rc = pec_parallel_for((job.tasks + LANES - 1) / LANES, 1, threads, scratch, mexp8_sums,
                              &job);
    free(job.bases52);
    ifma_mod_free(&job.c);
    return rc;
}

#else /* no IFMA in this build: pec_ifma_usable() is 0 and these are never called */

int pec_ifma_multiexp_sums(const pec_modulus *m, const uint64_t *bases, const uint64_t *exps,
                           int64_t exp_limbs, int64_t P, int64_t K, int64_t M, int width,
                           const int64_t *first_window, uint64_t *sums, int threads)
{
    return PEC_NO_MEMORY;
}

#endif
