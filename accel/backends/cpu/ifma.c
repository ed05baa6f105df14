#include "ifma.h"

#include <gmp.h>
#include <stdlib.h>
#include <string.h>

#include "montgomery.h"
#include "thread_pool.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PEC_HAVE_IFMA 1
#define IFMA __attribute__((target("avx512f,avx512ifma")))
#else
#define PEC_HAVE_IFMA 0
#endif

#define MASK52 ((1ull << 52) - 1)
#define LANES 8
/* Column sums in the kernel grow by four 52-bit terms per digit row; 256 digits keep them
 * below 2^63. */
#define MAX_DIGITS 256

int pec_ifma_usable(void)
{
#if PEC_HAVE_IFMA
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512ifma");
#else
    return 0;
#endif
}

static int64_t digits_for(const pec_modulus *m)
{
    /* 4m < R keeps almost-Montgomery results below 2m. */
    int64_t bits = (int64_t)mpn_sizeinbase((const mp_limb_t *)m->mod, (mp_size_t)m->limbs, 2);
    return (bits + 2 + 51) / 52;
}

int pec_ifma_worth(const pec_modulus *m, int64_t rows)
{
    /* Below a few rows the idle lanes cost more than the wider multiplier gains; below 256
     * bits GMP's scalar code is already short. */
    return rows >= 3 && m->limbs >= 4 && digits_for(m) <= MAX_DIGITS && pec_ifma_usable();
}

#if PEC_HAVE_IFMA

typedef struct {
    int64_t n;          /* 52-bit digits */
    int64_t limbs;      /* 64-bit limbs of the modulus */
    uint64_t mprime;    /* -m^-1 mod 2^52 */
    uint64_t *mod;      /* n digits */
    uint64_t *mod_v;    /* the modulus in every lane, n * 8 */
    uint64_t *r2_v;     /* R^2 mod m in every lane */
    uint64_t *one_v;    /* R mod m in every lane (1 in Montgomery form) */
    uint64_t *unit_v;   /* plain 1 in every lane (leaves Montgomery form) */
    uint64_t *fix_v;    /* per-operation correction factor, or NULL */
} ifma_mod;

/* Digits of a 64-bit-limb number into lane `lane` (stride 8) or a plain array (stride 1). */
static void to_digits(uint64_t *d, int64_t stride, const uint64_t *x, int64_t limbs, int64_t n)
{
    for (int64_t k = 0; k < n; k++) {
        int64_t bit = 52 * k, w = bit >> 6;
        int s = (int)(bit & 63);
        uint64_t v = w < limbs ? x[w] >> s : 0;
        if (s > 12 && w + 1 < limbs)
            v |= x[w + 1] << (64 - s);
        d[k * stride] = v & MASK52;
    }
}

/* Lane `lane` back into 64-bit limbs; the value must be below 2^(64 * limbs). */
static void from_digits(uint64_t *x, const uint64_t *v, int lane, int64_t limbs, int64_t n)
{
    memset(x, 0, (size_t)limbs * sizeof(uint64_t));
    for (int64_t k = 0; k < n; k++) {
        uint64_t d = v[k * LANES + lane];
        int64_t bit = 52 * k, w = bit >> 6;
        int s = (int)(bit & 63);
        if (w < limbs)
            x[w] |= d << s;
        if (s > 12 && w + 1 < limbs)
            x[w + 1] |= d >> (64 - s);
    }
}

static void broadcast(uint64_t *v, const uint64_t *digits, int64_t n)
{
    for (int64_t k = 0; k < n; k++)
        for (int l = 0; l < LANES; l++)
            v[k * LANES + l] = digits[k];
}

/* r = a * b / R, below 2m when a and b are; a, b, r: n digit vectors (r may alias either);
 * acc: 2n + 1 vectors of scratch. Word-by-word Montgomery with the product interleaved; the
 * carries of each column wait in its 64-bit lane until the end. Squares go to asqr8. */
