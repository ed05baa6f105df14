/* LWE matrix products over Z_{2^32}: out[k][i] = sum_j db[i][j] * q[k][j] mod 2^32.
 *
 * This is the server's pass of a SimplePIR-style private query (docs/pir.md): db is the
 * encoded database, one byte per entry (plaintext modulus 256), and each row of q is one
 * client's query vector.
 *
 * Why 16-bit halves: a 32-bit multiply is a slow instruction on x86, while the 16-bit
 * multiply-add (pmaddwd) does twice the lanes in one step. Each query word is split as
 * q = lo + 2^16 * hi with lo, hi signed 16-bit (lo in [-2^15, 2^15), hi taken mod 2^16), so
 * sum d*q = sum d*lo + 2^16 * sum d*hi (mod 2^32), and both sums are dot products of bytes
 * widened to 16 bits with 16-bit words: the pattern the compiler turns into pmaddwd. The
 * 32-bit accumulators wrap, which is the reduction mod 2^32 the scheme wants (the build
 * passes -fwrapv, and the wrap is also what the unsigned recombination does).
 *
 * A block of ROWS database rows meets QUERIES queries at a time, so each byte loaded is used
 * QUERIES times and each query word ROWS times; a row block stays in cache while the whole
 * batch passes over it, so a batch reads the database once. The block is compiled three
 * times (AVX-512 VNNI, AVX2, plain x86-64: the rest of the extension is built for plain
 * x86-64) and each call runs the best one this CPU has.
 */
#include "pec_cpu.h"
#include "thread_pool.h"

#include <stdlib.h>
#include <string.h>

#define ROWS 4
#define QUERIES 4


