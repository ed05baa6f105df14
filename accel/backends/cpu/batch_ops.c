/* Elementwise batch kernels: mulmod, powmod, invmod, prodmod. */
#include <stdlib.h>

#include "ifma.h"
#include "montgomery.h"
#include "thread_pool.h"

const char *pec_gmp_version(void) { return gmp_version; }

int pec_simd_available(void) { return pec_ifma_usable(); }

int64_t pec_first_unreduced(const pec_modulus *m, const uint64_t *a, int64_t rows)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    for (int64_t i = 0; i < rows; i++)
        if (mpn_cmp((const mp_limb_t *)a + i * n, (const mp_limb_t *)m->mod, n) >= 0)
            return i;
    return -1;
}

/* ---- mulmod ---------------------------------------------------------------------------- */

typedef struct {
    const pec_modulus *m;
    const mp_limb_t *a, *b;
    int64_t b_step;
    mp_limb_t *out;
} mulmod_job;

static int mulmod_rows(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const mulmod_job *job = arg;
    const pec_modulus *m = job->m;
    const mp_size_t n = (mp_size_t)m->limbs;
    mp_limb_t *t = scratch + 2 * n;
    for (int64_t i = begin; i < end; i++) {
        const mp_limb_t *b = job->b + i * job->b_step * n;
        mp_limb_t *r = job->out + i * n;
        if (job->b_step) {
            /* One product and one division beat the two Montgomery products that a
             * conversion would need for a factor used only once. */
            mpn_mul_n(scratch, job->a + i * n, b, n);
            mpn_tdiv_qr(t, r, 0, scratch, 2 * n, (const mp_limb_t *)m->mod, n);
        } else {
            /* b was moved into Montgomery form once for the whole batch. */
            mont_mul(r, job->a + i * n, b, m, scratch);
        }
    }
    return PEC_OK;
}

int pec_mulmod(const pec_modulus *m, const uint64_t *a, const uint64_t *b, int64_t b_step,
               uint64_t *out, int64_t rows, int threads, int simd)
{
    if (simd && pec_ifma_worth(m, rows))
        return pec_ifma_mulmod(m, a, b, b_step, out, rows, threads);
    const mp_size_t n = (mp_size_t)m->limbs;
    mp_limb_t *b_mont = NULL;
    mulmod_job job = {m, (const mp_limb_t *)a, (const mp_limb_t *)b, b_step, (mp_limb_t *)out};
    if (!b_step) {
        b_mont = malloc(3 * n * sizeof(mp_limb_t));
        if (!b_mont)
            return PEC_NO_MEMORY;
        mont_in(b_mont, (const mp_limb_t *)b, m, b_mont + n);
        job.b = b_mont;
    }
    int rc = pec_parallel_for(rows, 16, threads, 4 * n + 1, mulmod_rows, &job);
    free(b_mont);
    return rc;
}

/* ---- powmod ---------------------------------------------------------------------------- */

/* Sliding-window width for an exponent of `bits` bits (GMP's thresholds). */
static int window_for(int64_t bits)
{
    static const int64_t limits[] = {7, 25, 81, 241, 673, 1793, 4609, 11521};
    int w = 1;
    while (w <= 8 && bits > limits[w - 1])
        w++;
    return w;
}

typedef struct {
    const pec_modulus *m;
    const mp_limb_t *base;
    const uint64_t *exp;
    int64_t exp_limbs, exp_step;
    mp_limb_t *out;
} powmod_job;

static inline int bit_at(const uint64_t *e, int64_t i)
{
    return (int)((e[i >> 6] >> (i & 63)) & 1);
}

/* acc = base^e in Montgomery form by left-to-right sliding windows; `odd` holds room for
 * 2^(w-1) odd powers plus one square. */
static void sliding_pow(mp_limb_t *acc, const mp_limb_t *base_mont, const uint64_t *e,
                        int64_t e_limbs, const pec_modulus *m, mp_limb_t *odd,
                        mp_limb_t *scratch)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    int64_t bits = exp_bit_length(e, e_limbs);
    if (bits == 0) {
        mont_copy(acc, (const mp_limb_t *)m->one, m);
        return;
    }
    int w = window_for(bits);
    int64_t count = (int64_t)1 << (w - 1);
    mont_copy(odd, base_mont, m);
    if (count > 1) {
        mp_limb_t *sq = odd + count * n;
        mont_sqr(sq, base_mont, m, scratch);
        for (int64_t k = 1; k < count; k++)
            mont_mul(odd + k * n, odd + (k - 1) * n, sq, m, scratch);
    }
    int first = 1;
    int64_t i = bits - 1;
    while (i >= 0) {
        if (!bit_at(e, i)) {
            mont_sqr(acc, acc, m, scratch);
            i--;
            continue;
        }
        int64_t j = i - w + 1 > 0 ? i - w + 1 : 0;
        while (!bit_at(e, j))
            j++;
        unsigned value = exp_bits_at(e, e_limbs, j, (int)(i - j + 1));
        const mp_limb_t *factor = odd + (int64_t)(value >> 1) * n;
        if (first) {
            mont_copy(acc, factor, m);
            first = 0;
        } else {
            for (int64_t s = j; s <= i; s++)
                mont_sqr(acc, acc, m, scratch);
            mont_mul(acc, acc, factor, m, scratch);
        }
        i = j - 1;
    }
}