IFMA static void asqr8(uint64_t *r, const uint64_t *a, const ifma_mod *c, uint64_t *acc);

IFMA static void amm8(uint64_t *r, const uint64_t *a, const uint64_t *b, const ifma_mod *c,
                      uint64_t *acc)
{
    if (a == b) {
        asqr8(r, a, c, acc);
        return;
    }
    const int64_t n = c->n;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i mp = _mm512_set1_epi64((long long)c->mprime);
    const __m512i mask = _mm512_set1_epi64((long long)MASK52);
    for (int64_t k = 0; k < 2 * n + 1; k++)
        _mm512_store_si512(acc + k * LANES, zero);
    const __m512i a0 = _mm512_load_si512(a);
    const __m512i m0 = _mm512_set1_epi64((long long)c->mod[0]);
    for (int64_t i = 0; i < n; i++) {
        uint64_t *col = acc + i * LANES;
        const __m512i bi = _mm512_load_si512(b + i * LANES);
        __m512i t = _mm512_madd52lo_epu64(_mm512_load_si512(col), a0, bi);
        const __m512i q = _mm512_madd52lo_epu64(zero, t, mp);
        t = _mm512_madd52lo_epu64(t, m0, q); /* now a multiple of 2^52 */
        __m512i x = _mm512_add_epi64(_mm512_load_si512(col + LANES), _mm512_srli_epi64(t, 52));
        x = _mm512_madd52hi_epu64(x, a0, bi);
        x = _mm512_madd52hi_epu64(x, m0, q);
        for (int64_t j = 1; j < n; j++) {
            const __m512i aj = _mm512_load_si512(a + j * LANES);
            const __m512i mj = _mm512_set1_epi64((long long)c->mod[j]);
            x = _mm512_madd52lo_epu64(x, aj, bi);
            x = _mm512_madd52lo_epu64(x, mj, q);
            _mm512_store_si512(col + j * LANES, x);
            x = _mm512_load_si512(col + (j + 1) * LANES);
            x = _mm512_madd52hi_epu64(x, aj, bi);
            x = _mm512_madd52hi_epu64(x, mj, q);
        }
        _mm512_store_si512(col + n * LANES, x);
    }
    __m512i carry = zero;
    for (int64_t k = 0; k < n; k++) {
        __m512i v = _mm512_add_epi64(_mm512_load_si512(acc + (n + k) * LANES), carry);
        _mm512_store_si512(r + k * LANES, _mm512_and_si512(v, mask));
        carry = _mm512_srli_epi64(v, 52);
    }
}

#define LOAD(p) _mm512_load_si512(p)
#define STORE(p, v) _mm512_store_si512((p), (v))
#define LO(x, y, z) _mm512_madd52lo_epu64((x), (y), (z))
#define HI(x, y, z) _mm512_madd52hi_epu64((x), (y), (z))
#define BCAST(v) _mm512_set1_epi64((long long)(v))

/* r = a^2 / R. Cross products a_i a_j (i < j) once, doubled, plus the squares, then the
 * reduction: three quarters of amm8's multiplications. Rows go in pairs so that every
 * column update is a chain of two products per half, as in amm8; one row at a time would
 * leave the multiplier waiting on single-product chains. */