/* acc[k][r] for ROWS rows of d (row stride `stride`) and QUERIES queries of lo/hi. */
#define DEFINE_BLOCK(name, attr)                                                              \
    attr static void name(const uint8_t *restrict d, int64_t stride,                          \
                          const int16_t *restrict lo, const int16_t *restrict hi,             \
                          int64_t cols, uint32_t acc[QUERIES][ROWS]) {                        \
        int32_t a[ROWS][QUERIES] = {{0}}, b[ROWS][QUERIES] = {{0}};                           \
        for (int64_t j = 0; j < cols; j++) {                                                  \
            for (int k = 0; k < QUERIES; k++) {                                               \
                int16_t l = lo[k * cols + j], h = hi[k * cols + j];                           \
                for (int r = 0; r < ROWS; r++) {                                              \
                    int16_t x = d[r * stride + j];                                            \
                    a[r][k] += x * l;                                                         \
                    b[r][k] += x * h;                                                         \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < ROWS; r++)                                                        \
            for (int k = 0; k < QUERIES; k++)                                                 \
                acc[k][r] = (uint32_t)a[r][k] + ((uint32_t)b[r][k] << 16);                    \
    }

/* The same for one query: the batch's last batch % QUERIES queries (and a single query). */
#define DEFINE_BLOCK_ONE(name, attr)                                                          \
    attr static void name(const uint8_t *restrict d, int64_t stride,                          \
                          const int16_t *restrict lo, const int16_t *restrict hi,             \
                          int64_t cols, uint32_t acc[ROWS]) {                                 \
        int32_t a[ROWS] = {0}, b[ROWS] = {0};                                                 \
        for (int64_t j = 0; j < cols; j++) {                                                  \
            int16_t l = lo[j], h = hi[j];                                                     \
            for (int r = 0; r < ROWS; r++) {                                                  \
                int16_t x = d[r * stride + j];                                                \
                a[r] += x * l;                                                                \
                b[r] += x * h;                                                                \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < ROWS; r++)                                                        \
            acc[r] = (uint32_t)a[r] + ((uint32_t)b[r] << 16);                                 \
    }

typedef void (*block_fn)(const uint8_t *, int64_t, const int16_t *, const int16_t *, int64_t,
                         uint32_t[QUERIES][ROWS]);
typedef void (*block_one_fn)(const uint8_t *, int64_t, const int16_t *, const int16_t *,
                             int64_t, uint32_t[ROWS]);

DEFINE_BLOCK(block_base, )
DEFINE_BLOCK_ONE(block_one_base, )

#if defined(__x86_64__) && defined(__GNUC__)
/* Chosen by CPU feature, not by model name, so that any vendor's CPU gets its best path:
 * AVX-512 VNNI fuses the 16-bit multiply-add with the accumulation (vpdpwssd). */
#define VNNI __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")))
#define AVX2 __attribute__((target("avx2")))
DEFINE_BLOCK(block_vnni, VNNI)
DEFINE_BLOCK_ONE(block_one_vnni, VNNI)
DEFINE_BLOCK(block_avx2, AVX2)
DEFINE_BLOCK_ONE(block_one_avx2, AVX2)
#endif

typedef struct {
    block_fn block;
    block_one_fn one;
} kernels;

static kernels pick_kernels(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return (kernels){block_vnni, block_one_vnni};
    if (__builtin_cpu_supports("avx2"))
        return (kernels){block_avx2, block_one_avx2};
#endif
    return (kernels){block_base, block_one_base};
}

typedef struct {
    const uint8_t *db;
    const int16_t *lo, *hi; /* batch x cols */
    uint32_t *out;
    int64_t rows, cols, batch;
    block_fn block;
    block_one_fn one;
} lwe_ctx;

static int lwe_range(void *vctx, int64_t begin, int64_t end, mp_limb_t *scratch) {
    (void)scratch;
    const lwe_ctx *c = (const lwe_ctx *)vctx;
    uint8_t *tail = NULL; /* the last, short row block, padded with zero rows */
    for (int64_t step = begin; step < end; step++) {
        int64_t i = step * ROWS;
        int64_t n_rows = c->rows - i < ROWS ? c->rows - i : ROWS;
        const uint8_t *d = c->db + i * c->cols;
        if (n_rows < ROWS) {
            tail = calloc((size_t)(ROWS * c->cols), 1);
            if (tail == NULL)
                return PEC_NO_MEMORY;
            memcpy(tail, d, (size_t)(n_rows * c->cols));
            d = tail;
        }
        int64_t k = 0;
        for (; k + QUERIES <= c->batch; k += QUERIES) {
            uint32_t acc[QUERIES][ROWS];
            c->block(d, c->cols, c->lo + k * c->cols, c->hi + k * c->cols, c->cols, acc);
            for (int kk = 0; kk < QUERIES; kk++)
                for (int r = 0; r < n_rows; r++)
                    c->out[(k + kk) * c->rows + i + r] = acc[kk][r];
        }
        for (; k < c->batch; k++) {
            uint32_t acc[ROWS];
            c->one(d, c->cols, c->lo + k * c->cols, c->hi + k * c->cols, c->cols, acc);
            for (int r = 0; r < n_rows; r++)
                c->out[k * c->rows + i + r] = acc[r];
        }
    }
    free(tail);
    return PEC_OK;
}

int pec_lwe_matmul_u8(const uint8_t *db, int64_t rows, int64_t cols, const uint32_t *q,
                      int64_t batch, uint32_t *out, int threads) {
    if (rows <= 0 || cols <= 0 || batch <= 0)
        return PEC_OK;
    int16_t *lo = malloc((size_t)(batch * cols) * sizeof(int16_t));
    int16_t *hi = malloc((size_t)(batch * cols) * sizeof(int16_t));
    if (lo == NULL || hi == NULL) {
        free(lo);
        free(hi);
        return PEC_NO_MEMORY;
    }
    for (int64_t t = 0; t < batch * cols; t++) {
        uint32_t w = q[t], l = w & 0xffffu, h = w >> 16;
        if (l >= 0x8000u) /* lo goes negative: carry one into hi */
            h = (h + 1) & 0xffffu;
        lo[t] = (int16_t)(uint16_t)l;
        hi[t] = (int16_t)(uint16_t)h;
    }
    kernels k = pick_kernels();
    lwe_ctx c = {db, lo, hi, out, rows, cols, batch, k.block, k.one};
    int64_t steps = (rows + ROWS - 1) / ROWS;
    /* about 256 KiB of database per chunk: enough to amortise the hand-out, small enough
     * that the threads split even a small database evenly */
    int64_t grain = (256 * 1024) / (cols * ROWS) + 1;
    int status = pec_parallel_for(steps, grain, threads, 0, lwe_range, &c);
    free(lo);
    free(hi);
    return status;
}
