/* Elementwise batches on the IFMA lanes: mulmod, segment products for prodmod, invmod. */
#include "ifma_arith.h"
#include "thread_pool.h"

#if PEC_HAVE_IFMA

/* ---- mulmod ------------------------------------------------------------------------------ */

typedef struct {
    ifma_mod c;
    const uint64_t *a, *b;
    int64_t b_step, rows;
    uint64_t *out;
    uint64_t *b_v;  /* broadcast factor in Montgomery form, or NULL */
    int64_t bits;   /* bit length k of m */
    int64_t cutoff; /* columns of t mu below this one are left out of the quotient */
} mul8_job;

/* dst = src >> shift, n digits; src has 2n + 1 digit vectors (the last zero) and the shifted
 * value fits n digits. */
IFMA static inline void shr8(uint64_t *dst, const uint64_t *src, int64_t shift, int64_t n)
{
    const int64_t s = shift / 52;
    const int r = (int)(shift % 52);
    const __m512i mask = BCAST(MASK52);
    const __m128i right = _mm_cvtsi64_si128(r), left = _mm_cvtsi64_si128(52 - r);
    for (int64_t d = 0; d < n; d++) {
        __m512i v = _mm512_srl_epi64(LOAD(src + (s + d) * LANES), right);
        v = _mm512_or_si512(v, _mm512_sll_epi64(LOAD(src + (s + d + 1) * LANES), left));
        STORE(dst + d * LANES, _mm512_and_si512(v, mask));
    }
}

/* x = p mod m for a product p < m^2 of 2n digits (2n + 1 vectors), by Barrett reduction with
 * mu = floor(2^2k / m): t = p >> (k - 1), q = (t mu) >> (k + 1), x = p - q m. Only the top
 * columns of t mu (from job->cutoff) and the low n columns of q m are formed: half the
 * products of a Montgomery multiplication. q falls short of floor(p / m) by at most 2
 * (Barrett) plus 1 (the columns left out), so p - q m < 4m and three conditional
 * subtractions finish. q, w: n and 2n + 1 vectors of scratch. */
IFMA static void barrett8(uint64_t *x, const uint64_t *p, const mul8_job *job, uint64_t *q,
                          uint64_t *w)
{
    const ifma_mod *c = &job->c;
    const int64_t n = c->n;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i mask = BCAST(MASK52);
    const uint64_t *mu = c->fix_v;
    shr8(q, p, job->bits - 1, n); /* t, held in q until the quotient replaces it */
    for (int64_t k = 0; k < 2 * n + 1; k++)
        STORE(w + k * LANES, zero);
    /* rows in pairs from the first column either row needs; extra terms only help */
    for (int64_t i = 0; i < n; i += 2) {
        int64_t first = job->cutoff - 2 - i > 0 ? job->cutoff - 2 - i : 0;
        if (first < n)
            product_rows(w, mu, q, i, i + 1 < n, first, n - 1);
    }
    normalize8(w, 2 * n);
    shr8(q, w, job->bits + 1, n); /* the quotient */
    /* q m mod 2^52n: row i needs columns below n only; what pairs add above is dropped */
    for (int64_t k = 0; k < 2 * n + 1; k++)
        STORE(w + k * LANES, zero);
    for (int64_t i = 0; i < n; i += 2)
        product_rows(w, c->mod_v, q, i, i + 1 < n, 0, n - 1 - i);
    normalize8(w, n);
    __m512i borrow = zero;
    for (int64_t k = 0; k < n; k++) {
        __m512i d = _mm512_sub_epi64(_mm512_sub_epi64(LOAD(p + k * LANES), LOAD(w + k * LANES)),
                                     borrow);
        borrow = _mm512_srli_epi64(d, 63);
        STORE(x + k * LANES, _mm512_and_si512(d, mask));
    }
    for (int s = 0; s < 3; s++)
        reduce8(x, c, w);
}