IFMA static void asqr8(uint64_t *r, const uint64_t *a, const ifma_mod *c, uint64_t *acc)
{
    const int64_t n = c->n;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i mp = BCAST(c->mprime);
    const __m512i mask = BCAST(MASK52);
    const uint64_t *mod = c->mod;
    for (int64_t k = 0; k < 2 * n + 1; k++)
        STORE(acc + k * LANES, zero);
#define COL(k) (acc + (k) * LANES)
#define A(k) LOAD(a + (k) * LANES)
    /* Rows i and i + 1: column i + u takes lo(a_i a_u) (u > i) and lo(a_i+1 a_u-1)
     * (u - 1 > i + 1), and the high halves of the same products go one column up. */
    for (int64_t i = 0; i + 1 < n; i += 2) {
        const __m512i ai = A(i), ai1 = A(i + 1);
        __m512i x = LOAD(COL(2 * i + 1));
        for (int64_t u = i + 1; u <= n; u++) {
            const int row0 = u < n, row1 = u >= i + 3 && u <= n;
            __m512i au = row0 ? A(u) : zero, au1 = row1 ? A(u - 1) : zero;
            if (row0)
                x = LO(x, ai, au);
            if (row1)
                x = LO(x, ai1, au1);
            STORE(COL(i + u), x);
            x = LOAD(COL(i + u + 1));
            if (row0)
                x = HI(x, ai, au);
            if (row1)
                x = HI(x, ai1, au1);
        }
        STORE(COL(i + n + 1), x);
    }
    for (int64_t i = 0; i < n; i++) {
        const __m512i ai = A(i);
        STORE(COL(2 * i), LO(_mm512_slli_epi64(LOAD(COL(2 * i)), 1), ai, ai));
        STORE(COL(2 * i + 1), HI(_mm512_slli_epi64(LOAD(COL(2 * i + 1)), 1), ai, ai));
    }
    /* Reduction, rows i and i + 1 together once q_i+1 is known. */
    const __m512i m0 = BCAST(mod[0]);
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
        __m512i t = LOAD(COL(i));
        const __m512i q0 = LO(zero, t, mp);
        t = LO(t, m0, q0);
        __m512i y = _mm512_add_epi64(LOAD(COL(i + 1)), _mm512_srli_epi64(t, 52));
        y = LO(y, BCAST(mod[1]), q0);
        y = HI(y, m0, q0);
        const __m512i q1 = LO(zero, y, mp);
        y = LO(y, m0, q1);
        __m512i x = _mm512_add_epi64(LOAD(COL(i + 2)), _mm512_srli_epi64(y, 52));
        x = HI(x, BCAST(mod[1]), q0);
        x = HI(x, m0, q1);
        for (int64_t u = 2; u <= n; u++) {
            const int row0 = u < n;
            const __m512i mu = row0 ? BCAST(mod[u]) : zero, mu1 = BCAST(mod[u - 1]);
            if (row0)
                x = LO(x, mu, q0);
            x = LO(x, mu1, q1);
            STORE(COL(i + u), x);
            x = LOAD(COL(i + u + 1));
            if (row0)
                x = HI(x, mu, q0);
            x = HI(x, mu1, q1);
        }
        STORE(COL(i + n + 1), x);
    }
    if (i < n) { /* odd n: the last row alone */
        __m512i t = LOAD(COL(i));
        const __m512i q = LO(zero, t, mp);
        t = LO(t, m0, q);
        __m512i x = _mm512_add_epi64(LOAD(COL(i + 1)), _mm512_srli_epi64(t, 52));
        x = HI(x, m0, q);
        for (int64_t j = 1; j < n; j++) {
            const __m512i mj = BCAST(mod[j]);
            x = LO(x, mj, q);
            STORE(COL(i + j), x);
            x = HI(LOAD(COL(i + j + 1)), mj, q);
        }
        STORE(COL(i + n), x);
    }
    __m512i carry = zero;
    for (int64_t k = 0; k < n; k++) {
        __m512i v = _mm512_add_epi64(LOAD(COL(n + k)), carry);
        STORE(r + k * LANES, _mm512_and_si512(v, mask));
        carry = _mm512_srli_epi64(v, 52);
    }
#undef COL
#undef A
}

