"""Encryption and decryption of whole arrays.

Encryption: ``c = g**m * h_s**x mod n^2`` with ``g**m`` built in NumPy (residues.g_power) and
the randomness on the backend; the key holder computes the randomness modulo p^2 and q^2.

Decryption: ``c**(p-1) mod p^2`` and ``c**(q-1) mod q^2`` as two batched powmods with a common
exponent on the backend, then L, h_p / h_q and the CRT recombination of python-paillier. The
reduction of ``c`` modulo p^2 and the recombination are linear in the size of n while each
powmod is cubic; they run per element on GMP integers (gmpy2), which keeps them to a few per
cent of a 2048-bit decryption and needs no extra backend operation.
"""

from __future__ import annotations

import numpy as np
from gmpy2 import mpz

from accel.backends import Backend, resolve
from accel.backends.base import limbs_for
from accel.paillier.array import EncryptedArray
from accel.paillier.encoding import decode, encode
from accel.paillier.keys import PrivateKey, PublicKey
from accel.paillier.residues import g_power, randomness


def encrypt(
    pk: PublicKey,
    values: object,
    *,
    backend: str | Backend | None = None,
    full_randomness: bool = False,
    precision: int = 53,
    private_key: PrivateKey | None = None,
) -> EncryptedArray:
    enc = encode(values, precision)
    count = enc.magnitude.shape[0]
    gm = g_power(pk, enc)
    if count:
        be = resolve(backend, op="encrypt", size=count)
        noise = randomness(pk, count, be, full_randomness=full_randomness,
                           private_key=private_key)
        gm = be.mulmod(gm, noise, pk.nsquare)
    return EncryptedArray(pk, gm.reshape((*enc.shape, pk.limbs)), enc.scale, enc.dtype,
                          backend=backend, obfuscated=True, bound=enc.peak)


def decrypt(sk: PrivateKey, array: EncryptedArray, *, backend: str | Backend | None = None
            ) -> np.ndarray:
    mantissas = decrypt_mantissas(sk, array, backend=backend)
    return decode(mantissas, array.scale, array.dtype.kind == "f", array.shape)


def decrypt_mantissas(sk: PrivateKey, array: EncryptedArray, *,
                      backend: str | Backend | None = None) -> list[int]:
    """The signed fixed-point mantissas of ``array``, exactly (``decrypt`` divides them by
    ``2**scale``); what a key holder returns for a masked array (accel.paillier.masking)."""
    if not isinstance(array, EncryptedArray):
        raise TypeError("decrypt expects an EncryptedArray")
    pk = sk.public_key
    if array.public_key != pk:
        raise ValueError("the array was encrypted under a different public key")
    count = array.size
    if not count:
        return []
    be = resolve(backend if backend is not None else array.backend, op="decrypt", size=count)
    cts = _mpz_rows(array.data.reshape(-1, pk.limbs))
    exp_p, exp_q = sk.decrypt_exponents
    p, q = mpz(sk.p), mpz(sk.q)
    xp = be.powmod(_mpz_to_limbs([c % sk.psquare for c in cts], limbs_for(sk.psquare)),
                   exp_p, sk.psquare)
    xq = be.powmod(_mpz_to_limbs([c % sk.qsquare for c in cts], limbs_for(sk.qsquare)),
                   exp_q, sk.qsquare)
    n, max_int, bound = pk.n, pk.max_int, array.bound
    hp, hq, p_inv = mpz(sk.hp), mpz(sk.hq), mpz(sk.p_inverse)
    mantissas = []
    for i, (a, b) in enumerate(zip(_mpz_rows(xp), _mpz_rows(xq), strict=True)):
        mp = (a - 1) // p * hp % p
        mq = (b - 1) // q * hq % q
        m = int(mp + (mq - mp) * p_inv % q * p)
        if m > max_int:
            if m < n - max_int:
                raise OverflowError(
                    f"element {i} overflowed: its value left the plaintext band (n/3) that "
                    "Paillier can represent, so it cannot be decrypted correctly"
                )
            m -= n
        if abs(m) > bound:
            # the bound is sound for every array this library computes, so a value past it
            # is a wrapped value that happened to land in the band, or altered ciphertexts
            # or metadata: either way the number would be wrong
            raise OverflowError(
                f"element {i} decrypted outside the array's magnitude bound "
                f"({abs(m).bit_length()} bits, bound {bound.bit_length()} bits): the "
                "ciphertexts or their scale/bound were altered or computed elsewhere without "
                "bounds, so the value cannot be trusted"
            )
        mantissas.append(m)
    return mantissas


def _mpz_rows(limbs: np.ndarray) -> list[mpz]:
    blob = memoryview(np.ascontiguousarray(limbs, dtype="<u8")).cast("B")
    width = 8 * limbs.shape[1]
    return [mpz.from_bytes(blob[i : i + width], "little") for i in range(0, len(blob), width)]


def _mpz_to_limbs(values: list[mpz], limbs: int) -> np.ndarray:
    width = 8 * limbs
    blob = b"".join(v.to_bytes(width, "little") for v in values)
    return np.frombuffer(blob, dtype="<u8").reshape(len(values), limbs).astype(np.uint64)
