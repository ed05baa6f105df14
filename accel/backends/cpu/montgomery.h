/* Montgomery arithmetic on GMP's mpn layer, shared by every kernel.
 *
 * GMP's assembly multiplication (schoolbook, then Karatsuba/Toom as sizes grow) does the
 * heavy lifting; the reduction is a word-by-word REDC so that no division ever runs on the
 * hot path. Residues in Montgomery form are x * R mod m with R = 2^(64 * limbs).
 *
 * The REDC rows run on a MULX/ADCX/ADOX loop where the CPU has BMI2 and ADX: distribution
 * GMP builds are compiled for baseline x86-64 and do not detect every newer core, and their
 * generic mpn_addmul_1 then costs about twice as much per limb. Same arithmetic, same result.
 */
#ifndef PEC_MONTGOMERY_H
#define PEC_MONTGOMERY_H

#include <gmp.h>
#include <string.h>

#include "pec_cpu.h"

#if GMP_NUMB_BITS != 64 || GMP_NAIL_BITS != 0
#error "the CPU backend needs GMP with 64-bit limbs and no nails"
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define PEC_HAVE_ADX_REDC 1

/* One limb of u += mod * q with two independent carry chains (CF for the high halves, OF for
 * the old limbs), so consecutive limbs do not wait on each other. */
#define PEC_ADX_STEP(k, hin, hout)                                                             \
    "mulx " #k "*8(%[mod]), %[lo], %[" #hout "]\n\t"                                           \
    "adcx %[" #hin "], %[lo]\n\t"                                                              \
    "adox " #k "*8(%[u]), %[lo]\n\t"                                                           \
    "mov %[lo], " #k "*8(%[u])\n\t"

/* u[0..n) += mod[0..n) * q, returning the carry limb; n is a positive multiple of 4. The loop
 * counts with lea/jrcxz because they leave CF and OF alone. */
__attribute__((target("bmi2,adx"))) static inline mp_limb_t
addmul_1_adx(mp_limb_t *u, const mp_limb_t *mod, mp_size_t n, mp_limb_t q)
{
    mp_limb_t h0, h1, lo;
    mp_size_t blocks = n >> 2;
    __asm__ volatile(
        "xor %k[h1], %k[h1]\n\t"
        "1:\n\t"
        PEC_ADX_STEP(0, h1, h0) PEC_ADX_STEP(1, h0, h1)
        PEC_ADX_STEP(2, h1, h0) PEC_ADX_STEP(3, h0, h1)
        "lea 32(%[mod]), %[mod]\n\t"
        "lea 32(%[u]), %[u]\n\t"
        "lea -1(%%rcx), %%rcx\n\t"
        "jrcxz 2f\n\t"
        "jmp 1b\n\t"
        "2:\n\t"
        "mov $0, %k[lo]\n\t"
        "adcx %[lo], %[h1]\n\t"
        "adox %[lo], %[h1]\n\t"
        : [h0] "=&r"(h0), [h1] "=&r"(h1), [lo] "=&r"(lo), [u] "+r"(u), [mod] "+r"(mod),
          "+c"(blocks)
        : "d"(q)
        : "cc", "memory");
    return h1;
}

__attribute__((target("bmi2,adx"))) static inline void
redc_rows_adx(mp_limb_t *t, const mp_limb_t *mod, mp_size_t n, mp_limb_t minv)
{
    for (mp_size_t i = 0; i < n; i++, t++)
        t[0] = addmul_1_adx(t, mod, n, t[0] * minv);
}

static inline int adx_usable(void)
{
    return __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("adx");
}
#else
#define PEC_HAVE_ADX_REDC 0
#endif

/* t (2n limbs, destroyed) * R^-1 mod m into r (n limbs); needs t < m * R. */
static inline void mont_redc(mp_limb_t *r, mp_limb_t *t, const pec_modulus *m)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    const mp_limb_t *mod = (const mp_limb_t *)m->mod;
    /* The carry out of row i belongs at limb i + n; parking it in the limb just zeroed and
     * adding all of them at the end keeps each step a single addmul. */
#if PEC_HAVE_ADX_REDC
    if (n % 4 == 0 && adx_usable()) {
        redc_rows_adx(t, mod, n, (mp_limb_t)m->minv);
    } else
#endif
    {
        mp_limb_t *u = t;
        for (mp_size_t i = 0; i < n; i++, u++)
            u[0] = mpn_addmul_1(u, mod, n, u[0] * (mp_limb_t)m->minv);
    }
    mp_limb_t *u = t + n;
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
