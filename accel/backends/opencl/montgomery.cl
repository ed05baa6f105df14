/* Multi-precision Montgomery arithmetic over 64-bit limbs, one residue per work-item.
 *
 * This file is the single source of the device arithmetic: OpenCL compiles it as is, and the
 * CUDA backend compiles it through accel/backends/cuda/montgomery.cu, which includes it
 * (dialect.h picks the spelling). NLIMBS, the limb count of the modulus, is fixed at
 * build time so that every private array has a static size; programs are built once per device
 * and limb count.
 *
 * A modulus travels as one "context" buffer of 3 * NLIMBS + 1 words:
 *   m[NLIMBS] | R^2 mod m [NLIMBS] | R mod m [NLIMBS] | -m^-1 mod 2^64,   R = 2^(64 NLIMBS).
 * All residues are little-endian limb rows; inputs are reduced (< m) and outputs are too.
 */

#include "dialect.h"

/* MONT_NOINLINE keeps one out-of-line copy of the multiplication. CPU OpenCL compilers (PoCL)
 * otherwise inline and unroll it at every call site, and code generation of a 64-limb
 * exponentiation then takes minutes; GPU builds keep it inline so that limbs stay in
 * registers. */
#ifdef MONT_NOINLINE
#define MONT_FN static __attribute__((noinline))
#else
#define MONT_FN DEVICE
#endif

#ifndef NLIMBS
#error "NLIMBS (limb count of the modulus) must be defined when building these kernels"
#endif
#define L NLIMBS

/* Window of the per-element exponentiation: 4 divides 64, so no window straddles two limbs,
 * and the 16-entry table stays small enough for private memory at 64 limbs. */
#define POW_WINDOW 4

/* Low word of a * b + c + *carry; the high word goes back to *carry (never overflows). */
DEVICE u64 mac(u64 a, u64 b, u64 c, u64 *carry)
{
    u64 lo = a * b;
    u64 hi = MULHI(a, b);
    lo += c;
    hi += (lo < c);
    lo += *carry;
    hi += (lo < *carry);
    *carry = hi;
    return lo;
}

DEVICE void load(u64 *dst, GLOBAL const u64 *src)
{
    for (u32 j = 0; j < L; ++j)
        dst[j] = src[j];
}

DEVICE void store(GLOBAL u64 *dst, const u64 *src)
{
    for (u32 j = 0; j < L; ++j)
        dst[j] = src[j];
}

DEVICE void copy(u64 *dst, const u64 *src)
{
    for (u32 j = 0; j < L; ++j)
        dst[j] = src[j];
}

/* r = a * b * R^-1 mod m (CIOS). r may alias a or b: it is written only at the end.
 * Two copies of one body: b in private memory, or b read in place from global memory (table
 * entries, bases, constants), which spares a private copy of L words and the registers or
 * spills it would cost on GPUs. */
