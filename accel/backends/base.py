"""The batch protocol every compute backend implements.

All big numbers cross this boundary as C-contiguous ``uint64`` ndarrays of little-endian limbs:
a batch of ``N`` residues modulo ``m`` is an array of shape ``(N, L)`` where ``L`` is the limb
count of ``m`` (``limbs_for(m)``). Exponents are ``(N, E)`` limb arrays with their own limb
count ``E``. Moduli are passed as Python ints because they are per-call constants, not data;
backends cache whatever they precompute for a modulus (Montgomery constants, device copies)
keyed by its value.

Every operation is deterministic and bit-identical across backends: the conformance suite
compares each backend against the pure-integer reference in ``tests/accel``.

Signed exponents are not part of the protocol: callers invert the base once and pass the
absolute value, which keeps the exponents short (a negative plaintext would otherwise become an
n-bit exponent).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LIMB_BITS = 64


class BackendError(RuntimeError):
    """A backend failed to run an operation (device lost, kernel fault, out of memory).

    The router catches it, marks the backend unhealthy and redoes the call on the CPU.
    """


def limbs_for(value: int) -> int:
    """Number of 64-bit limbs needed to hold ``value`` (at least one)."""
    return max(1, (value.bit_length() + LIMB_BITS - 1) // LIMB_BITS)


def int_to_limbs(value: int, limbs: int) -> np.ndarray:
    """One non-negative int as a ``(limbs,)`` uint64 array."""
    if value < 0 or value.bit_length() > limbs * LIMB_BITS:
        raise ValueError(f"value does not fit in {limbs} limbs")
    return np.frombuffer(value.to_bytes(limbs * 8, "little"), dtype="<u8").copy()


def ints_to_limbs(values: Any, limbs: int) -> np.ndarray:
    """An iterable of non-negative ints as an ``(N, limbs)`` uint64 array (not for hot paths)."""
    flat = list(values)
    out = np.empty((len(flat), limbs), dtype=np.uint64)
    width = limbs * 8
    buf = bytearray(len(flat) * width)
    for i, v in enumerate(flat):
        v = int(v)
        if v < 0 or v.bit_length() > limbs * LIMB_BITS:
            raise ValueError(f"value at index {i} does not fit in {limbs} limbs")
        buf[i * width : (i + 1) * width] = v.to_bytes(width, "little")
    out[...] = np.frombuffer(bytes(buf), dtype="<u8").reshape(len(flat), limbs)
    return out


def limbs_to_ints(array: np.ndarray) -> list[int]:
    """Rows of an ``(N, L)`` limb array as Python ints (not for hot paths)."""
    a = np.ascontiguousarray(array, dtype="<u8")
    rows = a.reshape(-1, a.shape[-1])
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


@dataclass(frozen=True)
class FixedBaseTable:
    """Precomputed powers of one base for fast ``base ** x mod m`` over many exponents.

    ``data`` is backend-specific (a host array for the CPU, a device buffer elsewhere);
    ``window`` and ``exp_bits`` fix the layout: ``data[i][j] = base ** (j << (window * i))``.
    """

    base: int
    modulus: int
    exp_bits: int
    window: int
    backend: str
    data: Any = field(repr=False, compare=False)


class Backend(ABC):
    """A compute backend: CPU (C over GMP), OpenCL or CUDA.

    Inputs must already be reduced (every residue ``< modulus``); implementations may assume it
    and the callers in ``accel.paillier`` guarantee it.
    """

    #: short name used by ``accel.use(name)`` and ``backend=name``
    name: str = ""

    @abstractmethod
    def devices(self) -> list[str]:
        """Human-readable names of the devices this backend drives (empty if none)."""

    @abstractmethod
    def mulmod(self, a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
        """``a * b mod modulus`` elementwise; ``a`` is ``(N, L)``, ``b`` is ``(N, L)`` or
        ``(1, L)`` (one factor for every row)."""

    @abstractmethod
    def powmod(self, base: np.ndarray, exp: np.ndarray, modulus: int) -> np.ndarray:
        """``base ** exp mod modulus`` elementwise; ``base`` is ``(N, L)``, ``exp`` is
        ``(N, E)`` or ``(1, E)`` (one exponent for every row, e.g. CRT decryption)."""

    @abstractmethod
    def fixed_base_table(self, base: int, modulus: int, exp_bits: int) -> FixedBaseTable:
        """Precompute the table that ``powmod_fixed`` uses for exponents of ``exp_bits``."""

    @abstractmethod
    def powmod_fixed(self, table: FixedBaseTable, exp: np.ndarray) -> np.ndarray:
        """``table.base ** exp[i] mod table.modulus`` for each row of ``exp`` (``(N, E)``,
        at most ``table.exp_bits`` bits); returns ``(N, L)``."""

    @abstractmethod
    def multiexp(self, bases: np.ndarray, exps: np.ndarray, modulus: int) -> np.ndarray:
        """Products of powers: ``out[p, j] = prod_k bases[p, k] ** exps[k, j] mod modulus``.

        ``bases`` is ``(P, K, L)``, ``exps`` is ``(K, M, E)``; returns ``(P, M, L)``. This is
        the kernel behind encrypted-by-plaintext matrix products.
        """

    @abstractmethod
    def invmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        """Elementwise inverse modulo ``modulus``; raises ``ValueError`` naming the first index
        with no inverse."""

    def prodmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        """Product over axis 0: ``a`` is ``(K, N, L)``, returns ``(N, L)`` (encrypted sums).

        Pairwise halving keeps every step a large batch; backends may override it.
        """
        a = np.ascontiguousarray(a)
        if a.shape[0] == 0:
            raise ValueError("prodmod of an empty batch")
        while a.shape[0] > 1:
            half = a.shape[0] // 2
            n, L = a.shape[1], a.shape[2]
            left = a[:half].reshape(half * n, L)
            right = a[half : 2 * half].reshape(half * n, L)
            merged = self.mulmod(left, right, modulus).reshape(half, n, L)
            if a.shape[0] % 2:
                merged = np.concatenate([merged, a[-1:]], axis=0)
            a = merged
        return a[0].copy()

    # Optional NTT methods. A device backend that has NTT kernels defines
    #   ntt_forward(plan, a) / ntt_inverse(plan, a) / ntt_polymul(plan, a, b)
    # over validated ``(B, L, n)`` uint64 batches of an ``accel.ntt.Plan``, using the plan's
    # twiddle tables so that its results are bit-identical to the Numba path. A backend
    # without them leaves the transform to ``accel.ntt.cpu`` (the router does that).

    def health_probe(self) -> bool:
        """Run a tiny known-answer computation; True when the backend computes correctly."""
        m = (1 << 127) - 1
        a = int_to_limbs(3, 2)[None, :]
        e = int_to_limbs(5, 1)[None, :]
        try:
            got = limbs_to_ints(self.powmod(a, e, m))[0]
        except Exception:
            return False
        return got == 243
