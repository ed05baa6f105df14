/* Public interface of the ECDH-PSI engine (see ecdh_batch.c); cffi parses this file. */
#include <stddef.h>
#include <stdint.h>

/* sodium_init(); 0 on success */
int pec_psi_init(void);
/* Use crypto_mb's mbx_x25519_mb8 at fn (NULL: libsodium only). 1 when in use after a
 * self-test against libsodium; -1 when the CPU lacks AVX-512 IFMA, -2 when the test failed. */
int pec_psi_set_mb8(void *fn);
/* The X25519 implementation in use. */
const char *pec_psi_backend(void);
/* out[32*i..] = SHA-256(domain || id_i) with bit 255 cleared; ids are
 * data[offsets[i]..offsets[i+1]) for i < n */
void pec_psi_hash_to_point(const uint8_t *data, const int64_t *offsets, size_t n,
                           const uint8_t *domain, size_t domain_len, uint8_t *out,
                           int threads);
/* out[32*i..] = X25519(scalar, points[32*i..]); returns -1, or the first index refused as
 * low order (its output is zeroed) */
int64_t pec_psi_mul(const uint8_t *points, size_t n, const uint8_t *scalar, uint8_t *out,
                    int threads);

/* ---- ristretto255 (unbalanced mode: an OPRF, needs scalar inversion in a prime-order group).
 * Points are 32-byte canonical encodings; scalars 32 bytes, little endian, below L. */
/* out[32*i..] = ristretto255_from_hash(SHA-512(domain || id_i)) */
void pec_psi_r255_hash(const uint8_t *data, const int64_t *offsets, size_t n,
                       const uint8_t *domain, size_t domain_len, uint8_t *out, int threads);
/* out[32*i..] = scalar * points[32*i..]; returns -1, or the first index refused (not a valid
 * encoding, the identity, or an identity product; its output is zeroed) */
int64_t pec_psi_r255_mul(const uint8_t *points, size_t n, const uint8_t *scalar, uint8_t *out,
                         int threads);
/* as pec_psi_r255_mul with scalars[32*i..] for point i */
int64_t pec_psi_r255_mul_each(const uint8_t *points, size_t n, const uint8_t *scalars,
                              uint8_t *out, int threads);
/* -1, or the first index that is not a valid non-identity encoding */
int64_t pec_psi_r255_valid(const uint8_t *points, size_t n, int threads);
/* n fresh nonzero random scalars r[32*i..] and their inverses mod L */
void pec_psi_r255_blinds(size_t n, uint8_t *r, uint8_t *r_inv, int threads);
/* out[width*i..] = first width bytes of SHA-256(domain || points[32*i..] || id_i) */
void pec_psi_r255_finish(const uint8_t *data, const int64_t *offsets, size_t n,
                         const uint8_t *domain, size_t domain_len, const uint8_t *points,
                         size_t width, uint8_t *out, int threads);
/* out = scalar * the group's base point (a key's public value; zero for a zero scalar) */
void pec_psi_r255_base(const uint8_t *scalar, uint8_t *out);
