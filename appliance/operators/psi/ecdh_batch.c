/* Batched X25519 for ECDH-PSI over libsodium, split across pthreads.
 *
 * Called through cffi in API mode (module appliance.operators.psi._ecdh), so the GIL is
 * released for the whole call; each thread works on a contiguous slice of the batch.  Buffers
 * are the caller's: ids as one data buffer plus int64 offsets (an Arrow large_binary array's
 * layout), points as N*32 bytes.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ecdh_batch.h"

/* Below this many items per thread the thread start-up costs more than it saves. */
#define MIN_PER_THREAD 256

/* Intel's multi-buffer X25519 (ipp-crypto's crypto_mb, AVX-512 IFMA): eight products per
 * call, about 8x libsodium's speed per core.  Set by pec_psi_set_mb8 after a self-test; NULL
 * means libsodium only. */
typedef uint32_t (*mb8_fn)(uint8_t *const out[8], const uint8_t *const k[8],
                           const uint8_t *const p[8]);
static mb8_fn mb8;

typedef struct {
    const uint8_t *data;
    const int64_t *offsets;
    const uint8_t *points;
    const uint8_t *domain;
    size_t domain_len;
    const uint8_t *scalar;
    uint8_t *out;
    size_t begin, end;
    int64_t first_bad; /* mul: first index whose product was refused (low-order input) */
    /* ristretto255 (unbalanced mode) */
    const uint8_t *scalars; /* mul_each: one 32-byte scalar per point */
    uint8_t *out2;          /* blinds: the inverses */
    size_t width;           /* finish: bytes kept of each output */
} job_t;

typedef void *(*worker_fn)(void *);

static void *hash_worker(void *arg) {
    job_t *j = arg;
    crypto_hash_sha256_state base, st;
    /* the domain prefix is the same for every id: hash it once and copy the state */
    crypto_hash_sha256_init(&base);
    crypto_hash_sha256_update(&base, j->domain, j->domain_len);
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++) {
        uint8_t *u = j->out + 32 * i;
        memcpy(&st, &base, sizeof st);
        crypto_hash_sha256_update(&st, j->data + j->offsets[i],
                                  (unsigned long long)(j->offsets[i + 1] - j->offsets[i]));
        crypto_hash_sha256_final(&st, u);
        /* RFC 7748 decoders ignore bit 255; clearing it makes the encoding canonical on the
         * wire, so equal ids give byte-equal points at every party */
        u[31] &= 0x7f;
    }
    return NULL;
}

/* One product through libsodium; a refused input is zeroed and remembered. */
static void mul_one(job_t *j, size_t i) {
    /* libsodium refuses (-1) a blacklisted small-order input and an all-zero result:
     * either way the input had no component in a large prime-order subgroup */
    if (crypto_scalarmult(j->out + 32 * i, j->scalar, j->points + 32 * i) != 0) {
        memset(j->out + 32 * i, 0, 32);
        if (j->first_bad < 0 || (int64_t)i < j->first_bad) j->first_bad = (int64_t)i;
    }
}

static void *mul_worker(void *arg) {
    job_t *j = arg;
    size_t i = j->begin;
    j->first_bad = -1;
    if (mb8) {
        const uint8_t *ks[8];
        for (int l = 0; l < 8; l++) ks[l] = j->scalar;
        for (; i + 8 <= j->end; i += 8) {
            /* bit 255 cleared as RFC 7748 (and libsodium) ignore it, whatever the peer sent */
            uint8_t in[8][32];
            uint8_t *outs[8];
            const uint8_t *ins[8];
            for (int l = 0; l < 8; l++) {
                memcpy(in[l], j->points + 32 * (i + l), 32);
                in[l][31] &= 0x7f;
                ins[l] = in[l];
                outs[l] = j->out + 32 * (i + l);
            }
            uint32_t st = mb8(outs, ks, ins);
            /* a lane in error (low order, or anything else) is decided by libsodium, so the
             * refusal rule is the same on every CPU */
            for (int l = 0; l < 8; l++)
                if ((st >> (4 * l)) & 0xF) mul_one(j, i + l);
        }
    }
    for (; i < j->end; i++) mul_one(j, i);
    return NULL;
}

static void *mul_worker_sodium(void *arg) {
    job_t *j = arg;
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++) {
        mul_one(j, i);
    }
    return NULL;
}

/* Runs fn over [0, n) in up to `threads` slices and returns the smallest first_bad, or -1.
 * A thread that cannot be started has its slice done on the calling thread. */
