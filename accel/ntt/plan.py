"""``Plan``: one transform size and one RNS basis, with the twiddle tables every backend shares.

The table layout is a contract with the OpenCL and CUDA kernels (docs/ntt.md): change it there
first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from accel import backends
from accel.ntt import cpu
from accel.ntt.primes import MAX_MODULUS_BITS, is_prime

MIN_N = 2
MAX_N = 65536

BackendChoice = str | backends.Backend | None
_U = np.uint64
_MASK64 = (1 << 64) - 1


def _bit_reverse_permutation(log_n: int) -> np.ndarray:
    """``perm[i] = bitrev(i)`` over ``log_n`` bits."""
    perm = np.zeros(1, dtype=np.int64)
    for _ in range(log_n):
        perm = np.concatenate([perm * 2, perm * 2 + 1])
    return perm


def _primitive_root_2n(q: int, n: int) -> int:
    """The first ``x^((q-1)/2n)`` (x = 2, 3, ...) whose order is exactly ``2n``."""
    exponent = (q - 1) // (2 * n)
    for x in range(2, q):
        psi = pow(x, exponent, q)
        # 2n is a power of two, so order exactly 2n <=> psi^n = -1
        if pow(psi, n, q) == q - 1:
            return psi
    raise ValueError(f"{q} has no primitive {2 * n}-th root of unity")


class Plan:
    """Negacyclic NTT of size ``n`` over each prime of ``moduli``.

    Attributes (all tables C-contiguous ``uint64``, one row per modulus; see docs/ntt.md):
    ``n``, ``log_n``, ``moduli`` ``(L,)``, ``psi`` ``(L,)``, ``psi_rev`` / ``psi_rev_shoup`` /
    ``psi_inv_rev`` / ``psi_inv_rev_shoup`` ``(L, n)``, ``n_inv`` / ``n_inv_shoup`` ``(L,)``,
    ``barrett`` ``(L, 2)``.
    """

    def __init__(self, n: int, moduli: Sequence[int]) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise ValueError(f"n must be an integer, got {type(n).__name__}")
        n = int(n)
        if n < MIN_N or n & (n - 1):
            raise ValueError(f"n must be a power of two, got {n}")
        if n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N}, got {n}")
        qs = self._check_moduli(moduli, n)

        self.n = n
        self.log_n = n.bit_length() - 1
        self.moduli = np.array(qs, dtype=np.uint64)
        limbs = len(qs)
        perm = _bit_reverse_permutation(self.log_n)
        self.psi = np.empty(limbs, dtype=np.uint64)
        self.psi_rev = np.empty((limbs, n), dtype=np.uint64)
        self.psi_rev_shoup = np.empty((limbs, n), dtype=np.uint64)
        self.psi_inv_rev = np.empty((limbs, n), dtype=np.uint64)
        self.psi_inv_rev_shoup = np.empty((limbs, n), dtype=np.uint64)
        self.n_inv = np.empty(limbs, dtype=np.uint64)
        self.n_inv_shoup = np.empty(limbs, dtype=np.uint64)
        self.barrett = np.empty((limbs, 2), dtype=np.uint64)
        for row, q in enumerate(qs):
            ratio = (1 << 128) // q
            ratio_lo, ratio_hi = _U(ratio & _MASK64), _U(ratio >> 64)
            psi = _primitive_root_2n(q, n)
            self.psi[row] = psi
            for table, shoup_table, root in (
                (self.psi_rev, self.psi_rev_shoup, psi),
                (self.psi_inv_rev, self.psi_inv_rev_shoup, pow(psi, -1, q)),
            ):
                table[row] = cpu.powers(_U(root), _U(q), n, ratio_lo, ratio_hi)[perm]
                shoup_table[row] = cpu.shoup_companions(table[row], _U(q), ratio_lo, ratio_hi)
            n_inv = pow(n, -1, q)
            self.n_inv[row] = n_inv
            self.n_inv_shoup[row] = (n_inv << 64) // q
            self.barrett[row] = (ratio_lo, ratio_hi)
        # backends may keep device copies of the tables for the plan's lifetime
        for table in (
            self.moduli, self.psi, self.psi_rev, self.psi_rev_shoup, self.psi_inv_rev,
            self.psi_inv_rev_shoup, self.n_inv, self.n_inv_shoup, self.barrett,
        ):  # fmt: skip
            table.flags.writeable = False

    @staticmethod
    def _check_moduli(moduli: Sequence[int], n: int) -> list[int]:
        try:
            items = list(moduli)
        except TypeError:
            raise ValueError(f"moduli must be a sequence of integers, got {moduli!r}") from None
        for q in items:
            if isinstance(q, bool) or not isinstance(q, int | np.integer):
                raise ValueError(f"moduli must be integers, got {q!r} ({type(q).__name__})")
        qs = [int(q) for q in items]
        if not qs:
            raise ValueError("moduli is empty")
        if len(set(qs)) != len(qs):
            raise ValueError("moduli repeat a prime; an RNS basis needs distinct primes")
        for q in qs:
            if q <= 2 or q.bit_length() > MAX_MODULUS_BITS:
                raise ValueError(f"modulus {q} is out of range: need 2 < q < 2^{MAX_MODULUS_BITS}")
            if q % (2 * n) != 1:
                raise ValueError(f"modulus {q} is not 1 mod 2n = {2 * n}")
            if not is_prime(q):
                raise ValueError(f"modulus {q} is not prime")
        return qs

    @property
    def limbs(self) -> int:
        """Number of moduli ``L``."""
        return int(self.moduli.shape[0])

    def __repr__(self) -> str:
        return f"Plan(n={self.n}, moduli={[int(q) for q in self.moduli]})"

    # -- the operations ----------------------------------------------------------------------

    def forward(self, a: np.ndarray, *, backend: BackendChoice = None) -> np.ndarray:
        """Forward negacyclic NTT of ``a`` (``(..., L, n)``); output in bit-reversed order."""
        flat = self._check_input(a, "a")
        be = backends.resolve(backend, op="ntt", size=flat.size)
        run = getattr(be, "ntt_forward", None) or cpu.forward
        return run(self, flat).reshape(a.shape)

    def inverse(self, a: np.ndarray, *, backend: BackendChoice = None) -> np.ndarray:
        """Inverse NTT: bit-reversed evaluations (as ``forward`` returns) to coefficients."""
        flat = self._check_input(a, "a")
        be = backends.resolve(backend, op="ntt", size=flat.size)
        run = getattr(be, "ntt_inverse", None) or cpu.inverse
        return run(self, flat).reshape(a.shape)

    def polymul(
        self, a: np.ndarray, b: np.ndarray, *, backend: BackendChoice = None
    ) -> np.ndarray:
        """Negacyclic product ``a * b mod (x^n + 1, q_l)`` per limb; ``a`` and ``b`` share a
        shape ``(..., L, n)``."""
        if np.shape(a) != np.shape(b):
            raise ValueError(f"shape mismatch: a is {np.shape(a)}, b is {np.shape(b)}")
        fa = self._check_input(a, "a")
        fb = self._check_input(b, "b")
        be = backends.resolve(backend, op="ntt", size=fa.size)
        run = getattr(be, "ntt_polymul", None)
        if run is not None:
            return run(self, fa, fb).reshape(a.shape)
        fwd = getattr(be, "ntt_forward", None) or cpu.forward
        inv = getattr(be, "ntt_inverse", None) or cpu.inverse
        product = cpu.pointwise(self, fwd(self, fa), fwd(self, fb))
        return inv(self, product).reshape(a.shape)

    def _check_input(self, a: np.ndarray, name: str) -> np.ndarray:
        """``a`` as a C-contiguous ``(B, L, n)`` array, or ``ValueError`` saying what is wrong."""
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{name} must be a numpy uint64 array, got {type(a).__name__}")
        if a.dtype != np.uint64:
            raise ValueError(f"{name} must have dtype uint64, got {a.dtype}")
        if a.ndim < 2 or a.shape[-2:] != (self.limbs, self.n):
            raise ValueError(
                f"{name} must be shaped (..., L={self.limbs}, n={self.n}), got {a.shape}"
            )
        flat = np.ascontiguousarray(a).reshape(-1, self.limbs, self.n)
        if flat.size:
            too_big = flat >= self.moduli[None, :, None]
            if too_big.any():
                # the flat view is a in C order, so the first hit maps back to an index of a
                where = np.unravel_index(int(np.argmax(too_big)), a.shape)
                limb = int(where[-2])
                raise ValueError(
                    f"{name}{list(map(int, where))} = {int(a[where])} is not reduced: "
                    f"limb {limb} needs values < q_{limb} = {int(self.moduli[limb])}"
                )
        return flat
