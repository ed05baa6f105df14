"""``CpuBackend``: the batch protocol on the C kernels in this package.

The Python side only validates and allocates: every loop over rows, limbs or bits runs in C
(``_cpu``, built by ``build.py``) on a per-call thread team, and cffi releases the GIL for the
whole call. Two arithmetic paths give bit-identical results: GMP's mpn layer with a word-wise
Montgomery reduction (any x86-64), and eight-lane Montgomery products on AVX-512 IFMA
(``ifma.c``) for every batch operation where the CPU has it.
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict

import numpy as np

from accel.backends.base import Backend, FixedBaseTable, int_to_limbs, limbs_for

try:
    from accel.backends.cpu._cpu import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "the CPU backend's C extension accel.backends.cpu._cpu is not built; "
        "run `pip install --no-build-isolation -e .` (needs libgmp-dev and a C compiler)"
    ) from exc

#: upper bound on one fixed-base table; 4096-bit moduli with ~1100-bit exponents get w = 10
TABLE_BYTES = 64 << 20
MAX_WINDOW = 12
#: how many moduli keep their Montgomery constants (keys come and go, the cache must not grow)
MODULUS_CACHE = 64
THREADS_ENV = "PEC_ACCEL_THREADS"
#: set to 0 to keep the AVX-512 IFMA kernels off (they give the same results, faster)
SIMD_ENV = "PEC_ACCEL_SIMD"


class _Modulus:
    """Montgomery constants of one odd modulus, laid out for the C kernels."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.limbs = limbs_for(value)
        bits = 64 * self.limbs
        self._mod = int_to_limbs(value, self.limbs)
        self._r2 = int_to_limbs(pow(2, 2 * bits, value), self.limbs)
        self._one = int_to_limbs(pow(2, bits, value), self.limbs)
        self.struct = ffi.new("pec_modulus *")
        self.struct.limbs = self.limbs
        self.struct.mod = ffi.from_buffer("uint64_t[]", self._mod)
        self.struct.r2 = ffi.from_buffer("uint64_t[]", self._r2)
        self.struct.one = ffi.from_buffer("uint64_t[]", self._one)
        self.struct.minv = -pow(value, -1, 1 << 64) % (1 << 64)


