/* Montgomery arithmetic on GMP's mpn layer, shared by every kernel.
 *
 * GMP's assembly multiplication (schoolbook, then Karatsuba/Toom as sizes grow) does the
 * heavy lifting; the reduction is a word-by-word REDC so that no division ever runs on the
 * hot path. Residues in Montgomery form are x * R mod m with R = 2^(64 * limbs).
 */
#ifndef PEC_MONTGOMERY_H
#define PEC_MONTGOMERY_H

#include <gmp.h>
#include <string.h>

#include "pec_cpu.h"

#if GMP_NUMB_BITS != 64 || GMP_NAIL_BITS != 0
#error "the CPU backend needs GMP with 64-bit limbs and no nails"
#endif

/* t (2n limbs, destroyed) * R^-1 mod m into r (n limbs); needs t < m * R. */
static inline void mont_redc(mp_limb_t *r, mp_limb_t *t, const pec_modulus *m)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    const mp_limb_t *mod = (const mp_limb_t *)m->mod;
    mp_limb_t *u = t;
    for (mp_size_t i = 0; i < n; i++, u++) {
        /* The carry out of row i belongs at limb i + n; parking it in the limb just zeroed
         * and adding all of them at the end keeps each step a single addmul. */
        u[0] = mpn_addmul_1(u, mod, n, u[0] * (mp_limb_t)m->minv);
    }
    mp_limb_t carry = mpn_add_n(r, u, t, n);
    if (carry || mpn_cmp(r, mod, n) >= 0)
        mpn_sub_n(r, r, mod, n);
}

/* r = a * b * R^-1 mod m; scratch holds 2n limbs and must not overlap a or b. */
static inline void mont_mul(mp_limb_t *r, const mp_limb_t *a, const mp_limb_t *b,
                            const pec_modulus *m, mp_limb_t *scratch)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    if (a == b)
        mpn_sqr(scratch, a, n);
    else
        mpn_mul_n(scratch, a, b, n);
    mont_redc(r, scratch, m);
}

static inline void mont_sqr(mp_limb_t *r, const mp_limb_t *a, const pec_modulus *m,
                            mp_limb_t *scratch)
{
    mpn_sqr(scratch, a, (mp_size_t)m->limbs);
    mont_redc(r, scratch, m);
}

/* r = a * R mod m (into Montgomery form). */
static inline void mont_in(mp_limb_t *r, const mp_limb_t *a, const pec_modulus *m,
                           mp_limb_t *scratch)
{
    mont_mul(r, a, (const mp_limb_t *)m->r2, m, scratch);
}

/* r = a * R^-1 mod m (out of Montgomery form). */
static inline void mont_out(mp_limb_t *r, const mp_limb_t *a, const pec_modulus *m,
                            mp_limb_t *scratch)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    mpn_copyi(scratch, a, n);
    mpn_zero(scratch + n, n);
    mont_redc(r, scratch, m);
}

static inline void mont_copy(mp_limb_t *r, const mp_limb_t *a, const pec_modulus *m)
{
    mpn_copyi(r, a, (mp_size_t)m->limbs);
}

/* Bit `bit` .. bit + width - 1 of an exponent of `limbs` limbs (width <= 32). */
static inline unsigned exp_bits_at(const uint64_t *e, int64_t limbs, int64_t bit, int width)
{
    int64_t word = bit >> 6;
    int shift = (int)(bit & 63);
    if (word >= limbs)
        return 0;
    uint64_t v = e[word] >> shift;
    if (shift + width > 64 && word + 1 < limbs)
        v |= e[word + 1] << (64 - shift);
    return (unsigned)(v & ((1ull << width) - 1));
}

/* Number of significant bits of an exponent (0 for zero). */
static inline int64_t exp_bit_length(const uint64_t *e, int64_t limbs)
{
    for (int64_t i = limbs - 1; i >= 0; i--)
        if (e[i])
            return i * 64 + 64 - __builtin_clzll(e[i]);
    return 0;
}

#endif
