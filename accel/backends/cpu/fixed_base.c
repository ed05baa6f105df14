/* Fixed-base exponentiation: a table of base^(j << (window * i)) turns every exponentiation
 * into one product per non-zero window digit and no squarings at all. */
#include <stdlib.h>

#include "ifma.h"
#include "montgomery.h"
#include "thread_pool.h"

typedef struct {
    const pec_modulus *m;
    int window;
    int64_t windows;
    mp_limb_t *table;
    const uint64_t *exp;
    int64_t exp_limbs;
    mp_limb_t *out;
} fixed_job;

static inline mp_limb_t *entry(const fixed_job *job, int64_t i, unsigned digit)
{
    int64_t per_window = ((int64_t)1 << job->window) - 1;
    return job->table + (i * per_window + (int64_t)digit - 1) * job->m->limbs;
}

/* Fills window i from its generator entry[i][1]; even digits come from a square of half the
 * digit, which is cheaper than a product. */
static int fill_windows(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const fixed_job *job = arg;
    unsigned last = (1u << job->window) - 1;
    for (int64_t i = begin; i < end; i++) {
        for (unsigned j = 2; j <= last; j++) {
            if (j % 2 == 0)
                mont_sqr(entry(job, i, j), entry(job, i, j / 2), job->m, scratch);
            else
                mont_mul(entry(job, i, j), entry(job, i, j - 1), entry(job, i, 1), job->m,
                         scratch);
        }
    }
    return PEC_OK;
}

int pec_fixed_base_table(const pec_modulus *m, const uint64_t *base, int window,
                         int64_t windows, uint64_t *table, int threads, int simd)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    fixed_job job = {m, window, windows, (mp_limb_t *)table, NULL, 0, NULL};
    mp_limb_t *scratch = malloc(2 * (size_t)n * sizeof(mp_limb_t));
    if (!scratch)
        return PEC_NO_MEMORY;
    /* Generators base^(2^(window * i)) form one chain of squarings; the rest is parallel. */
    mont_in(entry(&job, 0, 1), (const mp_limb_t *)base, m, scratch);
    for (int64_t i = 1; i < windows; i++) {
        mont_copy(entry(&job, i, 1), entry(&job, i - 1, 1), m);
        for (int s = 0; s < window; s++)
            mont_sqr(entry(&job, i, 1), entry(&job, i, 1), m, scratch);
    }
    free(scratch);
    if (simd && window > 1 && pec_ifma_worth(m, windows))
        return pec_ifma_fill_table(m, window, windows, (uint64_t *)table, threads);
    return pec_parallel_for(windows, 1, threads, 2 * n, fill_windows, &job);
}

static inline void prefetch_entry(const mp_limb_t *p, mp_size_t n)
{
    for (mp_size_t k = 0; k < n; k += 8)
        __builtin_prefetch(p + k);
}

static int fixed_rows(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const fixed_job *job = arg;
    const pec_modulus *m = job->m;
    const mp_size_t n = (mp_size_t)m->limbs;
    mp_limb_t *acc = scratch + 2 * n;
    for (int64_t r = begin; r < end; r++) {
        const uint64_t *e = job->exp + r * job->exp_limbs;
        int have = 0;
        unsigned digit = exp_bits_at(e, job->exp_limbs, 0, job->window);
        for (int64_t i = 0; i < job->windows; i++) {
            unsigned next = i + 1 < job->windows
                                ? exp_bits_at(e, job->exp_limbs, (i + 1) * job->window,
                                              job->window)
                                : 0;
            /* The table is far larger than the caches: fetch the next entry while this
             * product runs. */
            if (next)
                prefetch_entry(entry(job, i + 1, next), n);
            if (digit) {
                if (have)
                    mont_mul(acc, acc, entry(job, i, digit), m, scratch);
                else
                    mont_copy(acc, entry(job, i, digit), m);
                have = 1;
            }
            digit = next;
        }
        if (!have)
            mont_copy(acc, (const mp_limb_t *)m->one, m);
        mont_out(job->out + r * n, acc, m, scratch);
    }
    return PEC_OK;
}

int pec_powmod_fixed(const pec_modulus *m, const uint64_t *table, int window, int64_t windows,
                     const uint64_t *exp, int64_t exp_limbs, uint64_t *out, int64_t rows,
                     int threads, int simd)
{
    if (simd && pec_ifma_worth(m, rows))
        return pec_ifma_powmod_fixed(m, table, window, windows, exp, exp_limbs, out, rows,
                                     threads);
    fixed_job job = {m, window, windows, (mp_limb_t *)table, exp, exp_limbs, (mp_limb_t *)out};
    return pec_parallel_for(rows, 8, threads, 3 * (size_t)m->limbs, fixed_rows, &job);
}