#define DEFINE_MONT_MUL(NAME, BSPACE)                                                           \
MONT_FN void NAME(u64 *r, const u64 *a, BSPACE const u64 *b, GLOBAL const u64 *ctx)             \
{                                                                                               \
    GLOBAL const u64 *m = ctx;                                                                  \
    const u64 m0inv = ctx[3 * L];                                                               \
    u64 t[L + 2];                                                                               \
    for (u32 j = 0; j < L + 2; ++j)                                                             \
        t[j] = 0;                                                                               \
                                                                                                \
    for (u32 i = 0; i < L; ++i) {                                                               \
        u64 c = 0;                                                                              \
        const u64 bi = b[i];                                                                    \
        for (u32 j = 0; j < L; ++j)                                                             \
            t[j] = mac(a[j], bi, t[j], &c);                                                     \
        u64 s = t[L] + c;                                                                       \
        t[L + 1] = (s < c);                                                                     \
        t[L] = s;                                                                               \
                                                                                                \
        const u64 u = t[0] * m0inv;                                                             \
        c = 0;                                                                                  \
        (void)mac(u, m[0], t[0], &c); /* low word is zero by the choice of u */                 \
        for (u32 j = 1; j < L; ++j)                                                             \
            t[j - 1] = mac(u, m[j], t[j], &c);                                                  \
        s = t[L] + c;                                                                           \
        t[L - 1] = s;                                                                           \
        t[L] = t[L + 1] + (s < c);                                                              \
    }                                                                                           \
                                                                                                \
    /* t < 2m here, so one conditional subtraction reduces it fully. */                         \
    int ge = t[L] != 0;                                                                         \
    if (!ge) {                                                                                  \
        ge = 1;                                                                                 \
        for (int j = L - 1; j >= 0; --j) {                                                      \
            if (t[j] != m[j]) {                                                                 \
                ge = t[j] > m[j];                                                               \
                break;                                                                          \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    if (ge) {                                                                                   \
        u64 borrow = 0;                                                                         \
        for (u32 j = 0; j < L; ++j) {                                                           \
            const u64 mj = m[j];                                                                \
            const u64 x = t[j] - mj;                                                            \
            const u64 b1 = t[j] < mj;                                                           \
            r[j] = x - borrow;                                                                  \
            borrow = b1 | (x < borrow);                                                         \
        }                                                                                       \
    } else {                                                                                    \
        for (u32 j = 0; j < L; ++j)                                                             \
            r[j] = t[j];                                                                        \
    }                                                                                           \
}

DEFINE_MONT_MUL(mont_mul, )
DEFINE_MONT_MUL(mont_mul_gb, GLOBAL)

/* Montgomery form x * R mod m of a plain residue. */
DEVICE void to_mont(u64 *r, const u64 *x, GLOBAL const u64 *ctx)
{
    mont_mul_gb(r, x, ctx + L, ctx);
}

/* Plain residue of a Montgomery-form value (multiply by 1). */
DEVICE void from_mont(u64 *r, const u64 *x, GLOBAL const u64 *ctx)
{
    u64 one[L];
    one[0] = 1;
    for (u32 j = 1; j < L; ++j)
        one[j] = 0;
    mont_mul(r, x, one, ctx);
}

/* Index of the highest set bit of an e_limbs-word exponent, or -1 when it is zero. */
DEVICE int top_bit(GLOBAL const u64 *e, u32 e_limbs)
{
    for (int l = (int)e_limbs - 1; l >= 0; --l)
        if (e[l] != 0)
            return l * 64 + 63 - (int)CLZ64(e[l]);
    return -1;
}

DEVICE u32 exp_bit(GLOBAL const u64 *e, u32 bit)
{
    return (u32)((e[bit / 64] >> (bit % 64)) & 1);
}

/* out[i] = a[i] * b[i] mod m; b_stride is 0 when one factor serves every row. */
KERNEL mulmod(GLOBAL u64 *out, GLOBAL const u64 *a, GLOBAL const u64 *b, u32 b_stride,
              GLOBAL const u64 *ctx, u32 n)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= n)
        return;
    u64 x[L];
    load(x, a + gid * L);
    mont_mul_gb(x, x, b + gid * b_stride, ctx);   /* a b R^-1 */
    to_mont(x, x, ctx);       /* a b */
    store(out + gid * L, x);
}

/* out[i] = a[i] * R mod m: bases of a multi-exponentiation, converted once. */
KERNEL to_montgomery(GLOBAL u64 *out, GLOBAL const u64 *a, GLOBAL const u64 *ctx, u32 n)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= n)
        return;
    u64 x[L];
    load(x, a + gid * L);
    to_mont(x, x, ctx);
    store(out + gid * L, x);
}

/* out[i] = base[i] ^ exp[i] mod m, fixed 4-bit windows from the top set bit down;
 * exp_stride is 0 when one exponent serves every row. */
