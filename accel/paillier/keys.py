"""Paillier keys (g = n + 1), key generation and the per-backend tables that keys cache.

Encryption randomness follows Damgard, Jurik and Nielsen ("A Generalization of Paillier's
Public-Key System with Applications to Electronic Voting", IJIS 2010): the public key carries
``h_s = (-y**2)**n mod n**2`` and a ciphertext is ``(1 + m*n) * h_s**x mod n**2`` for a random
short exponent ``x``. With ``h_s`` fixed, ``h_s**x`` runs on a precomputed fixed-base table,
several times faster than the classic ``r**n`` with ``r`` uniform in Z*_n.

Security choice: DJN argue semantic security for exponents of about half the size of n, under
the decisional composite residuosity assumption plus an assumption that such short exponents
are as good as full ones (the short-exponent argument known from discrete logarithms, e.g.
Koshiba and Kurosawa, PKC 2004). We draw ``x`` with ``n.bit_length() // 2 + 128`` bits: the
128 extra bits are a margin over that minimum, at 12 % more work for 2048-bit keys.
``encrypt(..., full_randomness=True)`` gives the classic scheme when an application wants no
such assumption.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from accel.backends import Backend, FixedBaseTable
from accel.backends.base import int_to_limbs, limbs_for
from accel.paillier.primes import random_prime

if TYPE_CHECKING:
    from accel.paillier.array import EncryptedArray

RANDOMNESS_MARGIN_BITS = 128
MIN_KEY_BITS = 128  # below this nothing is secure; small keys are for tests only


class _TableCache:
    """Fixed-base tables per backend, built once on first use.

    Keyed by the backend's name: the router hands out a fresh wrapper per call, and a table
    that lands on another backend after a fallback is rebuilt there by the router itself.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[str, int, int], FixedBaseTable] = {}
        self._lock = threading.Lock()

    def get(self, backend: Backend, base: int, modulus: int, exp_bits: int) -> FixedBaseTable:
        key = (backend.name, modulus, exp_bits)
        with self._lock:
            if key not in self._tables:
                self._tables[key] = backend.fixed_base_table(base, modulus, exp_bits)
            return self._tables[key]


def derive_h_s(n: int) -> int:
    """The DJN base for an imported key, derived from ``n`` alone.

    ``h_s`` is public, so deriving it from a hash of ``n`` reveals nothing: what DJN needs is an
    n-th residue of unknown provenance to the adversary, and a hash (modelled as a random
    oracle) gives ``y`` that nobody chose; knowing ``y`` does not help to find ``x``. Every
    holder of ``n`` derives the same base, so imported keys need no extra data.
    """
    size = (n.bit_length() + 7) // 8 + 16
    counter = 0
    while True:
        seed = b"pec-paillier-djn-base" + counter.to_bytes(4, "big") + n.to_bytes(size, "big")
        y = int.from_bytes(hashlib.shake_256(seed).digest(size), "big") % n
        if y > 1 and math.gcd(y, n) == 1:
            return pow((-y * y) % n, n, n * n)
        counter += 1


