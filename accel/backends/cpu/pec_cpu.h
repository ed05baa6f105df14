/* Public interface of the CPU backend's C kernels (parsed by cffi: declarations only).
 *
 * Every big number is an array of little-endian 64-bit limbs. A batch of N residues modulo m
 * is N * limbs contiguous limbs; exponents have their own limb count. All calls are
 * thread-safe, run on `threads` worker threads and never touch Python objects, so the caller
 * releases the GIL around them. A non-zero `simd` lets a call use the AVX-512 IFMA kernels
 * where the CPU has them; results are the same either way.
 */
#ifndef PEC_CPU_H
#define PEC_CPU_H

#include <stdint.h>

/* Montgomery constants of one odd modulus m with R = 2^(64 * limbs). */
typedef struct {
    int64_t limbs;
    const uint64_t *mod; /* m */
    const uint64_t *r2;  /* R^2 mod m: converts into Montgomery form */
    const uint64_t *one; /* R mod m: 1 in Montgomery form */
    uint64_t minv;       /* -m^-1 mod 2^64 */
} pec_modulus;

/* Return codes. */
#define PEC_OK 0
#define PEC_NO_MEMORY 1
#define PEC_NOT_INVERTIBLE 2

/* Index of the first of `rows` residues that is not below m, or -1 when all are reduced. */
int64_t pec_first_unreduced(const pec_modulus *m, const uint64_t *a, int64_t rows);

/* out[i] = a[i] * b[i or 0] mod m; b_step is 1 for one factor per row, 0 to broadcast b[0]. */
int pec_mulmod(const pec_modulus *m, const uint64_t *a, const uint64_t *b, int64_t b_step,
               uint64_t *out, int64_t rows, int threads, int simd);

/* out[i] = base[i] ^ exp[i or 0] mod m; exponents have exp_limbs limbs, exp_step as above. */
int pec_powmod(const pec_modulus *m, const uint64_t *base, const uint64_t *exp,
               int64_t exp_limbs, int64_t exp_step, uint64_t *out, int64_t rows, int threads,
               int simd);

/* table[i][j - 1] = base^(j << (window * i)) in Montgomery form, j = 1 .. 2^window - 1,
 * i = 0 .. windows - 1; the table holds windows * (2^window - 1) * limbs limbs. */
int pec_fixed_base_table(const pec_modulus *m, const uint64_t *base, int window,
                         int64_t windows, uint64_t *table, int threads, int simd);

/* out[i] = base ^ exp[i] mod m through a table from pec_fixed_base_table; every exponent
 * must fit in window * windows bits. */
int pec_powmod_fixed(const pec_modulus *m, const uint64_t *table, int window, int64_t windows,
                     const uint64_t *exp, int64_t exp_limbs, uint64_t *out, int64_t rows,
                     int threads, int simd);

/* out[p][j] = prod_k bases[p][k] ^ exps[k][j] mod m (bases P x K, exps K x M, out P x M). */
int pec_multiexp(const pec_modulus *m, const uint64_t *bases, const uint64_t *exps,
                 int64_t exp_limbs, int64_t P, int64_t K, int64_t M, uint64_t *out,
                 int threads, int simd);

/* out[i] = a[i]^-1 mod m; on PEC_NOT_INVERTIBLE *bad_index is the first row without one. */
int pec_invmod(const pec_modulus *m, const uint64_t *a, uint64_t *out, int64_t rows,
               int64_t *bad_index, int threads, int simd);

/* out[j] = prod_k a[k][j] mod m over a K x N batch. */
int pec_prodmod(const pec_modulus *m, const uint64_t *a, int64_t K, int64_t N, uint64_t *out,
                int threads, int simd);

/* out[k][i] = sum_j db[i][j] * q[k][j] mod 2^32 (db rows x cols bytes, q batch x cols words,
 * out batch x rows words): the LWE pass of private query. */
int pec_lwe_matmul_u8(const uint8_t *db, int64_t rows, int64_t cols, const uint32_t *q,
                      int64_t batch, uint32_t *out, int threads);

/* Non-zero when this CPU runs the AVX-512 IFMA kernels. */
int pec_simd_available(void);

/* Version string of the GMP library the kernels run on. */
const char *pec_gmp_version(void);

#endif