KERNEL powmod(GLOBAL u64 *out, GLOBAL const u64 *base, GLOBAL const u64 *exp, u32 exp_limbs,
              u32 exp_stride, GLOBAL const u64 *ctx, u32 n)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= n)
        return;
    GLOBAL const u64 *e = exp + gid * exp_stride;
    u64 table[1 << POW_WINDOW][L];
    u64 acc[L];

    load(table[0], ctx + 2 * L);
    load(acc, base + gid * L);
    to_mont(table[1], acc, ctx);
    for (u32 k = 2; k < (1u << POW_WINDOW); ++k)
        mont_mul(table[k], table[k - 1], table[1], ctx);

    copy(acc, table[0]);
    const int top = top_bit(e, exp_limbs);
    if (top >= 0) {
        const u32 mask = (1u << POW_WINDOW) - 1;
        int i = top / POW_WINDOW;
        u32 bit = (u32)i * POW_WINDOW;
        copy(acc, table[(e[bit / 64] >> (bit % 64)) & mask]);
        for (--i; i >= 0; --i) {
            for (u32 s = 0; s < POW_WINDOW; ++s)
                mont_mul(acc, acc, acc, ctx);
            bit = (u32)i * POW_WINDOW;
            const u32 d = (u32)((e[bit / 64] >> (bit % 64)) & mask);
            if (d)
                mont_mul(acc, acc, table[d], ctx);
        }
    }
    from_mont(acc, acc, ctx);
    store(out + gid * L, acc);
}

/* out[i] = g ^ exp[i] mod m from a device table of Montgomery-form powers
 * table[w][d] = g ^ (d << (window_bits * w)) for w < windows, d < 2^window_bits:
 * one multiplication per non-zero window and no squaring at all. */
KERNEL powmod_fixed(GLOBAL u64 *out, GLOBAL const u64 *exp, u32 exp_limbs,
                    GLOBAL const u64 *table, u32 window_bits, u32 windows,
                    GLOBAL const u64 *ctx, u32 n)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= n)
        return;
    GLOBAL const u64 *e = exp + gid * exp_limbs;
    const u64 mask = ((u64)1 << window_bits) - 1;
    u64 acc[L];
    int started = 0;

    load(acc, ctx + 2 * L);
    for (u32 w = 0; w < windows; ++w) {
        const u32 bit = w * window_bits, lo = bit / 64, off = bit % 64;
        if (lo >= exp_limbs)
            break;
        u64 word = e[lo] >> off;
        if (off + window_bits > 64 && lo + 1 < exp_limbs)
            word |= e[lo + 1] << (64 - off); /* windows that do not divide 64 straddle limbs */
        const u32 d = (u32)(word & mask);
        if (d == 0)
            continue;
        GLOBAL const u64 *entry = table + (((u64)w << window_bits) + d) * L;
        if (started) {
            mont_mul_gb(acc, acc, entry, ctx);
        } else {
            load(acc, entry);
            started = 1;
        }
    }
    from_mont(acc, acc, ctx);
    store(out + gid * L, acc);
}

/* Partial products of a multi-exponentiation: the K bases are cut into chunks of k_chunk, and
 * out[p, s, j] = prod over k in chunk s of base[p, k] ^ exp[k, j] mod m (Straus, one bit at a
 * time, squarings shared by the chunk's bases). With k_chunk = K that is the whole product;
 * the host cuts K when there are too few outputs to fill the device (a vector times a
 * matrix has a handful) and multiplies the chunks' partial products. bases are already in
 * Montgomery form (to_montgomery). */
KERNEL multiexp(GLOBAL u64 *out, GLOBAL const u64 *bases, GLOBAL const u64 *exps, u32 k_count,
                u32 k_chunk, u32 m_count, u32 exp_limbs, GLOBAL const u64 *ctx, u32 n)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= n)
        return;
    const u32 chunks = (k_count + k_chunk - 1) / k_chunk;
    const u64 j = gid % m_count;
    const u64 ps = gid / m_count;
    const u64 p = ps / chunks;
    const u32 k0 = (u32)(ps % chunks) * k_chunk;
    const u32 k1 = k0 + k_chunk < k_count ? k0 + k_chunk : k_count;
    u64 acc[L];

    int top = -1;
    for (u32 k = k0; k < k1; ++k) {
        const int t = top_bit(exps + ((u64)k * m_count + j) * exp_limbs, exp_limbs);
        top = t > top ? t : top;
    }
    load(acc, ctx + 2 * L);
    for (int bit = top; bit >= 0; --bit) {
        mont_mul(acc, acc, acc, ctx);
        for (u32 k = k0; k < k1; ++k) {
            if (exp_bit(exps + ((u64)k * m_count + j) * exp_limbs, (u32)bit)) {
                mont_mul_gb(acc, acc, bases + (p * k_count + k) * L, ctx);
            }
        }
    }
    from_mont(acc, acc, ctx);
    store(out + gid * L, acc);
}
