/* Multi-exponentiation out[p][j] = prod_k bases[p][k]^exps[k][j] by Pippenger's bucket
 * method, one task per (p, column, window) so that even one output row keeps every core
 * busy. Zero digits cost nothing, which matters because signed weights arrive split into
 * two columns of which one is zero. */
#include <stdlib.h>

#include "ifma.h"
#include "montgomery.h"
#include "multiexp_windows.h"
#include "thread_pool.h"

/* 2^12 buckets of a 4096-bit modulus are 2 MiB per thread: more would leave the caches. */
#define MAX_BUCKET_BITS 12

typedef struct {
    const pec_modulus *m;
    const mp_limb_t *bases; /* P x K, normal form */
    mp_limb_t *bases_mont;  /* P x K, Montgomery form */
    const uint64_t *exps;   /* K x M x E */
    int64_t E, P, K, M;
    int *width;             /* bucket bits per column */
    int64_t *first_window;  /* per column, prefix sums of window counts (M + 1 entries) */
    mp_limb_t *sums;        /* P x first_window[M] window sums, Montgomery form */
    mp_limb_t *out;
} multiexp_job;

static int to_mont(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const multiexp_job *job = arg;
    const mp_size_t n = (mp_size_t)job->m->limbs;
    for (int64_t i = begin; i < end; i++)
        mont_in(job->bases_mont + i * n, job->bases + i * n, job->m, scratch);
    return PEC_OK;
}

/* Sum over k of digit(k) * base_k for one window: buckets collect the bases per digit,
 * then a running product from the top digit down weights bucket d by d. */
static int window_sums(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const multiexp_job *job = arg;
    const pec_modulus *m = job->m;
    const mp_size_t n = (mp_size_t)m->limbs;
    const int64_t per_p = job->first_window[job->M];
    mp_limb_t *running = scratch + 2 * n;
    mp_limb_t *buckets = running + n;
    for (int64_t task = begin; task < end; task++) {
        int64_t p = task / per_p, slot = task % per_p;
        int64_t j = window_column(job->first_window, job->M, slot);
        int c = job->width[j];
        int64_t bit = (slot - job->first_window[j]) * c;
        unsigned top = (1u << c) - 1;
        unsigned char *used = (unsigned char *)(buckets + (size_t)top * n);
        memset(used, 0, top + 1);
        for (int64_t k = 0; k < job->K; k++) {
            unsigned d = exp_bits_at(job->exps + (k * job->M + j) * job->E, job->E, bit, c);
            if (!d)
                continue;
            const mp_limb_t *b = job->bases_mont + (p * job->K + k) * n;
            mp_limb_t *bucket = buckets + (size_t)(d - 1) * n;
            if (used[d])
                mont_mul(bucket, bucket, b, m, scratch);
            else
                mont_copy(bucket, b, m);
            used[d] = 1;
        }
        mp_limb_t *sum = job->sums + task * n;
        int have_running = 0, have_sum = 0;
        for (unsigned d = top; d >= 1; d--) {
            if (used[d]) {
                if (have_running)
                    mont_mul(running, running, buckets + (size_t)(d - 1) * n, m, scratch);
                else
                    mont_copy(running, buckets + (size_t)(d - 1) * n, m);
                have_running = 1;
            }
            if (have_running) {
                if (have_sum)
                    mont_mul(sum, sum, running, m, scratch);
                else
                    mont_copy(sum, running, m);
                have_sum = 1;
            }
        }
        if (!have_sum)
            mont_copy(sum, (const mp_limb_t *)m->one, m);
    }
    return PEC_OK;
}

/* Horner over the windows of one (p, column), top window first. */
static int combine(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const multiexp_job *job = arg;
    const pec_modulus *m = job->m;
    const mp_size_t n = (mp_size_t)m->limbs;
    const int64_t per_p = job->first_window[job->M];
    mp_limb_t *acc = scratch + 2 * n;
    for (int64_t task = begin; task < end; task++) {
        int64_t p = task / job->M, j = task % job->M;
        int64_t w0 = job->first_window[j], w1 = job->first_window[j + 1];
        const mp_limb_t *sums = job->sums + p * per_p * n;
        if (w1 == w0) {
            mont_copy(acc, (const mp_limb_t *)m->one, m);
        } else {
            mont_copy(acc, sums + (w1 - 1) * n, m);
            for (int64_t w = w1 - 2; w >= w0; w--) {
                for (int s = 0; s < job->width[j]; s++)
                    mont_sqr(acc, acc, m, scratch);
                mont_mul(acc, acc, sums + w * n, m, scratch);
            }
        }
        mont_out(job->out + task * n, acc, m, scratch);
    }
    return PEC_OK;
}

