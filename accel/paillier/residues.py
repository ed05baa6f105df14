"""The two factors of a ciphertext as limb batches: ``g**m = 1 + m*n`` and the randomness.

``g**m`` needs no exponentiation because ``g = n + 1``: it is a product of a short plaintext
by the constant ``n``, computed here on whole batches. The randomness goes to the backend.
"""

from __future__ import annotations

import os

import numpy as np

from accel.backends import Backend
from accel.backends.base import int_to_limbs, limbs_for
from accel.paillier import limbs as lm
from accel.paillier.encoding import Encoded
from accel.paillier.keys import PrivateKey, PublicKey

_CHUNK = 1 << 14


def g_power(pk: PublicKey, enc: Encoded) -> np.ndarray:
    """``g**m mod n^2`` for each mantissa ``m`` of ``enc`` as ``(N, L)`` limbs.

    A negative ``m`` stands for ``n - |m|`` and ``g**(n - |m|) = 1 - |m|*n = n^2 + 1 - |m|*n``.
    """
    enc.check_fits(pk.max_int)
    count = enc.magnitude.shape[0]
    out = np.empty((count, pk.limbs), dtype=np.uint64)
    width = 2 * pk.limbs + 1
    n_square = lm.const_digits(pk.nsquare, width)
    for start in range(0, count, _CHUNK):  # the digit form is 2x the limbs: bound the memory
        stop = min(count, start + _CHUNK)
        digits = lm.mul_const(enc.magnitude[start:stop], pk.n, width)
        neg = enc.negative[start:stop]
        if neg.any():
            digits[:, neg] = n_square - digits[:, neg]
        digits[0] += 1
        lm.normalize(digits)
        out[start:stop] = lm.from_digits(digits, pk.limbs)
    return out


def random_limbs(count: int, bits: int) -> np.ndarray:
    """``count`` uniform random values below ``2**bits`` as ``(count, E)`` limbs."""
    width = limbs_for((1 << bits) - 1)
    out = np.frombuffer(os.urandom(count * width * 8), dtype="<u8").reshape(count, width).copy()
    top = bits - 64 * (width - 1)
    if top < 64:
        out[:, -1] &= np.uint64((1 << top) - 1)
    return out


def random_units(pk: PublicKey, count: int) -> np.ndarray:
    """``count`` uniform values in ``[1, n)`` (rejection sampling), as ``(count, L)`` limbs.

    A value sharing a factor with n would factor n, which happens with negligible probability.
    """
    width = limbs_for(pk.n)
    rows: list[np.ndarray] = []
    missing = count
    while missing:
        cand = random_limbs(missing + missing // 4 + 8, pk.n.bit_length())
        ok = lm.less_than(cand, pk.n) & ~lm.is_zero(cand)
        take = cand[ok][:missing]
        rows.append(take)
        missing -= take.shape[0]
    units = np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.uint64)
    return np.pad(units, ((0, 0), (0, pk.limbs - width)))


def randomness(
    pk: PublicKey,
    count: int,
    backend: Backend,
    *,
    full_randomness: bool = False,
    private_key: PrivateKey | None = None,
) -> np.ndarray:
    """``count`` fresh obfuscators (n-th residues modulo n^2) as ``(count, L)`` limbs."""
    if full_randomness:
        return backend.powmod(random_units(pk, count), pk.n_limbs, pk.nsquare)
    x = random_limbs(count, pk.exp_bits)
    if private_key is None:
        return backend.powmod_fixed(pk.randomness_table(backend), x)
    # Same exponent, two half-size moduli, recombined with the CRT idempotents mod n^2.
    table_p, table_q = private_key.randomness_tables(backend)
    _, _, e_p, e_q = private_key.crt_encrypt_constants
    r_p = _widen(backend.powmod_fixed(table_p, x), pk.limbs)
    r_q = _widen(backend.powmod_fixed(table_q, x), pk.limbs)
    e_p_row = int_to_limbs(e_p, pk.limbs)[None, :]
    e_q_row = int_to_limbs(e_q, pk.limbs)[None, :]
    return lm.add_mod(backend.mulmod(r_p, e_p_row, pk.nsquare),
                      backend.mulmod(r_q, e_q_row, pk.nsquare), pk.nsquare)


def _widen(a: np.ndarray, limbs: int) -> np.ndarray:
    if a.shape[1] == limbs:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(np.pad(a, ((0, 0), (0, limbs - a.shape[1]))))