static int64_t run_split(job_t proto, size_t n, int threads, worker_fn fn) {
    size_t most = n / MIN_PER_THREAD;
    if (threads < 1) threads = 1;
    if ((size_t)threads > most) threads = most < 1 ? 1 : (int)most;
    job_t *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    int *started = calloc((size_t)threads, sizeof *started);
    if (!jobs || !tids || !started) {
        free(jobs); free(tids); free(started);
        proto.begin = 0; proto.end = n;
        fn(&proto);
        return proto.first_bad;
    }
    size_t per = n / (size_t)threads, extra = n % (size_t)threads, at = 0;
    for (int t = 0; t < threads; t++) {
        jobs[t] = proto;
        jobs[t].begin = at;
        at += per + ((size_t)t < extra ? 1 : 0);
        jobs[t].end = at;
        jobs[t].first_bad = -1;
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, fn, &jobs[t]) == 0;
    fn(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        else fn(&jobs[t]);
    }
    int64_t bad = -1;
    for (int t = 0; t < threads; t++)
        if (jobs[t].first_bad >= 0 && (bad < 0 || jobs[t].first_bad < bad))
            bad = jobs[t].first_bad;
    free(jobs); free(tids); free(started);
    return bad;
}

int pec_psi_init(void) {
    return sodium_init() < 0 ? -1 : 0;
}

int pec_psi_set_mb8(void *fn) {
    mb8 = NULL;
    if (fn == NULL) return 0;
    if (!__builtin_cpu_supports("avx512ifma")) return -1;
    /* self-test against libsodium on random points, the edge encodings a peer may send
     * (bit 255 set, u >= p) and a low-order point, before trusting it with a job */
    enum { T = 64 };
    uint8_t pts[T * 32], want[T * 32], got[T * 32], k[32];
    randombytes_buf(pts, sizeof pts);
    randombytes_buf(k, sizeof k);
    memset(pts, 0xff, 32);                      /* 2^256 - 1: bit 255 set and u >= p */
    memset(pts + 32, 0xff, 32); pts[32] = 0xef; pts[63] = 0x7f; /* u = p + 2 */
    memset(pts + 64, 0, 32);                    /* u = 0: low order */
    job_t j;
    memset(&j, 0, sizeof j);
    j.points = pts; j.scalar = k; j.begin = 0; j.end = T;
    j.out = want;
    mul_worker_sodium(&j);
    int64_t bad_want = j.first_bad;
    mb8 = (mb8_fn)fn;
    j.out = got;
    mul_worker(&j);
    if (j.first_bad != bad_want || memcmp(want, got, sizeof want) != 0) {
        mb8 = NULL;
        return -2;
    }
    return 1;
}

const char *pec_psi_backend(void) {
    return mb8 ? "crypto_mb-avx512ifma" : "libsodium";
}

void pec_psi_hash_to_point(const uint8_t *data, const int64_t *offsets, size_t n,
                           const uint8_t *domain, size_t domain_len, uint8_t *out,
                           int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.data = data; j.offsets = offsets; j.domain = domain; j.domain_len = domain_len;
    j.out = out;
    run_split(j, n, threads, hash_worker);
}

int64_t pec_psi_mul(const uint8_t *points, size_t n, const uint8_t *scalar, uint8_t *out,
                    int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.points = points; j.scalar = scalar; j.out = out;
    return run_split(j, n, threads, mul_worker);
}

/* ---- ristretto255, for the unbalanced (OPRF) mode -------------------------------------------
 *
 * A prime-order group, so a blinding scalar r can be undone with r^-1 mod L; X25519's clamped
 * scalars have no such inverse on the whole curve.  The same thread split as above. */

static void *r255_hash_worker(void *arg) {
    job_t *j = arg;
    crypto_hash_sha512_state base, st;
    uint8_t h[crypto_core_ristretto255_HASHBYTES];
    crypto_hash_sha512_init(&base);
    crypto_hash_sha512_update(&base, j->domain, j->domain_len);
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++) {
        memcpy(&st, &base, sizeof st);
        crypto_hash_sha512_update(&st, j->data + j->offsets[i],
                                  (unsigned long long)(j->offsets[i + 1] - j->offsets[i]));
        crypto_hash_sha512_final(&st, h);
        /* two Elligator maps of the 64 bytes, added: uniform in the group, unknown log */
        crypto_core_ristretto255_from_hash(j->out + 32 * i, h);
    }
    return NULL;
}