/* Bucket width that minimises windows * (additions + aggregation) for one column. */
static int best_width(int64_t bits, int64_t nonzero)
{
    int best = 1;
    double best_cost = -1;
    for (int c = 1; c <= MAX_BUCKET_BITS; c++) {
        double windows = (double)((bits + c - 1) / c);
        double cost = windows * ((double)nonzero + 2.0 * (double)((int64_t)1 << c));
        if (best_cost < 0 || cost < best_cost) {
            best_cost = cost;
            best = c;
        }
    }
    return best;
}

int pec_multiexp(const pec_modulus *m, const uint64_t *bases, const uint64_t *exps,
                 int64_t exp_limbs, int64_t P, int64_t K, int64_t M, uint64_t *out,
                 int threads, int simd)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    multiexp_job job = {m, (const mp_limb_t *)bases, NULL, exps, exp_limbs, P, K, M,
                        NULL, NULL, NULL, (mp_limb_t *)out};
    int rc = PEC_NO_MEMORY;
    job.width = malloc((size_t)M * sizeof(int));
    job.first_window = malloc((size_t)(M + 1) * sizeof(int64_t));
    job.bases_mont = malloc((size_t)(P * K * n + 1) * sizeof(mp_limb_t));
    if (!job.width || !job.first_window || !job.bases_mont)
        goto done;

    int widest = 1;
    int64_t all_bits = 0, all_nonzero = 0, windows = 0;
    for (int64_t j = 0; j < M; j++) {
        int64_t bits = 0, nonzero = 0;
        for (int64_t k = 0; k < K; k++) {
            int64_t b = exp_bit_length(exps + (k * M + j) * exp_limbs, exp_limbs);
            nonzero += b > 0;
            bits = b > bits ? b : bits;
        }
        job.width[j] = best_width(bits, nonzero);
        widest = job.width[j] > widest ? job.width[j] : widest;
        windows += (bits + job.width[j] - 1) / job.width[j];
        all_bits = bits > all_bits ? bits : all_bits;
        all_nonzero = nonzero > all_nonzero ? nonzero : all_nonzero;
        job.first_window[j + 1] = bits; /* window counts follow once widths are final */
    }
    /* The eight-lane kernel runs eight windows in lockstep, so they share one width. */
    int simd_sums = simd && pec_ifma_worth(m, P * windows);
    if (simd_sums) {
        /* Eight lanes of buckets per thread: 2^10 of them is 5 MiB at 4096 bits. */
        widest = best_width(all_bits, all_nonzero);
        widest = widest > 10 ? 10 : widest;
        for (int64_t j = 0; j < M; j++)
            job.width[j] = widest;
    }
    job.first_window[0] = 0;
    for (int64_t j = 0; j < M; j++) {
        int64_t bits = job.first_window[j + 1];
        job.first_window[j + 1] = job.first_window[j] + (bits + job.width[j] - 1) / job.width[j];
    }
    job.sums = malloc((size_t)(P * job.first_window[M] * n + 1) * sizeof(mp_limb_t));
    if (!job.sums)
        goto done;

    size_t buckets = ((size_t)1 << widest) * n + ((size_t)1 << widest) / 8 + 1;
    if (simd_sums) {
        rc = pec_ifma_multiexp_sums(m, bases, exps, exp_limbs, P, K, M, widest,
                                    job.first_window, job.sums, threads);
    } else {
        rc = pec_parallel_for(P * K, 16, threads, 2 * n, to_mont, &job);
        if (rc == PEC_OK)
            rc = pec_parallel_for(P * job.first_window[M], 1, threads, 3 * n + buckets,
                                  window_sums, &job);
    }
    if (rc == PEC_OK)
        rc = pec_parallel_for(P * M, 1, threads, 3 * n, combine, &job);
done:
    free(job.width);
    free(job.first_window);
    free(job.bases_mont);
    free(job.sums);
    return rc;
}
