/* A parallel for-loop over [0, total) on short-lived POSIX threads.
 *
 * Helper threads live for one call only: no pool survives into a fork()ed child, which keeps
 * the extension safe under multiprocessing. Work is handed out in chunks of `grain` items
 * from an atomic counter, so uneven rows (different exponent lengths) balance themselves,
 * and the call returns as soon as every chunk is done: a helper the scheduler starts late
 * finds nothing left and exits on its own.
 */
#ifndef PEC_THREAD_POOL_H
#define PEC_THREAD_POOL_H

#include <gmp.h>
#include <stddef.h>
#include <stdint.h>

/* Runs items [begin, end) with a per-thread scratch buffer; returns a PEC_ status. */
typedef int (*pec_range_fn)(void *ctx, int64_t begin, int64_t end, mp_limb_t *scratch);

/* Calls fn over [0, total) on up to `threads` threads, each with `scratch_limbs` limbs of
 * scratch; returns the first non-zero status any call returned (or PEC_NO_MEMORY). */
int pec_parallel_for(int64_t total, int64_t grain, int threads, size_t scratch_limbs,
                     pec_range_fn fn, void *ctx);

#endif
