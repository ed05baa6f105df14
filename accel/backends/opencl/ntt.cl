/* Negacyclic NTT over RNS limbs, following docs/ntt.md step for step (Harvey's lazy
 * butterflies with Shoup twiddles), so that the words match the CPU path bit for bit.
 *
 * Data: rows of n coefficients, row r belongs to limb r % limbs (a batch (B, L, n) is B * L
 * rows). Twiddle tables are the plan's (L, n) arrays, uploaded once per plan.
 *
 * Stages whose butterflies span more than NTT_CHUNK coefficients run one launch each, one
 * work-item per butterfly, in global memory. The remaining stages (the last ones of the
 * forward transform, the first ones of the inverse) run in one launch per chunk, a work-group
 * of NTT_CHUNK / 2 work-items that keeps its NTT_CHUNK coefficients in local memory: that
 * saves log2(NTT_CHUNK) round trips through global memory. NTT_CHUNK is min(n, 2048). */

#include "dialect.h"

#ifndef NTT_CHUNK
#define NTT_CHUNK 2048
#endif

/* w * y mod q, lazily in [0, 2q), for a fixed twiddle w with companion floor(w 2^64 / q). */
DEVICE u64 shoup(u64 y, u64 w, u64 w_shoup, u64 q)
{
    return w * y - MULHI(w_shoup, y) * q;
}

DEVICE void fwd_butterfly(u64 *x, u64 *y, u64 w, u64 ws, u64 q)
{
    const u64 two_q = 2 * q;
    u64 u = *x;
    if (u >= two_q)
        u -= two_q;
    const u64 v = shoup(*y, w, ws, q);
    *x = u + v;
    *y = u - v + two_q;
}

DEVICE void inv_butterfly(u64 *x, u64 *y, u64 w, u64 ws, u64 q)
{
    const u64 two_q = 2 * q;
    const u64 a = *x, b = *y;
    u64 u = a + b;
    if (u >= two_q)
        u -= two_q;
    *x = u;
    *y = shoup(a - b + two_q, w, ws, q);
}

/* [0, 4q) -> [0, q) at the end of the forward transform. */
DEVICE u64 reduce4(u64 v, u64 q)
{
    if (v >= 2 * q)
        v -= 2 * q;
    if (v >= q)
        v -= q;
    return v;
}

/* Scaling by n^-1 at the end of the inverse transform, into [0, q). */
DEVICE u64 scale(u64 v, u64 n_inv, u64 n_inv_shoup, u64 q)
{
    v = shoup(v, n_inv, n_inv_shoup, q);
    return v >= q ? v - q : v;
}

/* One forward stage with butterfly half-width t = 2^log_t, over every row. */
KERNEL ntt_forward_stage(GLOBAL u64 *a, GLOBAL const u64 *psi, GLOBAL const u64 *psi_shoup,
                         GLOBAL const u64 *moduli, u32 limbs, u32 log_n, u32 log_t, u64 total)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 half_n = 1u << (log_n - 1);
    const u64 row = gid >> (log_n - 1);
    const u32 k = (u32)(gid & (half_n - 1));
    const u32 limb = (u32)(row % limbs);
    const u32 t = 1u << log_t;
    const u32 i = k >> log_t;
    const u32 j = 2 * i * t + (k & (t - 1));
    const u32 m = half_n >> log_t; /* n / (2t) butterfly groups in this stage */
    const u64 tw = (u64)limb << log_n;
    GLOBAL u64 *r = a + (row << log_n);
    u64 x = r[j], y = r[j + t];
    fwd_butterfly(&x, &y, psi[tw + m + i], psi_shoup[tw + m + i], moduli[limb]);
    r[j] = x;
    r[j + t] = y;
}

/* Two forward stages in one pass over global memory: half-widths t = 2^log_t and t / 2. Each
 * work-item owns the four coefficients that those two stages combine; the butterflies and
 * twiddles are exactly those of the two single stages, so the words are too. */
KERNEL ntt_forward_stage2(GLOBAL u64 *a, GLOBAL const u64 *psi, GLOBAL const u64 *psi_shoup,
                          GLOBAL const u64 *moduli, u32 limbs, u32 log_n, u32 log_t, u64 total)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 quarter = 1u << (log_n - 2);
    const u64 row = gid >> (log_n - 2);
    const u32 k = (u32)(gid & (quarter - 1));
    const u32 limb = (u32)(row % limbs);
    const u32 t = 1u << log_t;
    const u32 h = t >> 1;
    const u32 i = k >> (log_t - 1);           /* butterfly group of the first stage */
    const u32 j = 2 * i * t + (k & (h - 1));  /* first of the four coefficients */
    const u32 m = (1u << (log_n - 1)) >> log_t;
    const u64 tw = (u64)limb << log_n;
    const u64 q = moduli[limb];
    GLOBAL u64 *r = a + (row << log_n);
    u64 x0 = r[j], x1 = r[j + h], x2 = r[j + t], x3 = r[j + t + h];
    fwd_butterfly(&x0, &x2, psi[tw + m + i], psi_shoup[tw + m + i], q);
    fwd_butterfly(&x1, &x3, psi[tw + m + i], psi_shoup[tw + m + i], q);
    fwd_butterfly(&x0, &x1, psi[tw + 2 * m + 2 * i], psi_shoup[tw + 2 * m + 2 * i], q);
    fwd_butterfly(&x2, &x3, psi[tw + 2 * m + 2 * i + 1], psi_shoup[tw + 2 * m + 2 * i + 1], q);
    r[j] = x0;
    r[j + h] = x1;
    r[j + t] = x2;
    r[j + t + h] = x3;
}