IFMA static int mul8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const mul8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    uint64_t *x = aligned_scratch(scratch), *y = x + vec, *p = y + vec, *w = p + vec * 2 + LANES;
    for (int64_t g = begin; g < end; g++) {
        int64_t first = g * LANES;
        int lanes = job->rows - first < LANES ? (int)(job->rows - first) : LANES;
        for (int l = 0; l < LANES; l++) {
            int64_t row = first + (l < lanes ? l : 0);
            to_digits(x + l, LANES, job->a + row * L, L, n);
            if (!job->b_v)
                to_digits(y + l, LANES, job->b + row * job->b_step * L, L, n);
        }
        if (job->b_v) {
            amm8(x, x, job->b_v, c, p); /* a * (b R) / R */
            reduce8(x, c, p);
        } else {
            mul8(p, x, y, n);
            barrett8(x, p, job, y, w);
        }
        for (int l = 0; l < lanes; l++)
            from_digits(job->out + (first + l) * L, x, l, L, n);
    }
    return PEC_OK;
}

/* mu = floor(2^2k / m) as 64-bit limbs (limbs + 1 of them: mu has k + 1 bits). */
static void barrett_mu(uint64_t *out, int64_t limbs, const pec_modulus *m, int64_t k)
{
    mpz_t mod, r;
    mpz_roinit_n(mod, (const mp_limb_t *)m->mod, (mp_size_t)m->limbs);
    mpz_init(r);
    mpz_setbit(r, (mp_bitcnt_t)(2 * k));
    mpz_fdiv_q(r, r, mod);
    memset(out, 0, (size_t)limbs * sizeof(uint64_t));
    mpz_export(out, NULL, -1, sizeof(uint64_t), 0, 0, r);
    mpz_clear(r);
}

int pec_ifma_mulmod(const pec_modulus *m, const uint64_t *a, const uint64_t *b, int64_t b_step,
                    uint64_t *out, int64_t rows, int threads)
{
    const int64_t bits = (int64_t)mpn_sizeinbase((const mp_limb_t *)m->mod, (mp_size_t)m->limbs, 2);
    mul8_job job = {.a = a, .b = b, .b_step = b_step, .rows = rows, .out = out, .bits = bits};
    /* fix_v holds mu for per-row factors, or b R for a broadcast one */
    int rc = ifma_mod_init(&job.c, m, 1, 0);
    if (rc != PEC_OK)
        return rc;
    const int64_t n = job.c.n;
    /* The columns left out of t mu hold at most 2n^2 < 2^17 terms below 2^(52 cutoff) each:
     * together below 2^(k + 1), one unit of the quotient. */
    job.cutoff = (bits + 1 - 17) / 52 > 0 ? (bits + 1 - 17) / 52 : 0;
    size_t scratch = (6 * (size_t)n + 2) * LANES + 8;
    uint64_t *t = aligned_alloc(64, (2 * (size_t)n + 1) * LANES * sizeof(uint64_t));
    uint64_t *limbs = malloc(((size_t)m->limbs + 1) * sizeof(uint64_t));
    if (!t || !limbs) {
        free(t);
        free(limbs);
        ifma_mod_free(&job.c);
        return PEC_NO_MEMORY;
    }
    if (b_step) {
        barrett_mu(limbs, m->limbs + 1, m, bits);
        for (int l = 0; l < LANES; l++)
            to_digits(job.c.fix_v + l, LANES, limbs, m->limbs + 1, n);
    } else {
        for (int l = 0; l < LANES; l++)
            to_digits(job.c.fix_v + l, LANES, b, m->limbs, n);
        amm8(job.c.fix_v, job.c.fix_v, job.c.r2_v, &job.c, t);
        job.b_v = job.c.fix_v;
    }
    free(t);
    free(limbs);
    rc = pec_parallel_for((rows + LANES - 1) / LANES, 4, threads, scratch, mul8_groups, &job);
    ifma_mod_free(&job.c);
    return rc;
}

/* ---- segment products for prodmod ---------------------------------------------------------- */

typedef struct {
    ifma_mod c;
    const uint64_t *a;
    int64_t K, N, segments, steps, tasks;
    uint64_t *partial; /* segments x N, normal form */
} prod8_job;

/* Lanes run segments of equal step count; a lane whose segment is shorter multiplies by a
 * plain 1, which drifts by R^-1 exactly like a real factor, so one start value (R^steps)
 * cancels the drift in every lane. */
