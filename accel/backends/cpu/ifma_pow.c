/* Exponentiation on the IFMA lanes: per-row bases, fixed-base tables and their filling. */
#include "ifma_arith.h"
#include "thread_pool.h"

#if PEC_HAVE_IFMA

/* ---- fixed base ---------------------------------------------------------------------- */

typedef struct {
    const pec_modulus *m;
    ifma_mod c;
    const uint64_t *table;
    int window;
    int64_t windows;
    const uint64_t *exp;
    int64_t exp_limbs;
    uint64_t *out;
    int64_t rows;
} fixed8_job;

/* Table entries are the portable path's (64-bit limbs, times R64 = 2^(64 * limbs)), so both
 * paths share one table. Every lane multiplies once per window (digit 0 uses R64 mod m),
 * which leaves a uniform factor (R64 / R)^windows that one last product removes. */
IFMA static int fixed8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const fixed8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    uint64_t *acc = aligned_scratch(scratch), *b = acc + vec, *t = b + vec;
    const int64_t per_window = ((int64_t)1 << job->window) - 1;
    for (int64_t g = begin; g < end; g++) {
        int64_t first = g * LANES;
        int lanes = job->rows - first < LANES ? (int)(job->rows - first) : LANES;
        memcpy(acc, c->unit_v, vec * sizeof(uint64_t));
        for (int64_t i = 0; i < job->windows; i++) {
            for (int l = 0; l < LANES; l++) {
                const uint64_t *e = job->exp + (first + (l < lanes ? l : 0)) * job->exp_limbs;
                unsigned d = exp_bits_at(e, job->exp_limbs, i * job->window, job->window);
                const uint64_t *src =
                    d ? job->table + (i * per_window + d - 1) * L : job->m->one;
                to_digits(b + l, LANES, src, L, n);
            }
            amm8(acc, acc, b, c, t);
        }
        amm8(acc, acc, c->fix_v, c, t);
        reduce8(acc, c, t);
        for (int l = 0; l < lanes; l++)
            from_digits(job->out + (first + l) * L, acc, l, L, n);
    }
    return PEC_OK;
}

int pec_ifma_powmod_fixed(const pec_modulus *m, const uint64_t *table, int window,
                          int64_t windows, const uint64_t *exp, int64_t exp_limbs,
                          uint64_t *out, int64_t rows, int threads)
{
    fixed8_job job = {m, {0}, table, window, windows, exp, exp_limbs, out, rows};
    int64_t n = digits_for(m);
    /* fix = R^(windows + 1) / R64^windows */
    int64_t fix = 52 * n * (windows + 1) - 64 * m->limbs * windows;
    int rc = ifma_mod_init(&job.c, m, 1, fix);
    if (rc != PEC_OK)
        return rc;
    size_t scratch = (4 * (size_t)n + 1) * LANES + 8;
    rc = pec_parallel_for((rows + LANES - 1) / LANES, 1, threads, scratch, fixed8_groups, &job);
    ifma_mod_free(&job.c);
    return rc;
}

/* Fills the table of pec_fixed_base_table from its generators (entry 1 of every window,
 * already in place), eight windows in lockstep: every window runs the same sequence of
 * squares and products. */
typedef struct {
    ifma_mod c;      /* fix_v: R^2 / R64, moves an R64-form generator into R form */
    uint64_t *r64_v; /* R64 mod m in every lane: moves entries back into R64 form */
    uint64_t *table;
    int window;
    int64_t windows;
} table8_job;

IFMA static int table8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const table8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    const int64_t count = (int64_t)1 << job->window, per_window = count - 1;
    uint64_t *out = aligned_scratch(scratch), *t = out + vec;
    uint64_t *pow = t + (2 * n + 1) * LANES; /* count vectors: pow[j] = g^j R */
    for (int64_t g = begin; g < end; g++) {
        int lanes = job->windows - g * LANES < LANES ? (int)(job->windows - g * LANES) : LANES;
        for (int l = 0; l < LANES; l++) {
            int64_t i = g * LANES + (l < lanes ? l : 0);
            to_digits(pow + vec + l, LANES, job->table + i * per_window * L, L, n);
        }
        amm8(pow + vec, pow + vec, c->fix_v, c, t);
        for (int64_t j = 2; j < count; j++) {
            if (j % 2 == 0)
                amm8(pow + j * vec, pow + (j / 2) * vec, pow + (j / 2) * vec, c, t);
            else
                amm8(pow + j * vec, pow + (j - 1) * vec, pow + vec, c, t);
            amm8(out, pow + j * vec, job->r64_v, c, t);
            reduce8(out, c, t);
            for (int l = 0; l < lanes; l++)
                from_digits(job->table + ((g * LANES + l) * per_window + j - 1) * L, out, l, L,
                            n);
        }
    }
    return PEC_OK;
}