/* The forward stages with 2t <= NTT_CHUNK, then the final reduction, one chunk per group. */
/* (GROUP_SIZE: the compiler must fit a whole work-group of this size on one compute unit.) */
KERNEL GROUP_SIZE(NTT_CHUNK / 2)
ntt_forward_tail(GLOBAL u64 *a, GLOBAL const u64 *psi, GLOBAL const u64 *psi_shoup,
                 GLOBAL const u64 *moduli, u32 limbs, u32 log_n)
{
    SHARED u64 buf[NTT_CHUNK];
    const u32 chunks_per_row = (1u << log_n) / NTT_CHUNK;
    const u64 group = GROUP_ID();
    const u64 row = group / chunks_per_row;
    const u32 chunk = (u32)(group % chunks_per_row);
    const u32 lid = LOCAL_ID();
    const u32 limb = (u32)(row % limbs);
    const u64 q = moduli[limb];
    const u64 tw = (u64)limb << log_n;
    GLOBAL u64 *r = a + (row << log_n) + (u64)chunk * NTT_CHUNK;

    buf[lid] = r[lid];
    buf[lid + NTT_CHUNK / 2] = r[lid + NTT_CHUNK / 2];
    BARRIER();
    const u32 k = chunk * (NTT_CHUNK / 2) + lid; /* butterfly index within the row */
    for (u32 t = NTT_CHUNK / 2; t >= 1; t >>= 1) {
        const u32 m = (1u << (log_n - 1)) / t;
        const u32 i = k / t;
        const u32 j = 2 * (lid / t) * t + (lid & (t - 1)); /* local position */
        u64 x = buf[j], y = buf[j + t];
        fwd_butterfly(&x, &y, psi[tw + m + i], psi_shoup[tw + m + i], q);
        buf[j] = x;
        buf[j + t] = y;
        BARRIER();
    }
    r[lid] = reduce4(buf[lid], q);
    r[lid + NTT_CHUNK / 2] = reduce4(buf[lid + NTT_CHUNK / 2], q);
}

/* The inverse stages with 2t <= NTT_CHUNK, one chunk per group; when they are all the stages
 * (n <= NTT_CHUNK) the scaling by n^-1 is done here too. */
KERNEL GROUP_SIZE(NTT_CHUNK / 2)
ntt_inverse_head(GLOBAL u64 *a, GLOBAL const u64 *psi_inv, GLOBAL const u64 *psi_inv_shoup,
                 GLOBAL const u64 *moduli, GLOBAL const u64 *n_inv, GLOBAL const u64 *n_inv_shoup,
                 u32 limbs, u32 log_n, u32 finish)
{
    SHARED u64 buf[NTT_CHUNK];
    const u32 chunks_per_row = (1u << log_n) / NTT_CHUNK;
    const u64 group = GROUP_ID();
    const u64 row = group / chunks_per_row;
    const u32 chunk = (u32)(group % chunks_per_row);
    const u32 lid = LOCAL_ID();
    const u32 limb = (u32)(row % limbs);
    const u64 q = moduli[limb];
    const u64 tw = (u64)limb << log_n;
    GLOBAL u64 *r = a + (row << log_n) + (u64)chunk * NTT_CHUNK;

    buf[lid] = r[lid];
    buf[lid + NTT_CHUNK / 2] = r[lid + NTT_CHUNK / 2];
    BARRIER();
    const u32 k = chunk * (NTT_CHUNK / 2) + lid;
    for (u32 t = 1; t <= NTT_CHUNK / 2; t <<= 1) {
        const u32 h = (1u << (log_n - 1)) / t; /* m / 2 in docs/ntt.md */
        const u32 i = k / t;
        const u32 j = 2 * (lid / t) * t + (lid & (t - 1));
        u64 x = buf[j], y = buf[j + t];
        inv_butterfly(&x, &y, psi_inv[tw + h + i], psi_inv_shoup[tw + h + i], q);
        buf[j] = x;
        buf[j + t] = y;
        BARRIER();
    }
    u64 lo = buf[lid], hi = buf[lid + NTT_CHUNK / 2];
    if (finish) {
        lo = scale(lo, n_inv[limb], n_inv_shoup[limb], q);
        hi = scale(hi, n_inv[limb], n_inv_shoup[limb], q);
    }
    r[lid] = lo;
    r[lid + NTT_CHUNK / 2] = hi;
}