IFMA static int prod8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const prod8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    uint64_t *acc = aligned_scratch(scratch), *x = acc + vec, *t = x + vec;
    static const uint64_t unit_limb[1] = {1};
    for (int64_t g = begin; g < end; g++) {
        int64_t k0[LANES], k1[LANES], col[LANES], task[LANES];
        int lanes = job->tasks - g * LANES < LANES ? (int)(job->tasks - g * LANES) : LANES;
        for (int l = 0; l < LANES; l++) {
            task[l] = g * LANES + (l < lanes ? l : 0);
            int64_t s = task[l] / job->N;
            col[l] = task[l] % job->N;
            k0[l] = job->K * s / job->segments;
            k1[l] = job->K * (s + 1) / job->segments;
        }
        memcpy(acc, c->fix_v, vec * sizeof(uint64_t));
        for (int64_t step = 0; step < job->steps; step++) {
            for (int l = 0; l < LANES; l++) {
                int64_t k = k0[l] + step;
                if (k < k1[l])
                    to_digits(x + l, LANES, job->a + (k * job->N + col[l]) * L, L, n);
                else
                    to_digits(x + l, LANES, unit_limb, 1, n);
            }
            amm8(acc, acc, x, c, t);
        }
        reduce8(acc, c, t);
        for (int l = 0; l < lanes; l++)
            from_digits(job->partial + task[l] * L, acc, l, L, n);
    }
    return PEC_OK;
}

int pec_ifma_segment_products(const pec_modulus *m, const uint64_t *a, int64_t K, int64_t N,
                              int64_t segments, uint64_t *partial, int threads)
{
    int64_t steps = (K + segments - 1) / segments;
    prod8_job job = {.a = a, .K = K, .N = N, .segments = segments, .steps = steps,
                     .tasks = segments * N, .partial = partial};
    int rc = ifma_mod_init(&job.c, m, 1, 52 * digits_for(m) * steps);
    if (rc != PEC_OK)
        return rc;
    size_t scratch = (4 * (size_t)job.c.n + 1) * LANES + 8;
    rc = pec_parallel_for((job.tasks + LANES - 1) / LANES, 1, threads, scratch, prod8_groups,
                          &job);
    ifma_mod_free(&job.c);
    return rc;
}

/* ---- batch inversion ------------------------------------------------------------------------ */

#define INV_STEPS 64 /* rows per lane: one GMP inversion per lane amortised over them */

typedef struct {
    const pec_modulus *m;
    ifma_mod c;
    const uint64_t *a;
    uint64_t *out;
    int64_t rows;
    int64_t bad_index; /* smallest row without an inverse, or -1 */
} inv8_job;