int pec_ifma_fill_table(const pec_modulus *m, int window, int64_t windows, uint64_t *table,
                        int threads)
{
    const int64_t n = digits_for(m);
    table8_job job = {.table = table, .window = window, .windows = windows};
    int rc = ifma_mod_init(&job.c, m, 1, 2 * 52 * n - 64 * m->limbs);
    if (rc != PEC_OK)
        return rc;
    job.r64_v = aligned_alloc(64, (size_t)n * LANES * sizeof(uint64_t));
    if (!job.r64_v) {
        ifma_mod_free(&job.c);
        return PEC_NO_MEMORY;
    }
    for (int l = 0; l < LANES; l++)
        to_digits(job.r64_v + l, LANES, m->one, m->limbs, n);
    size_t scratch = ((3 * (size_t)n + 1) + ((size_t)n << window)) * LANES + 8;
    rc = pec_parallel_for((windows + LANES - 1) / LANES, 1, threads, scratch, table8_groups,
                          &job);
    free(job.r64_v);
    ifma_mod_free(&job.c);
    return rc;
}

/* ---- per-row base ---------------------------------------------------------------------- */

typedef struct {
    const pec_modulus *m;
    ifma_mod c;
    const uint64_t *base;
    const uint64_t *exp;
    int64_t exp_limbs, exp_step;
    uint64_t *out;
    int64_t rows;
    int window;
} pow8_job;

/* b[lane] = tab[digit[lane]] for every lane. */
static void gather(uint64_t *b, const uint64_t *tab, const unsigned *digit, int64_t n)
{
    const size_t vec = (size_t)n * LANES;
    for (int64_t k = 0; k < n; k++)
        for (int l = 0; l < LANES; l++)
            b[k * LANES + l] = tab[digit[l] * vec + k * LANES + l];
}

/* Fixed windows rather than sliding ones: every lane then runs the same sequence of
 * squarings and differs only in which table entry it multiplies by. */
IFMA static int pow8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const pow8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    const int w = job->window;
    uint64_t *acc = aligned_scratch(scratch), *b = acc + vec, *t = b + vec;
    uint64_t *tab = t + (2 * n + 1) * LANES; /* 2^w entries */
    for (int64_t g = begin; g < end; g++) {
        int64_t first = g * LANES;
        int lanes = job->rows - first < LANES ? (int)(job->rows - first) : LANES;
        const uint64_t *e[LANES];
        int64_t bits = 0;
        for (int l = 0; l < LANES; l++) {
            int64_t row = first + (l < lanes ? l : 0);
            e[l] = job->exp + row * job->exp_step * job->exp_limbs;
            to_digits(b + l, LANES, job->base + row * L, L, n);
            int64_t lb = exp_bit_length(e[l], job->exp_limbs);
            bits = lb > bits ? lb : bits;
        }
        memcpy(tab, c->one_v, vec * sizeof(uint64_t));
        amm8(tab + vec, b, c->r2_v, c, t);
        for (int64_t k = 2; k < ((int64_t)1 << w); k++)
            amm8(tab + k * vec, tab + (k - 1) * vec, tab + vec, c, t);
        int64_t top = bits ? (bits - 1) / w : -1;
        unsigned digit[LANES];
        memcpy(acc, c->one_v, vec * sizeof(uint64_t));
        for (int64_t i = top; i >= 0; i--) {
            unsigned any = 0;
            for (int l = 0; l < LANES; l++) {
                digit[l] = exp_bits_at(e[l], job->exp_limbs, i * w, w);
                any |= digit[l];
            }
            if (i == top) {
                gather(acc, tab, digit, n);
                continue;
            }
            for (int s = 0; s < w; s++)
                amm8(acc, acc, acc, c, t);
            if (any) {
                gather(b, tab, digit, n);
                amm8(acc, acc, b, c, t);
            }
        }
        amm8(acc, acc, c->unit_v, c, t);
        reduce8(acc, c, t);
        for (int l = 0; l < lanes; l++)
            from_digits(job->out + (first + l) * L, acc, l, L, n);
    }
    return PEC_OK;
}

int pec_ifma_powmod(const pec_modulus *m, const uint64_t *base, const uint64_t *exp,
                    int64_t exp_limbs, int64_t exp_step, uint64_t *out, int64_t rows,
                    int threads)
{
    int64_t bits = exp_limbs * 64;
    int w = bits >= 512 ? 5 : bits >= 128 ? 4 : 3;
    pow8_job job = {m, {0}, base, exp, exp_limbs, exp_step, out, rows, w};
    int rc = ifma_mod_init(&job.c, m, 0, 0);
    if (rc != PEC_OK)
        return rc;
    int64_t n = job.c.n;
    size_t scratch = (4 * (size_t)n + 1 + ((size_t)n << w)) * LANES + 8;
    rc = pec_parallel_for((rows + LANES - 1) / LANES, 1, threads, scratch, pow8_groups, &job);
    ifma_mod_free(&job.c);
    return rc;
}

#else /* no IFMA in this build: pec_ifma_usable() is 0 and these are never called */

int pec_ifma_powmod_fixed(const pec_modulus *m, const uint64_t *table, int window,
                          int64_t windows, const uint64_t *exp, int64_t exp_limbs,
                          uint64_t *out, int64_t rows, int threads)
{
    return PEC_NO_MEMORY;
}

int pec_ifma_fill_table(const pec_modulus *m, int window, int64_t windows, uint64_t *table,
                        int threads)
{
    return PEC_NO_MEMORY;
}

int pec_ifma_powmod(const pec_modulus *m, const uint64_t *base, const uint64_t *exp,
                    int64_t exp_limbs, int64_t exp_step, uint64_t *out, int64_t rows,
                    int threads)
{
    return PEC_NO_MEMORY;
}

#endif