def _threads_from(threads: int | None) -> int:
    if threads is None:
        env = os.environ.get(THREADS_ENV)
        if env is None:
            # The CPUs this process may run on (a container's cpuset), not the host's count.
            if hasattr(os, "sched_getaffinity"):
                return len(os.sched_getaffinity(0)) or 1
            return os.cpu_count() or 1
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {env!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


def _ptr(array: np.ndarray):
    return ffi.from_buffer("uint64_t[]", array)


def _limb_array(name: str, array: object, ndim: int, limbs: int | None = None) -> np.ndarray:
    """``array`` itself after checking it is a C-contiguous uint64 array of ``ndim`` axes."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint64 array, got {type(array).__name__}")
    if array.dtype != np.dtype("<u8"):
        raise TypeError(f"{name} must have dtype uint64 (little-endian), got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (np.ascontiguousarray makes a copy)")
    if array.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one limb, got shape {array.shape}")
    if limbs is not None and array.shape[-1] != limbs:
        raise ValueError(
            f"{name} has {array.shape[-1]} limbs but the modulus needs {limbs}: "
            f"shape {array.shape}"
        )
    return array


class CpuBackend(Backend):
    """Montgomery arithmetic over GMP's mpn layer on ``threads`` cores.

    ``threads`` defaults to ``$PEC_ACCEL_THREADS``, else every core this process may use. ``simd``
    lets exponentiations run eight at a time on AVX-512 IFMA where the CPU has it (default:
    on unless ``$PEC_ACCEL_SIMD`` is 0); ``self.simd`` says whether they do.
    """

    name = "cpu"

    def __init__(self, threads: int | None = None, *, simd: bool | None = None) -> None:
        self.threads = _threads_from(threads)
        if simd is None:
            simd = os.environ.get(SIMD_ENV, "1").strip() != "0"
        self.simd = bool(simd) and bool(lib.pec_simd_available())
        self._moduli: OrderedDict[int, _Modulus] = OrderedDict()

    # ---- helpers ------------------------------------------------------------------------

    def _modulus(self, modulus: object) -> _Modulus:
        if isinstance(modulus, bool):
            raise TypeError("modulus must be an int, got bool")
        try:
            value = operator.index(modulus)
        except TypeError:
            raise TypeError(f"modulus must be an int, got {type(modulus).__name__}") from None
        cached = self._moduli.get(value)
        if cached is not None:
            self._moduli.move_to_end(value)
            return cached
        if value < 1:
            raise ValueError(f"modulus must be positive, got {value}")
        if value % 2 == 0:
            raise ValueError("the CPU backend needs an odd modulus (Montgomery arithmetic)")
        ctx = _Modulus(value)
        self._moduli[value] = ctx
        if len(self._moduli) > MODULUS_CACHE:
            self._moduli.popitem(last=False)
        return ctx

    @staticmethod
    def _check_reduced(name: str, array: np.ndarray, mod: _Modulus) -> None:
        rows = array.size // mod.limbs
        bad = lib.pec_first_unreduced(mod.struct, _ptr(array), rows)
        if bad >= 0:
            raise ValueError(f"{name}: residue {bad} is not reduced modulo the modulus")

    @staticmethod
    def _raise_for(rc: int) -> None:
        if rc == lib.PEC_NO_MEMORY:
            raise MemoryError("the CPU backend ran out of memory")
        if rc != lib.PEC_OK:
            raise RuntimeError(f"CPU kernel failed with status {rc}")

    # ---- protocol -----------------------------------------------------------------------

    def devices(self) -> list[str]:
        version = ffi.string(lib.pec_gmp_version()).decode()
        simd = ", AVX-512 IFMA" if self.simd else ""
        return [f"{_cpu_model()}, {self.threads} threads (GMP {version}{simd})"]

    def mulmod(self, a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
        mod = self._modulus(modulus)
        a = _limb_array("a", a, 2, mod.limbs)
        b = _limb_array("b", b, 2, mod.limbs)
        rows = a.shape[0]
        if b.shape[0] not in (1, rows):
            raise ValueError(f"b must have 1 or {rows} rows to match a, got {b.shape[0]}")
        self._check_reduced("a", a, mod)
        self._check_reduced("b", b, mod)
        out = np.empty((rows, mod.limbs), dtype=np.uint64)
        b_step = 1 if b.shape[0] == rows else 0
        self._raise_for(
            lib.pec_mulmod(
                mod.struct, _ptr(a), _ptr(b), b_step, _ptr(out), rows, self.threads, self.simd
            )
        )
        return out

    def powmod(self, base: np.ndarray, exp: np.ndarray, modulus: int) -> np.ndarray:
        mod = self._modulus(modulus)
        base = _limb_array("base", base, 2, mod.limbs)
        exp = _limb_array("exp", exp, 2)
        rows = base.shape[0]
        if exp.shape[0] not in (1, rows):
            raise ValueError(f"exp must have 1 or {rows} rows to match base, got {exp.shape[0]}")
        self._check_reduced("base", base, mod)
        out = np.empty((rows, mod.limbs), dtype=np.uint64)
        exp_step = 1 if exp.shape[0] == rows else 0
        self._raise_for(
            lib.pec_powmod(
                mod.struct, _ptr(base), _ptr(exp), exp.shape[1], exp_step, _ptr(out), rows,
                self.threads, self.simd,
            )
        )
        return out

    def fixed_base_table(
        self, base: int, modulus: int, exp_bits: int, *, window: int | None = None
    ) -> FixedBaseTable:
        """Table for ``powmod_fixed``; ``window`` overrides the width chosen from
        ``TABLE_BYTES`` (wider windows: fewer products per exponentiation, more memory)."""
        mod = self._modulus(modulus)
        base = operator.index(base)
        exp_bits = operator.index(exp_bits)
        if not 0 <= base < mod.value:
            raise ValueError("base must be reduced modulo the modulus")
        if exp_bits < 1:
            raise ValueError(f"exp_bits must be at least 1, got {exp_bits}")
        if window is None:
            window = _table_window(exp_bits, mod.limbs)
        elif not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be between 1 and {MAX_WINDOW}, got {window}")
        windows = -(-exp_bits // window)
        data = np.empty((windows, (1 << window) - 1, mod.limbs), dtype=np.uint64)
        base_limbs = int_to_limbs(base, mod.limbs)
        self._raise_for(
            lib.pec_fixed_base_table(
                mod.struct, _ptr(base_limbs), window, windows, _ptr(data), self.threads,
                self.simd,
            )
        )
        return FixedBaseTable(base, mod.value, exp_bits, window, self.name, data)

    def powmod_fixed(self, table: FixedBaseTable, exp: np.ndarray) -> np.ndarray:
        if not isinstance(table, FixedBaseTable) or table.backend != self.name:
            raise TypeError("table must be a FixedBaseTable made by the cpu backend")
        mod = self._modulus(table.modulus)
        data = table.data
        expected = (-(-table.exp_bits // table.window), (1 << table.window) - 1, mod.limbs)
        if not isinstance(data, np.ndarray) or data.shape != expected:
            raise ValueError("table data does not match its modulus, window and exp_bits")
        exp = _limb_array("exp", exp, 2)
        _check_exp_bits(exp, table.exp_bits)
        rows = exp.shape[0]
        out = np.empty((rows, mod.limbs), dtype=np.uint64)
        self._raise_for(
            lib.pec_powmod_fixed(
                mod.struct, _ptr(data), table.window, expected[0], _ptr(exp), exp.shape[1],
                _ptr(out), rows, self.threads, self.simd,
            )
        )
        return out

    def multiexp(self, bases: np.ndarray, exps: np.ndarray, modulus: int) -> np.ndarray:
        mod = self._modulus(modulus)
        bases = _limb_array("bases", bases, 3, mod.limbs)
        exps = _limb_array("exps", exps, 3)
        P, K, _ = bases.shape
        if exps.shape[0] != K:
            raise ValueError(
                f"exps must have one row per base: bases has {K}, exps has {exps.shape[0]}"
            )
        M, E = exps.shape[1], exps.shape[2]
        self._check_reduced("bases", bases, mod)
        out = np.empty((P, M, mod.limbs), dtype=np.uint64)
        if out.size == 0:
            return out
        self._raise_for(
            lib.pec_multiexp(
                mod.struct, _ptr(bases), _ptr(exps), E, P, K, M, _ptr(out), self.threads,
                self.simd,
            )
        )
        return out

    def invmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        mod = self._modulus(modulus)
        a = _limb_array("a", a, 2, mod.limbs)
        self._check_reduced("a", a, mod)
        rows = a.shape[0]
        out = np.empty((rows, mod.limbs), dtype=np.uint64)
        bad = ffi.new("int64_t *")
        rc = lib.pec_invmod(mod.struct, _ptr(a), _ptr(out), rows, bad, self.threads, self.simd)
        if rc == lib.PEC_NOT_INVERTIBLE:
            raise ValueError(f"element {bad[0]} has no inverse modulo the modulus")
        self._raise_for(rc)
        return out

    def prodmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        mod = self._modulus(modulus)
        a = _limb_array("a", a, 3, mod.limbs)
        K, N, _ = a.shape
        if K == 0:
            raise ValueError("prodmod of an empty batch")
        self._check_reduced("a", a, mod)
        out = np.empty((N, mod.limbs), dtype=np.uint64)
        if N == 0:
            return out
        self._raise_for(
            lib.pec_prodmod(mod.struct, _ptr(a), K, N, _ptr(out), self.threads, self.simd)
        )
        return out


def _table_window(exp_bits: int, limbs: int) -> int:
    """Widest window whose table fits ``TABLE_BYTES`` (and is no wider than the exponent)."""
    best = 1
    for w in range(1, min(MAX_WINDOW, exp_bits) + 1):
        size = ((1 << w) - 1) * -(-exp_bits // w) * limbs * 8
        if size <= TABLE_BYTES:
            best = w
    return best


def _check_exp_bits(exp: np.ndarray, exp_bits: int) -> None:
    """ValueError naming the first exponent longer than ``exp_bits`` bits."""
    full, rest = divmod(exp_bits, 64)
    if full >= exp.shape[1]:
        return
    over = np.any(exp[:, full + 1 :] != 0, axis=1) | (exp[:, full] >> np.uint64(rest) != 0)
    if over.any():
        row = int(np.argmax(over))
        raise ValueError(f"exponent {row} has more than {exp_bits} bits, the table's limit")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "CPU"
