/* Negacyclic NTT over RNS limbs, following docs/ntt.md step for step (Harvey's lazy
 * butterflies with Shoup twiddles), so that the words match the CPU path bit for bit.
 *
 * Data: rows of n coefficients, row r belongs to limb r % limbs (a batch (B, L, n) is B * L
 * rows). Twiddle tables are the plan's (L, n) arrays, uploaded once per plan.
 *
 * Stages whose butterflies span more than NTT_CHUNK coefficients run in global memory, up to
 * NTT_MAX_FUSED of them in one pass: a work-item owns the 2^S coefficients that S consecutive
 * stages combine and keeps them in registers between the stages. The remaining stages (the
 * last ones of the forward transform, the first ones of the inverse) run in one launch, a
 * work-group of NTT_THREADS work-items per chunk that keeps its NTT_CHUNK coefficients in
 * local memory. For n = 65536 and chunks of 4096 that is two passes over the data in all.
 * Every butterfly and twiddle is that of the stage-by-stage order, so the words are too. */

#include "dialect.h"

#ifndef NTT_CHUNK
#define NTT_CHUNK 4096
#endif
#define NTT_MAX_FUSED 4
#ifndef NTT_THREADS
#if NTT_CHUNK >> NTT_MAX_FUSED > 1024
#define NTT_THREADS 1024
#elif NTT_CHUNK >> NTT_MAX_FUSED > 0
#define NTT_THREADS (NTT_CHUNK >> NTT_MAX_FUSED)
#else
#define NTT_THREADS 1
#endif
#endif
/* log2(NTT_CHUNK); the host passes it as a literal so that the rounds unroll */
#ifndef NTT_LOG_CHUNK
#define NTT_LOG_CHUNK (63 - CLZ64((u64)NTT_CHUNK))
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

/* S forward stages, half-widths t = 2^log_t down to t >> (S - 1), in one pass over global
 * memory. Work-item k of a row owns coefficients j0 + c * tl (c < 2^S, tl = t >> (S - 1)) of
 * one block of 2t; at stage s (half-width t >> s, n / (2t) << s groups) coefficient c meets
 * c + 2^(S-1-s) in group (blk << s) + (c >> (S - s)). */
DEVICE void fwd_stages(GLOBAL u64 *a, GLOBAL const u64 *psi, GLOBAL const u64 *psi_shoup,
                       GLOBAL const u64 *moduli, u32 limbs, u32 log_n, u32 log_t, u64 total,
                       const u32 S)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 log_items = log_n - S; /* work-items per row */
    const u64 row = gid >> log_items;
    const u32 k = (u32)(gid & ((1u << log_items) - 1));
    const u32 limb = (u32)(row % limbs);
    const u32 log_tl = log_t + 1 - S;
    const u32 blk = k >> log_tl;
    const u32 j0 = (blk << (log_t + 1)) + (k & ((1u << log_tl) - 1));
    const u64 tw = (u64)limb << log_n;
    const u64 q = moduli[limb];
    GLOBAL u64 *r = a + (row << log_n) + j0;
    u64 x[1 << NTT_MAX_FUSED];
#pragma unroll
    for (u32 c = 0; c < (1u << S); c++)
        x[c] = r[c << log_tl];
#pragma unroll
    for (u32 s = 0; s < S; s++) {
        const u32 apart = 1u << (S - 1 - s);
        const u32 m = (1u << (log_n - 1)) >> (log_t - s);
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++) {
            if (c & apart)
                continue;
            const u32 idx = m + (blk << s) + (c >> (S - s));
            fwd_butterfly(&x[c], &x[c + apart], psi[tw + idx], psi_shoup[tw + idx], q);
        }
    }
#pragma unroll
    for (u32 c = 0; c < (1u << S); c++)
        r[c << log_tl] = x[c];
}

#define FWD_STAGES_KERNEL(S)                                                                  \
    KERNEL ntt_forward_stages##S(GLOBAL u64 *a, GLOBAL const u64 *psi,                        \
                                 GLOBAL const u64 *psi_shoup, GLOBAL const u64 *moduli,       \
                                 u32 limbs, u32 log_n, u32 log_t, u64 total)                  \
    {                                                                                         \
        fwd_stages(a, psi, psi_shoup, moduli, limbs, log_n, log_t, total, S);                 \
    }
FWD_STAGES_KERNEL(1)
FWD_STAGES_KERNEL(2)
FWD_STAGES_KERNEL(3)
FWD_STAGES_KERNEL(4)

