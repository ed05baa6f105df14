/* The eight-lane radix-2^52 arithmetic behind the IFMA kernels (see ifma.h): digit
 * conversions, the almost-Montgomery product and square, the final reduction, and the
 * per-call constants. Everything here is static; each kernel file includes it.
 */
#ifndef PEC_IFMA_ARITH_H
#define PEC_IFMA_ARITH_H

#include <gmp.h>
#include <stdlib.h>
#include <string.h>

#include "ifma.h"
#include "montgomery.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PEC_HAVE_IFMA 1
#define IFMA __attribute__((target("avx512f,avx512ifma")))
#else
#define PEC_HAVE_IFMA 0
#endif

#define MASK52 ((1ull << 52) - 1)
#define LANES 8
/* Column sums in the kernels collect at most 4n + 5 terms below 2^52; 256 digits keep them
 * below 2^63. */
#define MAX_DIGITS 256

static inline int64_t digits_for(const pec_modulus *m)
{
    /* 4m < R keeps almost-Montgomery results below 2m. */
    int64_t bits = (int64_t)mpn_sizeinbase((const mp_limb_t *)m->mod, (mp_size_t)m->limbs, 2);
    return (bits + 2 + 51) / 52;
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

/* 13 limbs hold exactly 16 digits (832 bits): whole blocks run unrolled with constant
 * shifts, which keeps the conversions small next to the products they feed. */
#define BLOCK_LIMBS 13
#define BLOCK_DIGITS 16

/* Digits of a 64-bit-limb number into lane `lane` (stride 8) or a plain array (stride 1). */
static inline void to_digits(uint64_t *d, int64_t stride, const uint64_t *x, int64_t limbs,
                             int64_t n)
{
    int64_t k = 0;
    for (; k + BLOCK_DIGITS <= n && (k / BLOCK_DIGITS + 1) * BLOCK_LIMBS <= limbs;
         k += BLOCK_DIGITS) {
        const uint64_t *xb = x + (k / BLOCK_DIGITS) * BLOCK_LIMBS;
        uint64_t *db = d + k * stride;
#pragma GCC unroll 16
        for (int j = 0; j < BLOCK_DIGITS; j++) {
            const int bit = 52 * j, w = bit >> 6, s = bit & 63;
            uint64_t v = xb[w] >> s;
            if (s > 12)
                v |= xb[w + 1] << (64 - s);
            db[j * stride] = v & MASK52;
        }
    }
    for (; k < n; k++) {
        int64_t bit = 52 * k, w = bit >> 6;
        int s = (int)(bit & 63);
        uint64_t v = w < limbs ? x[w] >> s : 0;
        if (s > 12 && w + 1 < limbs)
            v |= x[w + 1] << (64 - s);
        d[k * stride] = v & MASK52;
    }
}

/* Lane `lane` back into 64-bit limbs; the value must be below 2^(64 * limbs). */
static inline void from_digits(uint64_t *x, const uint64_t *v, int lane, int64_t limbs,
                               int64_t n)
{
    memset(x, 0, (size_t)limbs * sizeof(uint64_t));
    int64_t k = 0;
    for (; k + BLOCK_DIGITS <= n && (k / BLOCK_DIGITS + 1) * BLOCK_LIMBS <= limbs;
         k += BLOCK_DIGITS) {
        uint64_t *xb = x + (k / BLOCK_DIGITS) * BLOCK_LIMBS;
        const uint64_t *vb = v + k * LANES + lane;
#pragma GCC unroll 16
        for (int j = 0; j < BLOCK_DIGITS; j++) {
            const int bit = 52 * j, w = bit >> 6, s = bit & 63;
            const uint64_t d = vb[j * LANES];
            xb[w] |= d << s;
            if (s > 12)
                xb[w + 1] |= d >> (64 - s);
        }
    }
    for (; k < n; k++) {
        uint64_t d = v[k * LANES + lane];
        int64_t bit = 52 * k, w = bit >> 6;
        int s = (int)(bit & 63);
        if (w < limbs)
            x[w] |= d << s;
        if (s > 12 && w + 1 < limbs)
            x[w + 1] |= d >> (64 - s);
    }
}

static inline void broadcast(uint64_t *v, const uint64_t *digits, int64_t n)
{
    for (int64_t k = 0; k < n; k++)
        for (int l = 0; l < LANES; l++)
            v[k * LANES + l] = digits[k];
}

/* r = a * b / R, below 2m when a and b are; a, b, r: n digit vectors (r may alias either);
 * acc: 2n + 1 vectors of scratch. Word-by-word Montgomery with the product interleaved; the
 * carries of each column wait in its 64-bit lane until the end. Squares go to asqr8. */
IFMA static inline void asqr8(uint64_t *r, const uint64_t *a, const ifma_mod *c,
                              uint64_t *acc);

IFMA static inline void amm8(uint64_t *r, const uint64_t *a, const uint64_t *b,
                             const ifma_mod *c, uint64_t *acc)
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

/* w[i + u] += a_u b_i and w[i + 1 + u] += a_u b_i+1 for u in [s, e] (low halves there, high
 * halves one column up), b_i+1 only when `two`. Two rows at a time, as in asqr8: every column
 * update is then a chain of two products, which keeps the multiplier busy. */
IFMA static inline void product_rows(uint64_t *w, const uint64_t *a, const uint64_t *b,
                                     int64_t i, int two, int64_t s, int64_t e)
{
#define COL(k) (w + (k) * LANES)
#define A(k) LOAD(a + (k) * LANES)
    const __m512i bi = LOAD(b + i * LANES);
    if (!two) {
        __m512i x = LOAD(COL(i + s));
        for (int64_t u = s; u <= e; u++) {
            const __m512i au = A(u);
            STORE(COL(i + u), LO(x, au, bi));
            x = HI(LOAD(COL(i + u + 1)), au, bi);
        }
        STORE(COL(i + e + 1), x);
        return;
    }
    const __m512i bi1 = LOAD(b + (i + 1) * LANES);
    __m512i au1 = A(s);
    STORE(COL(i + s), LO(LOAD(COL(i + s)), au1, bi));
    __m512i x = HI(LOAD(COL(i + s + 1)), au1, bi);
    for (int64_t u = s + 1; u <= e; u++) {
        const __m512i au = A(u);
        x = LO(LO(x, au, bi), au1, bi1);
        STORE(COL(i + u), x);
        x = HI(HI(LOAD(COL(i + u + 1)), au, bi), au1, bi1);
        au1 = au;
    }
    STORE(COL(i + e + 1), LO(x, au1, bi1));
    STORE(COL(i + e + 2), HI(LOAD(COL(i + e + 2)), au1, bi1));
#undef COL
#undef A
}

/* r = a^2 / R. Cross products a_i a_j (i < j) once, doubled, plus the squares, then the
 * reduction: three quarters of amm8's multiplications. Rows go in pairs so that every
 * column update is a chain of two products per half, as in amm8; one row at a time would
 * leave the multiplier waiting on single-product chains. */
IFMA static inline void asqr8(uint64_t *r, const uint64_t *a, const ifma_mod *c,
                              uint64_t *acc)
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
    /* Rows i and i + 1 take a_u for u > i + 1 together; a_i a_i+1 goes in on its own. */
    for (int64_t i = 0; i + 1 < n; i += 2) {
        const __m512i ai = A(i), ai1 = A(i + 1);
        STORE(COL(2 * i + 1), LO(LOAD(COL(2 * i + 1)), ai, ai1));
        STORE(COL(2 * i + 2), HI(LOAD(COL(2 * i + 2)), ai, ai1));
        if (i + 2 < n)
            product_rows(acc, a, a, i, 1, i + 2, n - 1);
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

/* Carries of columns [0, count) into 52-bit digits; the carry out of the last is dropped. */
IFMA static inline void normalize8(uint64_t *v, int64_t count)
{
    const __m512i mask = BCAST(MASK52);
    __m512i carry = _mm512_setzero_si512();
    for (int64_t k = 0; k < count; k++) {
        __m512i x = _mm512_add_epi64(LOAD(v + k * LANES), carry);
        STORE(v + k * LANES, _mm512_and_si512(x, mask));
        carry = _mm512_srli_epi64(x, 52);
    }
}

/* p[0 .. 2n) = a * b as 52-bit digits, no reduction; p: 2n + 1 vectors. Each column
 * collects at most 2n terms below 2^52, which MAX_DIGITS keeps below 2^63. */
IFMA static inline void mul8(uint64_t *p, const uint64_t *a, const uint64_t *b, int64_t n)
{
    for (int64_t k = 0; k < 2 * n + 1; k++)
        STORE(p + k * LANES, _mm512_setzero_si512());
    for (int64_t i = 0; i < n; i += 2)
        product_rows(p, a, b, i, i + 1 < n, 0, n - 1);
    normalize8(p, 2 * n);
}

/* v = v mod m for values below 2m, lane by lane; tmp: n vectors. */
IFMA static inline void reduce8(uint64_t *v, const ifma_mod *c, uint64_t *tmp)
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

static inline void ifma_mod_free(ifma_mod *c)
{
    free(c->mod);
    c->mod = NULL;
}

/* 2^e mod m for a possibly negative e, as 64-bit limbs. A set bit and one division: the
 * set-up of mpz_powm alone would cost more than a whole small batch. */
static inline void pow2_mod(uint64_t *out, int64_t e, const pec_modulus *m)
{
    mpz_t mod, r;
    mpz_roinit_n(mod, (const mp_limb_t *)m->mod, (mp_size_t)m->limbs);
    mpz_init(r);
    mpz_setbit(r, (mp_bitcnt_t)(e >= 0 ? e : -e));
    mpz_mod(r, r, mod);
    if (e < 0 && !mpz_invert(r, r, mod)) /* m is odd, so 2 is always invertible */
        mpz_set_ui(r, 0);
    memset(out, 0, (size_t)m->limbs * sizeof(uint64_t));
    mpz_export(out, NULL, -1, sizeof(uint64_t), 0, 0, r);
    mpz_clear(r);
}

/* fix_exponent: when non-zero, fix_v = 2^fix_exponent mod m in every lane. */
static inline int ifma_mod_init(ifma_mod *c, const pec_modulus *m, int use_fix,
                                int64_t fix_exponent)
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
static inline uint64_t *aligned_scratch(mp_limb_t *scratch)
{
    return (uint64_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
}

#endif /* PEC_HAVE_IFMA */

#endif