static void inv8_note_bad(inv8_job *job, int64_t index)
{
    int64_t seen = __atomic_load_n(&job->bad_index, __ATOMIC_SEQ_CST);
    while ((seen < 0 || index < seen) &&
           !__atomic_compare_exchange_n(&job->bad_index, &seen, index, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
}

/* Montgomery's trick in every lane over INV_STEPS consecutive rows (lanes past the end
 * multiply by 1, which keeps their R^-1 drift in step). Prefix products drift by R^-1 per
 * product; with y = (a_0 ... a_s)^-1 R^s the drift cancels on the way back, as in the
 * portable invmod. */
IFMA static int inv8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    inv8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    static const uint64_t unit_limb[1] = {1};
    uint64_t *y = aligned_scratch(scratch), *x = y + vec, *w = x + vec, *t = w + vec;
    uint64_t *prefix = t + (2 * n + 1) * LANES; /* INV_STEPS vectors */
    uint64_t *limbs = prefix + INV_STEPS * vec; /* L limbs */
    mpz_t mod, value, inv;
    mpz_roinit_n(mod, (const mp_limb_t *)job->m->mod, (mp_size_t)L);
    mpz_init(inv);
    int rc = PEC_OK;
    for (int64_t g = begin; g < end && rc == PEC_OK; g++) {
        const int64_t first = g * LANES * INV_STEPS;
#define ROW(l, s) (first + (int64_t)(l) * INV_STEPS + (s))
#define LOAD_ROW(dst, l, s)                                                                 \
    to_digits((dst) + (l), LANES, ROW(l, s) < job->rows ? job->a + ROW(l, s) * L : unit_limb, \
              ROW(l, s) < job->rows ? L : 1, n)
        for (int l = 0; l < LANES; l++)
            LOAD_ROW(prefix, l, 0);
        for (int s = 1; s < INV_STEPS; s++) {
            for (int l = 0; l < LANES; l++)
                LOAD_ROW(x, l, s);
            amm8(prefix + s * vec, prefix + (s - 1) * vec, x, c, t);
        }
        memcpy(y, prefix + (INV_STEPS - 1) * vec, vec * sizeof(uint64_t));
        reduce8(y, c, t);
        for (int l = 0; l < LANES && rc == PEC_OK; l++) {
            from_digits(limbs, y, l, L, n);
            mpz_roinit_n(value, (const mp_limb_t *)limbs, (mp_size_t)L);
            if (!mpz_invert(inv, value, mod)) {
                rc = PEC_NOT_INVERTIBLE;
                break;
            }
            memset(limbs, 0, (size_t)L * sizeof(uint64_t));
            mpz_export(limbs, NULL, -1, sizeof(uint64_t), 0, 0, inv);
            to_digits(y + l, LANES, limbs, L, n);
        }
        if (rc != PEC_OK) {
            /* Name the first culprit of this group; earlier groups were all handed out
             * before this one and finish their own checks. */
            mpz_t g_, row;
            mpz_init(g_);
            for (int64_t i = first; i < job->rows && i < first + LANES * INV_STEPS; i++) {
                mpz_roinit_n(row, (const mp_limb_t *)job->a + i * L, (mp_size_t)L);
                mpz_gcd(g_, row, mod);
                if (mpz_cmp_ui(g_, 1) != 0) {
                    inv8_note_bad(job, i);
                    break;
                }
            }
            mpz_clear(g_);
            break;
        }
        for (int s = INV_STEPS - 1; s > 0; s--) {
            amm8(w, y, prefix + (s - 1) * vec, c, t); /* the inverse of row s */
            for (int l = 0; l < LANES; l++)
                LOAD_ROW(x, l, s);
            amm8(y, y, x, c, t);
            reduce8(w, c, t);
            for (int l = 0; l < LANES; l++)
                if (ROW(l, s) < job->rows)
                    from_digits(job->out + ROW(l, s) * L, w, l, L, n);
        }
        reduce8(y, c, t);
        for (int l = 0; l < LANES; l++)
            if (ROW(l, 0) < job->rows)
                from_digits(job->out + ROW(l, 0) * L, y, l, L, n);
#undef LOAD_ROW
#undef ROW
    }
    mpz_clear(inv);
    return rc;
}

int pec_ifma_invmod(const pec_modulus *m, const uint64_t *a, uint64_t *out, int64_t rows,
                    int64_t *bad_index, int threads)
{
    inv8_job job = {.m = m, .a = a, .out = out, .rows = rows, .bad_index = -1};
    int rc = ifma_mod_init(&job.c, m, 0, 0);
    if (rc != PEC_OK)
        return rc;
    const int64_t n = job.c.n;
    size_t scratch = ((5 * (size_t)n + 1) + INV_STEPS * (size_t)n) * LANES + m->limbs + 8;
    int64_t groups = (rows + LANES * INV_STEPS - 1) / (LANES * INV_STEPS);
    rc = pec_parallel_for(groups, 1, threads, scratch, inv8_groups, &job);
    ifma_mod_free(&job.c);
    *bad_index = job.bad_index;
    return rc;
}

#else /* no IFMA in this build: pec_ifma_usable() is 0 and these are never called */

int pec_ifma_mulmod(const pec_modulus *m, const uint64_t *a, const uint64_t *b, int64_t b_step,
                    uint64_t *out, int64_t rows, int threads)
{
    return PEC_NO_MEMORY;
}

int pec_ifma_segment_products(const pec_modulus *m, const uint64_t *a, int64_t K, int64_t N,
                              int64_t segments, uint64_t *partial, int threads)
{
    return PEC_NO_MEMORY;
}

int pec_ifma_invmod(const pec_modulus *m, const uint64_t *a, uint64_t *out, int64_t rows,
                    int64_t *bad_index, int threads)
{
    return PEC_NO_MEMORY;
}

#endif