/* Local-memory slot of chunk coefficient i: its low four bits XORed with the next four. In a
 * round's last stages the work-items of a warp own coefficients 16 apart, which would all
 * fall into one memory bank; the swizzle spreads them over 16. It permutes every block of 16,
 * so it uses no extra memory. */
DEVICE u32 slot(u32 i)
{
    return i ^ ((i >> 4) & 15);
}

/* S forward stages (half-widths 2^log_t down to 2^(log_t + 1 - S)) on a chunk in local memory,
 * indexed as in fwd_stages; blk0 is the chunk's first block of 2^(log_t + 1) in its row. */
DEVICE void fwd_round(SHARED_PTR u64 *buf, GLOBAL const u64 *psi, GLOBAL const u64 *psi_shoup,
                      u64 tw, u64 q, u32 log_n, u32 log_t, u32 blk0, u32 lid, const u32 S)
{
    const u32 log_tl = log_t + 1 - S;
    for (u32 k = lid; k < (NTT_CHUNK >> S); k += NTT_THREADS) {
        const u32 blk = k >> log_tl;
        const u32 j0 = (blk << (log_t + 1)) + (k & ((1u << log_tl) - 1));
        u64 x[1 << NTT_MAX_FUSED];
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++)
            x[c] = buf[slot(j0 + (c << log_tl))];
#pragma unroll
        for (u32 s = 0; s < S; s++) {
            const u32 apart = 1u << (S - 1 - s);
            const u32 m = (1u << (log_n - 1)) >> (log_t - s);
#pragma unroll
            for (u32 c = 0; c < (1u << S); c++) {
                if (c & apart)
                    continue;
                const u32 idx = m + ((blk0 + blk) << s) + (c >> (S - s));
                fwd_butterfly(&x[c], &x[c + apart], psi[tw + idx], psi_shoup[tw + idx], q);
            }
        }
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++)
            buf[slot(j0 + (c << log_tl))] = x[c];
    }
}

/* The forward stages with 2t <= NTT_CHUNK, then the final reduction, one chunk per group. */
/* (GROUP_SIZE: the compiler must fit a whole work-group of this size on one compute unit.) */
KERNEL GROUP_SIZE(NTT_THREADS)
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

    for (u32 e = lid; e < NTT_CHUNK; e += NTT_THREADS)
        buf[slot(e)] = r[e];
    BARRIER();
#pragma unroll
    for (u32 done = 0; done < NTT_LOG_CHUNK; done += NTT_MAX_FUSED) {
        const u32 top = NTT_LOG_CHUNK - 1 - done; /* log2 of the round's first half-width */
        const u32 S = NTT_LOG_CHUNK - done < NTT_MAX_FUSED ? NTT_LOG_CHUNK - done : NTT_MAX_FUSED;
        fwd_round(buf, psi, psi_shoup, tw, q, log_n, top, chunk << done, lid, S);
        BARRIER();
    }
    for (u32 e = lid; e < NTT_CHUNK; e += NTT_THREADS)
        r[e] = reduce4(buf[slot(e)], q);
}

/* S inverse stages (half-widths 2^log_t up to 2^(log_t + S - 1)) on a chunk in local memory,
 * indexed as in inv_stages; g0 is the chunk's first block of 2^(log_t + S) in its row. */
DEVICE void inv_round(SHARED_PTR u64 *buf, GLOBAL const u64 *psi_inv,
                      GLOBAL const u64 *psi_inv_shoup, u64 tw, u64 q, u32 log_n, u32 log_t,
                      u32 g0, u32 lid, const u32 S)
{
    for (u32 k = lid; k < (NTT_CHUNK >> S); k += NTT_THREADS) {
        const u32 g = k >> log_t;
        const u32 j0 = (g << (log_t + S)) + (k & ((1u << log_t) - 1));
        u64 x[1 << NTT_MAX_FUSED];
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++)
            x[c] = buf[slot(j0 + (c << log_t))];
#pragma unroll
        for (u32 s = 0; s < S; s++) {
            const u32 span = 1u << s;
            const u32 h = (1u << (log_n - 1)) >> (log_t + s);
#pragma unroll
            for (u32 c = 0; c < (1u << S); c++) {
                if (c & span)
                    continue;
                const u32 idx = h + ((g0 + g) << (S - 1 - s)) + (c >> (s + 1));
                inv_butterfly(&x[c], &x[c + span], psi_inv[tw + idx], psi_inv_shoup[tw + idx],
                              q);
            }
        }
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++)
            buf[slot(j0 + (c << log_t))] = x[c];
    }
}