/* One inverse stage with half_n-width t = 2^log_t; the last one (finish) also scales. */
KERNEL ntt_inverse_stage(GLOBAL u64 *a, GLOBAL const u64 *psi_inv,
                         GLOBAL const u64 *psi_inv_shoup, GLOBAL const u64 *moduli,
                         GLOBAL const u64 *n_inv, GLOBAL const u64 *n_inv_shoup, u32 limbs,
                         u32 log_n, u32 log_t, u32 finish, u64 total)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 half_n = 1u << (log_n - 1);
    const u64 row = gid >> (log_n - 1);
    const u32 k = (u32)(gid & (half_n - 1));
    const u32 limb = (u32)(row % limbs);
    const u32 t = 1u << log_t;
    const u32 i = k >> log_t;
    const u32 j = 2 * i * t + (k & (t - 1));
    const u32 h = half_n >> log_t;
    const u64 tw = (u64)limb << log_n;
    const u64 q = moduli[limb];
    GLOBAL u64 *r = a + (row << log_n);
    u64 x = r[j], y = r[j + t];
    inv_butterfly(&x, &y, psi_inv[tw + h + i], psi_inv_shoup[tw + h + i], q);
    if (finish) {
        x = scale(x, n_inv[limb], n_inv_shoup[limb], q);
        y = scale(y, n_inv[limb], n_inv_shoup[limb], q);
    }
    r[j] = x;
    r[j + t] = y;
}

/* Two inverse stages in one pass: half-widths t = 2^log_t and 2t (see ntt_forward_stage2);
 * finish scales when the second one is the last stage. */
KERNEL ntt_inverse_stage2(GLOBAL u64 *a, GLOBAL const u64 *psi_inv,
                          GLOBAL const u64 *psi_inv_shoup, GLOBAL const u64 *moduli,
                          GLOBAL const u64 *n_inv, GLOBAL const u64 *n_inv_shoup, u32 limbs,
                          u32 log_n, u32 log_t, u32 finish, u64 total)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 quarter = 1u << (log_n - 2);
    const u64 row = gid >> (log_n - 2);
    const u32 k = (u32)(gid & (quarter - 1));
    const u32 limb = (u32)(row % limbs);
    const u32 t = 1u << log_t;
    const u32 g = k >> log_t;                 /* block of 4t coefficients */
    const u32 j = 4 * g * t + (k & (t - 1));
    const u32 h1 = (1u << (log_n - 1)) >> log_t; /* groups of the first stage */
    const u32 h2 = h1 >> 1;
    const u64 tw = (u64)limb << log_n;
    const u64 q = moduli[limb];
    GLOBAL u64 *r = a + (row << log_n);
    u64 x0 = r[j], x1 = r[j + t], x2 = r[j + 2 * t], x3 = r[j + 3 * t];
    inv_butterfly(&x0, &x1, psi_inv[tw + h1 + 2 * g], psi_inv_shoup[tw + h1 + 2 * g], q);
    inv_butterfly(&x2, &x3, psi_inv[tw + h1 + 2 * g + 1], psi_inv_shoup[tw + h1 + 2 * g + 1], q);
    inv_butterfly(&x0, &x2, psi_inv[tw + h2 + g], psi_inv_shoup[tw + h2 + g], q);
    inv_butterfly(&x1, &x3, psi_inv[tw + h2 + g], psi_inv_shoup[tw + h2 + g], q);
    if (finish) {
        const u64 ni = n_inv[limb], nis = n_inv_shoup[limb];
        x0 = scale(x0, ni, nis, q);
        x1 = scale(x1, ni, nis, q);
        x2 = scale(x2, ni, nis, q);
        x3 = scale(x3, ni, nis, q);
    }
    r[j] = x0;
    r[j + t] = x1;
    r[j + 2 * t] = x2;
    r[j + 3 * t] = x3;
}

/* a[i] = a[i] * b[i] mod q for reduced inputs, by Barrett reduction of the 128-bit product
 * with the plan's floor(2^128 / q) = (ratio_lo, ratio_hi). The quotient estimate is short by
 * at most a few q, and the result, fully reduced, is the unique residue. */
KERNEL ntt_pointwise(GLOBAL u64 *a, GLOBAL const u64 *b, GLOBAL const u64 *moduli,
                     GLOBAL const u64 *barrett, u32 limbs, u32 log_n, u64 total)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 limb = (u32)((gid >> log_n) % limbs);
    const u64 q = moduli[limb], r0 = barrett[2 * limb], r1 = barrett[2 * limb + 1];
    const u64 x = a[gid], y = b[gid];
    const u64 lo = x * y, hi = MULHI(x, y);

    /* high words of (hi:lo) * (r1:r0) / 2^128, low 64 bits of the quotient estimate */
    const u64 c0 = MULHI(lo, r0);
    const u64 m1 = lo * r1;
    u64 s = m1 + c0;
    const u64 t3 = MULHI(lo, r1) + (s < m1);
    const u64 m2 = hi * r0;
    const u64 s2 = s + m2;
    const u64 carry = MULHI(hi, r0) + (s2 < s);
    const u64 quotient = hi * r1 + t3 + carry;

    u64 r = lo - quotient * q;
    while (r >= q)
        r -= q;
    a[gid] = r;
}