static int powmod_rows(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const powmod_job *job = arg;
    const pec_modulus *m = job->m;
    const mp_size_t n = (mp_size_t)m->limbs;
    mp_limb_t *base_mont = scratch + 2 * n;
    mp_limb_t *acc = base_mont + n;
    mp_limb_t *odd = acc + n;
    for (int64_t i = begin; i < end; i++) {
        mont_in(base_mont, job->base + i * n, m, scratch);
        sliding_pow(acc, base_mont, job->exp + i * job->exp_step * job->exp_limbs,
                    job->exp_limbs, m, odd, scratch);
        mont_out(job->out + i * n, acc, m, scratch);
    }
    return PEC_OK;
}

int pec_powmod(const pec_modulus *m, const uint64_t *base, const uint64_t *exp,
               int64_t exp_limbs, int64_t exp_step, uint64_t *out, int64_t rows, int threads,
               int simd)
{
    if (simd && pec_ifma_worth(m, rows))
        return pec_ifma_powmod(m, base, exp, exp_limbs, exp_step, out, rows, threads);
    const mp_size_t n = (mp_size_t)m->limbs;
    int w = window_for(exp_limbs * 64);
    size_t scratch = (size_t)n * (4 + ((size_t)1 << (w - 1)) + 1);
    powmod_job job = {m, (const mp_limb_t *)base, exp, exp_limbs, exp_step, (mp_limb_t *)out};
    return pec_parallel_for(rows, 1, threads, scratch, powmod_rows, &job);
}

/* ---- invmod ---------------------------------------------------------------------------- */

typedef struct {
    const pec_modulus *m;
    const mp_limb_t *a;
    mp_limb_t *out;
    int64_t bad_index; /* smallest row without an inverse, or -1 */
} invmod_job;