/* v = v mod m for values below 2m, lane by lane; tmp: n vectors. */
IFMA static void reduce8(uint64_t *v, const ifma_mod *c, uint64_t *tmp)
{
    const int64_t n = c->n;
    const __m512i mask = _mm512_set1_epi64((long long)MASK52);
    __m512i borrow = _mm512_setzero_si512();
    for (int64_t k = 0; k < n; k++) {
        __m512i d = _mm512_sub_epi64(_mm512_load_si512(v + k * LANES),
                                     _mm512_set1_epi64((long long)c->mod[k]));
        d = _mm512_sub_epi64(d, borrow);
        borrow = _mm512_srli_epi64(d, 63);
        _mm512_store_si512(tmp + k * LANES, _mm512_and_si512(d, mask));
    }
    __mmask8 keep_diff = _mm512_cmpeq_epi64_mask(borrow, _mm512_setzero_si512());
    for (int64_t k = 0; k < n; k++) {
        __m512i d = _mm512_mask_mov_epi64(_mm512_load_si512(v + k * LANES), keep_diff,
                                          _mm512_load_si512(tmp + k * LANES));
        _mm512_store_si512(v + k * LANES, d);
    }
}

static void ifma_mod_free(ifma_mod *c)
{
    free(c->mod);
    c->mod = NULL;
}

/* 2^e mod m for a possibly negative e, as 64-bit limbs. */
static void pow2_mod(uint64_t *out, int64_t e, const pec_modulus *m)
{
    mpz_t mod, r;
    mpz_roinit_n(mod, (const mp_limb_t *)m->mod, (mp_size_t)m->limbs);
    mpz_init_set_ui(r, 2);
    if (e >= 0) {
        mpz_t exp;
        mpz_init_set_ui(exp, (unsigned long)e);
        mpz_powm(r, r, exp, mod);
        mpz_clear(exp);
    } else {
        mpz_t exp;
        mpz_init_set_ui(exp, (unsigned long)(-e));
        mpz_powm(r, r, exp, mod);
        if (!mpz_invert(r, r, mod)) /* m is odd, so 2 is always invertible */
            mpz_set_ui(r, 0);
        mpz_clear(exp);
    }
    memset(out, 0, (size_t)m->limbs * sizeof(uint64_t));
    mpz_export(out, NULL, -1, sizeof(uint64_t), 0, 0, r);
    mpz_clear(r);
}

/* fix_exponent: when non-zero, fix_v = 2^fix_exponent mod m in every lane. */
static int ifma_mod_init(ifma_mod *c, const pec_modulus *m, int use_fix, int64_t fix_exponent)
{
    const int64_t n = digits_for(m), L = m->limbs;
    c->n = n;
    c->limbs = L;
    c->mprime = m->minv & MASK52;
    size_t vec = (size_t)n * LANES;
    /* One block: digits, then 64-byte aligned lane vectors. */
    c->mod = aligned_alloc(64, (((size_t)n + 8 + 5 * vec) * sizeof(uint64_t) + 63) & ~(size_t)63);
    uint64_t *tmp = malloc((size_t)L * sizeof(uint64_t));
    if (!c->mod || !tmp) {
        free(c->mod);
        free(tmp);
        c->mod = NULL;
        return PEC_NO_MEMORY;
    }
    uint64_t *vectors = c->mod + (((size_t)n + 7) & ~(size_t)7);
    c->mod_v = vectors;
    c->r2_v = vectors + vec;
    c->one_v = vectors + 2 * vec;
    c->unit_v = vectors + 3 * vec;
    c->fix_v = use_fix ? vectors + 4 * vec : NULL;
    uint64_t *digits = malloc((size_t)n * sizeof(uint64_t));
    if (!digits) {
        free(tmp);
        ifma_mod_free(c);
        return PEC_NO_MEMORY;
    }
    to_digits(c->mod, 1, m->mod, L, n);
    broadcast(c->mod_v, c->mod, n);
    pow2_mod(tmp, 2 * 52 * n, m);
    to_digits(digits, 1, tmp, L, n);
    broadcast(c->r2_v, digits, n);
    pow2_mod(tmp, 52 * n, m);
    to_digits(digits, 1, tmp, L, n);
    broadcast(c->one_v, digits, n);
    memset(digits, 0, (size_t)n * sizeof(uint64_t));
    digits[0] = 1;
    broadcast(c->unit_v, digits, n);
    if (use_fix) {
        pow2_mod(tmp, fix_exponent, m);
        to_digits(digits, 1, tmp, L, n);
        broadcast(c->fix_v, digits, n);
    }
    free(digits);
    free(tmp);
    return PEC_OK;
}