/* The inverse stages with 2t <= NTT_CHUNK, one chunk per group; when they are all the stages
 * (n <= NTT_CHUNK) the scaling by n^-1 is done here too. */
KERNEL GROUP_SIZE(NTT_THREADS)
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

    for (u32 e = lid; e < NTT_CHUNK; e += NTT_THREADS)
        buf[slot(e)] = r[e];
    BARRIER();
#pragma unroll
    for (u32 low = 0; low < NTT_LOG_CHUNK; low += NTT_MAX_FUSED) {
        const u32 S = NTT_LOG_CHUNK - low < NTT_MAX_FUSED ? NTT_LOG_CHUNK - low : NTT_MAX_FUSED;
        inv_round(buf, psi_inv, psi_inv_shoup, tw, q, log_n, low,
                  chunk << (NTT_LOG_CHUNK - low - S), lid, S);
        BARRIER();
    }
    for (u32 e = lid; e < NTT_CHUNK; e += NTT_THREADS) {
        u64 v = buf[slot(e)];
        if (finish)
            v = scale(v, n_inv[limb], n_inv_shoup[limb], q);
        r[e] = v;
    }
}

/* S inverse stages, half-widths t = 2^log_t up to t << (S - 1), in one pass (see fwd_stages):
 * work-item k owns coefficients j0 + c * t of one block of 2^S t; at stage s coefficient c
 * meets c + 2^s in group (g << (S - 1 - s)) + (c >> (s + 1)). finish scales by n^-1 when the
 * last of them is the last stage. */
DEVICE void inv_stages(GLOBAL u64 *a, GLOBAL const u64 *psi_inv, GLOBAL const u64 *psi_inv_shoup,
                       GLOBAL const u64 *moduli, GLOBAL const u64 *n_inv,
                       GLOBAL const u64 *n_inv_shoup, u32 limbs, u32 log_n, u32 log_t,
                       u32 finish, u64 total, const u32 S)
{
    const u64 gid = GLOBAL_ID();
    if (gid >= total)
        return;
    const u32 log_items = log_n - S;
    const u64 row = gid >> log_items;
    const u32 k = (u32)(gid & ((1u << log_items) - 1));
    const u32 limb = (u32)(row % limbs);
    const u32 g = k >> log_t;
    const u32 j0 = (g << (log_t + S)) + (k & ((1u << log_t) - 1));
    const u64 tw = (u64)limb << log_n;
    const u64 q = moduli[limb];
    GLOBAL u64 *r = a + (row << log_n) + j0;
    u64 x[1 << NTT_MAX_FUSED];
#pragma unroll
    for (u32 c = 0; c < (1u << S); c++)
        x[c] = r[c << log_t];
#pragma unroll
    for (u32 s = 0; s < S; s++) {
        const u32 span = 1u << s;
        const u32 h = (1u << (log_n - 1)) >> (log_t + s);
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++) {
            if (c & span)
                continue;
            const u32 idx = h + (g << (S - 1 - s)) + (c >> (s + 1));
            inv_butterfly(&x[c], &x[c + span], psi_inv[tw + idx], psi_inv_shoup[tw + idx], q);
        }
    }
    if (finish) {
        const u64 ni = n_inv[limb], nis = n_inv_shoup[limb];
#pragma unroll
        for (u32 c = 0; c < (1u << S); c++)
            x[c] = scale(x[c], ni, nis, q);
    }
#pragma unroll
    for (u32 c = 0; c < (1u << S); c++)
        r[c << log_t] = x[c];
}

#define INV_STAGES_KERNEL(S)                                                                  \
    KERNEL ntt_inverse_stages##S(GLOBAL u64 *a, GLOBAL const u64 *psi_inv,                    \
                                 GLOBAL const u64 *psi_inv_shoup, GLOBAL const u64 *moduli,   \
                                 GLOBAL const u64 *n_inv, GLOBAL const u64 *n_inv_shoup,      \
                                 u32 limbs, u32 log_n, u32 log_t, u32 finish, u64 total)      \
    {                                                                                         \
        inv_stages(a, psi_inv, psi_inv_shoup, moduli, n_inv, n_inv_shoup, limbs, log_n, log_t, \
                   finish, total, S);                                                         \
    }
INV_STAGES_KERNEL(1)
INV_STAGES_KERNEL(2)
INV_STAGES_KERNEL(3)
INV_STAGES_KERNEL(4)

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