static void note_bad_index(invmod_job *job, int64_t index)
{
    int64_t seen = __atomic_load_n(&job->bad_index, __ATOMIC_SEQ_CST);
    while ((seen < 0 || index < seen) &&
           !__atomic_compare_exchange_n(&job->bad_index, &seen, index, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
}

/* Montgomery's trick over one chunk: prefix products, one GMP inversion, then two products
 * per row on the way back. Plain mont_mul drifts by R^-1 per product; the drift cancels
 * exactly (see the invariant below), so no row is ever converted into Montgomery form. */
static int invmod_rows(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    invmod_job *job = arg;
    const pec_modulus *m = job->m;
    const mp_size_t n = (mp_size_t)m->limbs;
    const mp_limb_t *a = job->a;
    mp_limb_t *out = job->out;
    mp_limb_t *y = scratch + 2 * n;
    mp_limb_t *t = y + n;

    /* out[i] = c_i = (a_begin ... a_i) * R^-(i - begin) */
    mont_copy(out + begin * n, a + begin * n, m);
    for (int64_t i = begin + 1; i < end; i++)
        mont_mul(out + i * n, out + (i - 1) * n, a + i * n, m, scratch);

    mpz_t c, mod, inv;
    mpz_roinit_n(c, out + (end - 1) * n, n);
    mpz_roinit_n(mod, (const mp_limb_t *)m->mod, n);
    mpz_init(inv);
    if (!mpz_invert(inv, c, mod)) {
        mpz_clear(inv);
        mpz_t g, row;
        mpz_init(g);
        for (int64_t i = begin; i < end; i++) {
            mpz_roinit_n(row, a + i * n, n);
            mpz_gcd(g, row, mod);
            if (mpz_cmp_ui(g, 1) != 0) {
                note_bad_index(job, i);
                break;
            }
        }
        mpz_clear(g);
        return PEC_NOT_INVERTIBLE;
    }
    mpn_zero(y, n);
    mpn_copyi(y, mpz_limbs_read(inv), (mp_size_t)mpz_size(inv));
    mpz_clear(inv);

    /* Invariant: y = (a_begin ... a_i)^-1 * R^(i - begin). */
    for (int64_t i = end - 1; i > begin; i--) {
        mont_mul(t, y, out + (i - 1) * n, m, scratch);
        mont_mul(y, y, a + i * n, m, scratch);
        mpn_copyi(out + i * n, t, n);
    }
    mpn_copyi(out + begin * n, y, n);
    return PEC_OK;
}

int pec_invmod(const pec_modulus *m, const uint64_t *a, uint64_t *out, int64_t rows,
               int64_t *bad_index, int threads, int simd)
{
    if (simd && pec_ifma_worth(m, rows) && rows >= 64)
        return pec_ifma_invmod(m, a, out, rows, bad_index, threads);
    const mp_size_t n = (mp_size_t)m->limbs;
    invmod_job job = {m, (const mp_limb_t *)a, (mp_limb_t *)out, -1};
    int t = threads < 1 ? 1 : threads;
    /* One inversion costs some tens of products: a few chunks per thread amortise it. */
    int64_t grain = (rows + 4 * t - 1) / (4 * t);
    if (grain < 64)
        grain = 64;
    int rc = pec_parallel_for(rows, grain, threads, 4 * n, invmod_rows, &job);
    *bad_index = job.bad_index;
    return rc;
}

/* ---- prodmod --------------------------------------------------------------------------- */

/* r = base^e in Montgomery form for a small e; base is in Montgomery form. */
static void mont_pow_u64(mp_limb_t *r, const mp_limb_t *base, uint64_t e, const pec_modulus *m,
                         mp_limb_t *scratch)
{
    mont_copy(r, (const mp_limb_t *)m->one, m);
    for (int bit = 63; bit >= 0; bit--) {
        mont_sqr(r, r, m, scratch);
        if ((e >> bit) & 1)
            mont_mul(r, r, base, m, scratch);
    }
}

/* r = product of `count` rows spaced `stride` limbs apart, in normal form. Each mont_mul
 * leaves an R^-1; one final product by R^count (the Montgomery form of R^(count-1)) removes
 * all of them at once. Needs 5n limbs of scratch. */
static void chain_product(mp_limb_t *r, const mp_limb_t *rows, int64_t count, int64_t stride,
                          const pec_modulus *m, mp_limb_t *scratch)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    mp_limb_t *acc = scratch + 2 * n;
    mp_limb_t *fix = acc + n;
    mp_limb_t *tmp = fix + n;
    mont_copy(acc, rows, m);
    for (int64_t k = 1; k < count; k++)
        mont_mul(acc, acc, rows + k * stride, m, scratch);
    /* r2 is R in Montgomery form, so this is R^(count-1) in Montgomery form. */
    mont_pow_u64(fix, (const mp_limb_t *)m->r2, (uint64_t)(count - 1), m, scratch);
    mont_mul(tmp, acc, fix, m, scratch);
    mont_copy(r, tmp, m);
}

typedef struct {
    const pec_modulus *m;
    const mp_limb_t *a;
    int64_t K, N, segments;
    mp_limb_t *partial; /* segments x N rows */
    mp_limb_t *out;
} prodmod_job;

static int prodmod_segments(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const prodmod_job *job = arg;
    const mp_size_t n = (mp_size_t)job->m->limbs;
    for (int64_t task = begin; task < end; task++) {
        int64_t s = task / job->N, j = task % job->N;
        int64_t k0 = job->K * s / job->segments, k1 = job->K * (s + 1) / job->segments;
        chain_product(job->partial + (s * job->N + j) * n, job->a + (k0 * job->N + j) * n,
                      k1 - k0, job->N * n, job->m, scratch);
    }
    return PEC_OK;
}

static int prodmod_columns(void *arg, int64_t begin, int64_t end, mp_limb_t *scratch)
{
    const prodmod_job *job = arg;
    const mp_size_t n = (mp_size_t)job->m->limbs;
    for (int64_t j = begin; j < end; j++)
        chain_product(job->out + j * n, job->partial + j * n, job->segments, job->N * n, job->m,
                      scratch);
    return PEC_OK;
}

int pec_prodmod(const pec_modulus *m, const uint64_t *a, int64_t K, int64_t N, uint64_t *out,
                int threads, int simd)
{
    const mp_size_t n = (mp_size_t)m->limbs;
    int t = threads < 1 ? 1 : threads;
    /* Few columns (a sum of many ciphertexts into one): split each column into segments so
     * every thread (and every SIMD lane) has work, then multiply the segment products. */
    int64_t want = simd && pec_ifma_worth(m, K * N) ? 16 * t : 4 * t;
    int64_t segments = N >= want ? 1 : (want + N - 1) / N;
    if (segments > K)
        segments = K;
    if (segments < 1)
        segments = 1;
    mp_limb_t *partial = malloc((size_t)(segments * N * n) * sizeof(mp_limb_t));
    if (!partial)
        return PEC_NO_MEMORY;
    prodmod_job job = {m, (const mp_limb_t *)a, K, N, segments, partial, (mp_limb_t *)out};
    int rc = simd && pec_ifma_worth(m, segments * N)
                 ? pec_ifma_segment_products(m, a, K, N, segments, partial, threads)
                 : pec_parallel_for(segments * N, 1, threads, 5 * n, prodmod_segments, &job);
    if (rc == PEC_OK)
        rc = pec_parallel_for(N, 1, threads, 5 * n, prodmod_columns, &job);
    free(partial);
    return rc;
}