/* A point refused: not a canonical ristretto255 encoding, the identity, or a product that is
 * the identity (only a zero scalar or the identity gives that). */
static void r255_bad(job_t *j, size_t i) {
    memset(j->out + 32 * i, 0, 32);
    if (j->first_bad < 0 || (int64_t)i < j->first_bad) j->first_bad = (int64_t)i;
}

static void *r255_mul_worker(void *arg) {
    job_t *j = arg;
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++) {
        const uint8_t *p = j->points + 32 * i;
        const uint8_t *k = j->scalars ? j->scalars + 32 * i : j->scalar;
        /* refused: a non-canonical encoding (is_valid_point), the identity (which
         * is_valid_point accepts; no honest party sends it) and an identity product
         * (scalarmult's -1); checked explicitly so the rule does not hang on its internals */
        if (!crypto_core_ristretto255_is_valid_point(p) || sodium_is_zero(p, 32) ||
            crypto_scalarmult_ristretto255(j->out + 32 * i, k, p) != 0)
            r255_bad(j, i);
    }
    return NULL;
}

static void *r255_valid_worker(void *arg) {
    job_t *j = arg;
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++)
        /* libsodium takes the identity as a valid encoding; no honest query is one */
        if (!crypto_core_ristretto255_is_valid_point(j->points + 32 * i) ||
            sodium_is_zero(j->points + 32 * i, 32)) {
            j->first_bad = (int64_t)i;
            return NULL;
        }
    return NULL;
}

static void *r255_blinds_worker(void *arg) {
    job_t *j = arg;
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++) {
        /* scalar_random never returns zero, so the inverse exists */
        do {
            crypto_core_ristretto255_scalar_random(j->out + 32 * i);
        } while (crypto_core_ristretto255_scalar_invert(j->out2 + 32 * i, j->out + 32 * i) != 0);
    }
    return NULL;
}

static void *r255_finish_worker(void *arg) {
    job_t *j = arg;
    crypto_hash_sha256_state base, st;
    uint8_t h[32];
    crypto_hash_sha256_init(&base);
    crypto_hash_sha256_update(&base, j->domain, j->domain_len);
    j->first_bad = -1;
    for (size_t i = j->begin; i < j->end; i++) {
        memcpy(&st, &base, sizeof st);
        /* the point first: it has a fixed length, so (point, id) splits one way only */
        crypto_hash_sha256_update(&st, j->points + 32 * i, 32);
        crypto_hash_sha256_update(&st, j->data + j->offsets[i],
                                  (unsigned long long)(j->offsets[i + 1] - j->offsets[i]));
        crypto_hash_sha256_final(&st, h);
        memcpy(j->out + j->width * i, h, j->width);
    }
    return NULL;
}

void pec_psi_r255_hash(const uint8_t *data, const int64_t *offsets, size_t n,
                       const uint8_t *domain, size_t domain_len, uint8_t *out, int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.data = data; j.offsets = offsets; j.domain = domain; j.domain_len = domain_len;
    j.out = out;
    run_split(j, n, threads, r255_hash_worker);
}

int64_t pec_psi_r255_mul(const uint8_t *points, size_t n, const uint8_t *scalar, uint8_t *out,
                         int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.points = points; j.scalar = scalar; j.out = out;
    return run_split(j, n, threads, r255_mul_worker);
}

int64_t pec_psi_r255_mul_each(const uint8_t *points, size_t n, const uint8_t *scalars,
                              uint8_t *out, int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.points = points; j.scalars = scalars; j.out = out;
    return run_split(j, n, threads, r255_mul_worker);
}

int64_t pec_psi_r255_valid(const uint8_t *points, size_t n, int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.points = points;
    return run_split(j, n, threads, r255_valid_worker);
}

void pec_psi_r255_blinds(size_t n, uint8_t *r, uint8_t *r_inv, int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.out = r; j.out2 = r_inv;
    run_split(j, n, threads, r255_blinds_worker);
}

void pec_psi_r255_finish(const uint8_t *data, const int64_t *offsets, size_t n,
                         const uint8_t *domain, size_t domain_len, const uint8_t *points,
                         size_t width, uint8_t *out, int threads) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.data = data; j.offsets = offsets; j.domain = domain; j.domain_len = domain_len;
    j.points = points; j.width = width; j.out = out;
    run_split(j, n, threads, r255_finish_worker);
}

void pec_psi_r255_base(const uint8_t *scalar, uint8_t *out) {
    if (crypto_scalarmult_ristretto255_base(out, scalar) != 0) memset(out, 0, 32);
}
