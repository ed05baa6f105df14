/* LWE matrix products over Z_{2^32} (accel.lwe, docs/pir.md): out[k][i] = sum_j db[i][j] *
 * q[k][j] mod 2^32, db one byte per entry. u32 arithmetic wraps, which is the reduction.
 *
 * One work-group per database row: its LWE_GROUP work-items stride over the row together
 * (coalesced reads of the bytes and of the query words), each keeping partial sums for
 * LWE_QUERIES queries at once so that every byte read serves that many queries, then the
 * group adds its partial sums in local memory. The host launches rows * LWE_GROUP items. */

#include "dialect.h"

#ifndef LWE_GROUP
#define LWE_GROUP 128
#endif
#define LWE_QUERIES 4

KERNEL GROUP_SIZE(LWE_GROUP) lwe_matmul_u8(GLOBAL const u8 *db, GLOBAL const u32 *q,
                                            GLOBAL u32 *out, u64 rows, u64 cols, u64 batch)
{
    SHARED u32 partial[LWE_QUERIES][LWE_GROUP];
    u64 row = GROUP_ID();
    u32 lid = LOCAL_ID();
    if (row >= rows)
        return; /* whole groups only: the barrier below is never split */
    GLOBAL const u8 *d = db + row * cols;
    for (u64 k0 = 0; k0 < batch; k0 += LWE_QUERIES) {
        u32 acc[LWE_QUERIES] = {0, 0, 0, 0};
        for (u64 j = lid; j < cols; j += LWE_GROUP) {
            u32 x = d[j];
            for (u32 k = 0; k < LWE_QUERIES; k++)
                if (k0 + k < batch)
                    acc[k] += x * q[(k0 + k) * cols + j];
        }
        for (u32 k = 0; k < LWE_QUERIES; k++)
            partial[k][lid] = acc[k];
        BARRIER();
        for (u32 span = LWE_GROUP / 2; span > 0; span >>= 1) {
            if (lid < span)
                for (u32 k = 0; k < LWE_QUERIES; k++)
                    partial[k][lid] += partial[k][lid + span];
            BARRIER();
        }
        if (lid < LWE_QUERIES && k0 + lid < batch)
            out[(k0 + lid) * rows + row] = partial[lid][0];
        BARRIER();
    }
}