class PublicKey:
    """A Paillier public key ``n`` with ``g = n + 1``; ``pk.n`` is a Python int.

    ``h_s`` (the DJN base) is derived from ``n`` unless given; pass one only from a trusted
    source such as ``keygen``: a ``PrivateKey`` checks it, a lone public key cannot.
    """

    def __init__(self, n: int, *, h_s: int | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise TypeError("n must be an int")
        n = int(n)
        if n.bit_length() < MIN_KEY_BITS or n % 2 == 0:
            raise ValueError(f"n must be an odd modulus of at least {MIN_KEY_BITS} bits")
        self.n = n
        self.g = n + 1
        self.nsquare = n * n
        self.max_int = n // 3 - 1  # the plaintext band python-paillier uses
        self.limbs = limbs_for(self.nsquare)
        self.exp_bits = n.bit_length() // 2 + RANDOMNESS_MARGIN_BITS
        if h_s is not None and not 1 < h_s < self.nsquare:
            raise ValueError("h_s must be a residue modulo n**2")
        self._h_s = h_s
        self._tables = _TableCache()

    @cached_property
    def h_s(self) -> int:
        return self._h_s if self._h_s is not None else derive_h_s(self.n)

    @cached_property
    def fingerprint(self) -> bytes:
        """SHA-256 of ``n``: names the key in serialized arrays."""
        return hashlib.sha256(self.n.to_bytes(self.limbs * 4, "big")).digest()

    @cached_property
    def n_limbs(self) -> np.ndarray:
        """``n`` as a ``(1, E)`` exponent row, for ``r**n``."""
        return int_to_limbs(self.n, limbs_for(self.n))[None, :]

    def randomness_table(self, backend: Backend) -> FixedBaseTable:
        return self._tables.get(backend, self.h_s, self.nsquare, self.exp_bits)

    def encrypt(
        self,
        values: object,
        *,
        backend: str | Backend | None = None,
        full_randomness: bool = False,
        precision: int = 53,
    ) -> EncryptedArray:
        """Encrypt an array (or anything ``np.asarray`` takes) into an ``EncryptedArray``.

        Integers are exact (scale 0); floats keep ``precision`` bits of their largest
        magnitude. ``backend`` pins the array (and arrays computed from it) to a backend.
        """
        from accel.paillier.cipher import encrypt

        return encrypt(self, values, backend=backend, full_randomness=full_randomness,
                       precision=precision)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.n == self.n

    # Immutable: copies share the object and its tables; pickles carry n and h_s only.
    def __copy__(self) -> PublicKey:
        return self

    def __deepcopy__(self, memo: dict) -> PublicKey:
        return self

    def __reduce__(self) -> tuple:
        return _public_key, (self.n, self._h_s)

    def __hash__(self) -> int:
        return hash(self.n)

    def __repr__(self) -> str:
        return f"PublicKey({self.n.bit_length()} bits, {self.fingerprint[:6].hex()})"


class PrivateKey:
    """The factorisation of ``n``; decrypts, and encrypts faster than the public key (CRT)."""

    def __init__(self, public_key: PublicKey, p: int, q: int) -> None:
        if not isinstance(public_key, PublicKey):
            raise TypeError("public_key must be a PublicKey")
        p, q = int(p), int(q)
        if p * q != public_key.n:
            raise ValueError("p * q does not equal the public key's n")
        if p == q or p < 3 or q < 3:
            raise ValueError("p and q must be two distinct odd primes")
        self.public_key = public_key
        self.p, self.q = p, q
        self.psquare, self.qsquare = p * p, q * q
        g = public_key.g
        try:
            # python-paillier's h_p, h_q: inverses of L_p(g^(p-1) mod p^2)
            self.hp = pow((pow(g, p - 1, self.psquare) - 1) // p, -1, p)
            self.hq = pow((pow(g, q - 1, self.qsquare) - 1) // q, -1, q)
            self.p_inverse = pow(p, -1, q)
        except ValueError:
            raise ValueError("p and q are not a valid Paillier factorisation") from None
        if public_key._h_s is not None and not (
            pow(public_key._h_s, p - 1, self.psquare) == 1
            and pow(public_key._h_s, q - 1, self.qsquare) == 1
        ):
            # an h_s that is not an n-th residue would make every encryption decrypt wrongly
            raise ValueError("the public key's h_s is not an n-th residue modulo n^2")
        self._tables = _TableCache()

    @cached_property
    def crt_encrypt_constants(self) -> tuple[int, int, int, int]:
        """``h_s mod p^2``, ``h_s mod q^2`` and the CRT idempotents modulo ``n^2``."""
        pk = self.public_key
        e_p = self.qsquare * pow(self.qsquare, -1, self.psquare)
        e_q = self.psquare * pow(self.psquare, -1, self.qsquare)
        return pk.h_s % self.psquare, pk.h_s % self.qsquare, e_p % pk.nsquare, e_q % pk.nsquare

    @cached_property
    def decrypt_exponents(self) -> tuple[np.ndarray, np.ndarray]:
        return (int_to_limbs(self.p - 1, limbs_for(self.p))[None, :],
                int_to_limbs(self.q - 1, limbs_for(self.q))[None, :])

    def randomness_tables(self, backend: Backend) -> tuple[FixedBaseTable, FixedBaseTable]:
        hp, hq, _, _ = self.crt_encrypt_constants
        bits = self.public_key.exp_bits
        return (self._tables.get(backend, hp, self.psquare, bits),
                self._tables.get(backend, hq, self.qsquare, bits))

    def encrypt(
        self,
        values: object,
        *,
        backend: str | Backend | None = None,
        full_randomness: bool = False,
        precision: int = 53,
    ) -> EncryptedArray:
        """Encrypt as the key holder: the randomness is computed modulo p^2 and q^2 (CRT)."""
        from accel.paillier.cipher import encrypt

        return encrypt(self.public_key, values, backend=backend,
                       full_randomness=full_randomness, precision=precision, private_key=self)

    def decrypt(self, array: EncryptedArray, *, backend: str | Backend | None = None) -> np.ndarray:
        """Decrypt to float64 (int64 for integer arrays); ``OverflowError`` when a value left
        the plaintext band (n/3) on the way."""
        from accel.paillier.cipher import decrypt

        return decrypt(self, array, backend=backend)

    def decrypt_mantissas(self, array: EncryptedArray, *,
                          backend: str | Backend | None = None) -> list[int]:
        """The exact fixed-point mantissas (Python ints): what the key holder returns when it
        decrypts a masked array for another party (``accel.paillier.masking``)."""
        from accel.paillier.cipher import decrypt_mantissas

        return decrypt_mantissas(self, array, backend=backend)

    def refresh(
        self,
        array: EncryptedArray,
        *,
        precision: int = 53,
        backend: str | Backend | None = None,
    ) -> EncryptedArray:
        """A fresh encryption of ``array``'s values at the default (smallest) scale.

        Products by floats grow an array's scale and magnitude bound until no further
        product fits the plaintext band; only the key holder can bring them down. This
        decrypts, rounds to float64 (integer arrays stay exact) and encrypts again with
        ``precision`` bits of the largest magnitude, like ``encrypt``: same shape, dtype and
        backend pin, fresh randomness, a small scale and a bound of the actual values.

        It reveals the values to the key holder, who could decrypt the array anyway. In a
        protocol where the key holder must not learn them, the data holder masks first and
        unmasks after: ``r`` random, ``sk.refresh(ea + r) - r``.
        """
        from accel.paillier.cipher import decrypt, encrypt

        values = decrypt(self, array, backend=backend)
        return encrypt(self.public_key, values, backend=array.backend, precision=precision,
                       private_key=self)

    def __repr__(self) -> str:
        return f"PrivateKey(for {self.public_key!r})"

    def __reduce__(self) -> tuple:
        raise TypeError("a PrivateKey is not pickled: store p and q explicitly, sealed")


def _public_key(n: int, h_s: int | None) -> PublicKey:
    return PublicKey(n, h_s=h_s)


def keygen(bits: int = 2048) -> tuple[PublicKey, PrivateKey]:
    """A new key pair with an ``n`` of exactly ``bits`` bits (p and q of the same size)."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError("bits must be an int")
    if bits < MIN_KEY_BITS:
        raise ValueError(f"key size must be at least {MIN_KEY_BITS} bits")
    while True:
        p = random_prime(bits - bits // 2)
        q = random_prime(bits // 2)
        n = p * q
        if p != q and n.bit_length() == bits and math.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    while True:
        y = secrets.randbelow(n - 2) + 2
        if math.gcd(y, n) == 1:
            break
    pk = PublicKey(n, h_s=pow((-y * y) % n, n, n * n))
    return pk, PrivateKey(pk, p, q)