/* Per-thread scratch: `vectors` lane vectors, 64-byte aligned. */
static uint64_t *aligned_scratch(mp_limb_t *scratch)
{
    return (uint64_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
}

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
            int64_t slot = task[l] % per_p, lo = 0, hi = job->M;
            while (hi - lo > 1) {
                int64_t mid = (lo + hi) / 2;
                if (job->first_window[mid] <= slot)
                    lo = mid;
                else
                    hi = mid;
            }
            j[l] = lo;
            bit[l] = (slot - job->first_window[lo]) * w;
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

/* ---- mulmod ------------------------------------------------------------------------------ */

typedef struct {
    ifma_mod c;
    const uint64_t *a, *b;
    int64_t b_step, rows;
    uint64_t *out;
    uint64_t *b_v; /* broadcast factor in Montgomery form, or NULL */
} mul8_job;

IFMA static int mul8_groups(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const mul8_job *job = arg;
    const ifma_mod *c = &job->c;
    const int64_t n = c->n, L = c->limbs;
    const size_t vec = (size_t)n * LANES;
    uint64_t *x = aligned_scratch(scratch), *y = x + vec, *t = y + vec;
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
            amm8(x, x, job->b_v, c, t); /* a * (b R) / R */
        } else {
            amm8(x, x, y, c, t);       /* a b / R */
            amm8(x, x, c->r2_v, c, t); /* ... * R^2 / R */
        }
        reduce8(x, c, t);
        for (int l = 0; l < lanes; l++)
            from_digits(job->out + (first + l) * L, x, l, L, n);
    }
    return PEC_OK;
}

int pec_ifma_mulmod(const pec_modulus *m, const uint64_t *a, const uint64_t *b, int64_t b_step,
                    uint64_t *out, int64_t rows, int threads)
{
    mul8_job job = {.a = a, .b = b, .b_step = b_step, .rows = rows, .out = out};
    int rc = ifma_mod_init(&job.c, m, 1, 0);
    if (rc != PEC_OK)
        return rc;
    const int64_t n = job.c.n;
    size_t scratch = (4 * (size_t)n + 1) * LANES + 8;
    if (!b_step) {
        /* fix_v is spare here: it holds b R, made from b once for the whole batch. */
        uint64_t *t = aligned_alloc(64, (2 * (size_t)n + 1) * LANES * sizeof(uint64_t));
        if (!t) {
            ifma_mod_free(&job.c);
            return PEC_NO_MEMORY;
        }
        for (int l = 0; l < LANES; l++)
            to_digits(job.c.fix_v + l, LANES, b, m->limbs, n);
        amm8(job.c.fix_v, job.c.fix_v, job.c.r2_v, &job.c, t);
        free(t);
        job.b_v = job.c.fix_v;
    }
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

int pec_ifma_powmod(const pec_modulus *m, const uint64_t *base, const uint64_t *exp,
                    int64_t exp_limbs, int64_t exp_step, uint64_t *out, int64_t rows,
                    int threads)
{
    return PEC_NO_MEMORY;
}

int pec_ifma_powmod_fixed(const pec_modulus *m, const uint64_t *table, int window,
                          int64_t windows, const uint64_t *exp, int64_t exp_limbs,
                          uint64_t *out, int64_t rows, int threads)
{
    return PEC_NO_MEMORY;
}

int pec_ifma_multiexp_sums(const pec_modulus *m, const uint64_t *bases, const uint64_t *exps,
                           int64_t exp_limbs, int64_t P, int64_t K, int64_t M, int width,
                           const int64_t *first_window, uint64_t *sums, int threads)
{
    return PEC_NO_MEMORY;
}

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

int pec_ifma_fill_table(const pec_modulus *m, int window, int64_t windows, uint64_t *table,
                        int threads)
{
    return PEC_NO_MEMORY;
}

#endif
