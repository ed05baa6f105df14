/* Eight-lane Montgomery arithmetic on AVX-512 IFMA, for CPUs that have it.
 *
 * Numbers are held in radix 2^52 (the width of the IFMA multiplier) with R = 2^(52 * n);
 * eight independent residues are interleaved digit by digit ("digit-major": digit k of lane l
 * at [8 * k + l]) so that one instruction advances all eight. Results of the kernel stay
 * below 2m (almost-Montgomery form) and are reduced once on the way out. The portable GMP
 * path in the other files is what every other CPU runs, and it is bit-identical.
 */
#ifndef PEC_IFMA_H
#define PEC_IFMA_H

#include <stdint.h>

#include "pec_cpu.h"

/* Whether this CPU (and this build) can run the IFMA kernels. */
int pec_ifma_usable(void);

/* Whether the IFMA path pays for this modulus and batch size. */
int pec_ifma_worth(const pec_modulus *m, int64_t rows);

int pec_ifma_powmod(const pec_modulus *m, const uint64_t *base, const uint64_t *exp,
                    int64_t exp_limbs, int64_t exp_step, uint64_t *out, int64_t rows,
                    int threads);

int pec_ifma_powmod_fixed(const pec_modulus *m, const uint64_t *table, int window,
                          int64_t windows, const uint64_t *exp, int64_t exp_limbs,
                          uint64_t *out, int64_t rows, int threads);

/* Window sums of pec_multiexp (one bucket width for all columns), in the portable path's
 * Montgomery form: sums[task] for task = p * first_window[M] + window slot. */
int pec_ifma_multiexp_sums(const pec_modulus *m, const uint64_t *bases, const uint64_t *exps,
                           int64_t exp_limbs, int64_t P, int64_t K, int64_t M, int width,
                           const int64_t *first_window, uint64_t *sums, int threads);

int pec_ifma_mulmod(const pec_modulus *m, const uint64_t *a, const uint64_t *b, int64_t b_step,
                    uint64_t *out, int64_t rows, int threads);

/* partial[s][j] = product of segment s (rows K*s/segments .. K*(s+1)/segments - 1) of
 * column j of a K x N batch, in normal form. */
int pec_ifma_segment_products(const pec_modulus *m, const uint64_t *a, int64_t K, int64_t N,
                              int64_t segments, uint64_t *partial, int threads);

int pec_ifma_invmod(const pec_modulus *m, const uint64_t *a, uint64_t *out, int64_t rows,
                    int64_t *bad_index, int threads);

/* Entries 2 .. 2^window - 1 of every window of a fixed-base table whose entry 1 (the
 * window's generator, R64 Montgomery form) is in place. */
int pec_ifma_fill_table(const pec_modulus *m, int window, int64_t windows, uint64_t *table,
                        int threads);

#endif
