"""Host side of the Montgomery kernels, shared by every device runtime (OpenCL, CUDA).

A runtime supplies five primitives (build a program for a limb count, upload, allocate,
launch, download); this class does the rest: input checks, per-modulus constants, the
fixed-base tables, the order of kernel launches, and the translation of runtime errors into
``BackendError`` so that the router can fall back to the CPU.
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np

from accel.backends import router
from accel.backends.base import (
    LIMB_BITS,
    Backend,
    BackendError,
    FixedBaseTable,
    ints_to_limbs,
    limbs_for,
    limbs_to_ints,
)

KERNEL_DIR = Path(__file__).resolve().parent
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)

# Coefficients an NTT work-group keeps in local memory (32 KiB, the least an OpenCL device
# offers), and global-memory stages fused into one pass (docs in ntt.cl).
NTT_MAX_CHUNK = 4096
NTT_MAX_FUSED = 4
#: work-items that share one database row in the LWE kernel (lwe.cl)
LWE_GROUP = 128

# Largest operand of one launch, in words (128 MiB): bigger batches go in slices, so that a
# large call neither exhausts device memory nor overflows the kernels' 32-bit counts.
MAX_LAUNCH_WORDS = 1 << 24

# Modulus contexts kept on the device; a Paillier key uses a handful (n^2, p^2, q^2).
_CONTEXT_CACHE_SIZE = 32


def inline_includes(path: Path, include_dirs: tuple[Path, ...] = (KERNEL_DIR,),
                    seen: frozenset[Path] = frozenset()) -> str:
    """``path``'s text with every ``#include "x"`` replaced by the text of x (searched next to
    the including file, then in ``include_dirs``). Runtime compilers then need no include
    path, and the text they cache by changes whenever any included file does."""
    if path in seen:
        raise ValueError(f"{path.name} includes itself")

    def expand(match: re.Match[str]) -> str:
        for root in (path.parent, *include_dirs):
            candidate = root / match.group(1)
            if candidate.is_file():
                return inline_includes(candidate.resolve(), include_dirs, seen | {path})
        raise FileNotFoundError(f"{path.name}: include {match.group(1)!r} not found")

    return _INCLUDE.sub(expand, path.read_text())


def montgomery_context(modulus: int) -> np.ndarray:
    """The kernels' per-modulus constants: ``m | R^2 mod m | R mod m | -m^-1 mod 2^64``."""
    limbs = limbs_for(modulus)
    r = 1 << (LIMB_BITS * limbs)
    m0inv = (-pow(modulus, -1, 1 << LIMB_BITS)) % (1 << LIMB_BITS)
    words = ints_to_limbs([modulus, r * r % modulus, r % modulus], limbs).reshape(-1)
    return np.concatenate([words, np.array([m0inv], dtype=np.uint64)])


def fixed_base_rows(base: int, modulus: int, exp_bits: int, window: int) -> np.ndarray:
    """``(windows << window, L)`` Montgomery-form powers ``base ** (d << (window * w)) * R``."""
    limbs = limbs_for(modulus)
    r = (1 << (LIMB_BITS * limbs)) % modulus
    windows = -(-exp_bits // window)
    values = []
    g = base % modulus
    for _ in range(windows):
        x = r
        for _ in range(1 << window):
            values.append(x)
            x = x * g % modulus
        g = pow(g, 1 << window, modulus)
    return ints_to_limbs(values, limbs)


def _limb_array(name: str, array: Any, ndim: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy uint64 limb array, got {type(array).__name__}")
    if array.dtype != np.uint64:
        raise ValueError(f"{name} must have dtype uint64, got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    return np.ascontiguousarray(array)


def _odd_modulus(modulus: int) -> int:
    if not isinstance(modulus, int) or modulus <= 0:
        raise ValueError(f"modulus must be a positive int, got {modulus!r}")
    if modulus % 2 == 0:
        raise ValueError("modulus must be odd: the device kernels use Montgomery multiplication")
    return modulus


class KernelBackend(Backend):
    """A backend that runs ``montgomery.cl`` on one device through some runtime."""

    def __init__(self) -> None:
        self._programs: dict[tuple[str, tuple[tuple[str, int], ...]], Any] = {}
        self._contexts: OrderedDict[int, Any] = OrderedDict()
        self._ntt_tables: weakref.WeakKeyDictionary[Any, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._lwe_tables: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        # One launch sequence at a time: kernel argument slots and queues are shared state.
        self._lock = threading.RLock()

    # -- what a runtime provides ---------------------------------------------------------

    @abstractmethod
    def _build(self, source: str, defines: dict[str, int]) -> Any:
        """Compile ``source`` for this device with the given ``-D`` macros."""

    @abstractmethod
    def _upload(self, host: np.ndarray, writable: bool = False) -> Any:
        """A device copy of a contiguous host array (kernels may write it if ``writable``)."""

    @abstractmethod
    def _alloc(self, words: int) -> Any:
        """An uninitialised device buffer of ``words`` uint64."""

    @abstractmethod
    def _launch(self, program: Any, kernel: str, threads: int, args: list[Any],
                group: int | None = None) -> None:
        """Run ``kernel`` over ``threads`` work-items (kernels bound-check against their n).

        ``group`` fixes the work-group (block) size for kernels that share local memory;
        ``threads`` is then a multiple of it."""

    @abstractmethod
    def kernel_path(self, name: str) -> Path:
        """The source file of kernel program ``name`` ("montgomery", "ntt") for this runtime."""

    def max_group_size(self) -> int:
        """Largest work-group the device runs (bounds the NTT chunk)."""
        return 1024

    @abstractmethod
    def _download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        """The device buffer as a host uint64 array of ``shape`` (waits for the device)."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until every queued launch has finished (for timings)."""

    #: runtime exception types that mean "the device failed", translated to BackendError
    device_errors: tuple[type[BaseException], ...] = ()

    #: work-items that keep the device busy; fewer leave cores idle and cost latency
    parallel_items: int = 1 << 14

    #: build fixed-base tables with the device's own kernels (GPUs) rather than on the host
    #: (CPU devices, where the host is the same silicon and Python integers are simpler)
    tables_on_device: bool = False

    # -- shared machinery ----------------------------------------------------------------

    @contextlib.contextmanager
    def _device_call(self, op: str) -> Iterator[None]:
        """Serialise one operation and turn any device failure into ``BackendError``."""
        with self._lock:
            try:
                router.raise_injected_fault(self.name, op)
                yield
            except (ValueError, TypeError, BackendError):
                raise
            except (MemoryError, *self.device_errors) as exc:
                raise BackendError(f"{self.name} {op} failed: {exc}") from exc
            except RuntimeError as exc:
                raise BackendError(f"{self.name} {op} failed: {exc}") from exc

    def fixed_base_window(self, exp_bits: int) -> int:
        """Window of a fixed-base table: 8 bits (256 entries per window) for key-sized
        exponents, 4 bits for short ones where the table would dwarf the work it saves."""
        return 8 if exp_bits >= 256 else 4

    def max_rows(self, words_per_row: int) -> int:
        """Rows of one launch for operands of ``words_per_row`` words."""
        return max(1, MAX_LAUNCH_WORDS // words_per_row)

    def _program(self, name: str, **defines: int) -> Any:
        """Program ``name`` built with ``defines``: once per device and define set."""
        key = (name, tuple(sorted(defines.items())))
        if key not in self._programs:
            self._programs[key] = self._build(self.kernel_source(name), defines)
        return self._programs[key]

    def kernel_source(self, name: str) -> str:
        """The self-contained source text of program ``name``."""
        return inline_includes(self.kernel_path(name))

    def _context(self, modulus: int) -> Any:
        ctx = self._contexts.get(modulus)
        if ctx is None:
            ctx = self._upload(montgomery_context(modulus))
            self._contexts[modulus] = ctx
            if len(self._contexts) > _CONTEXT_CACHE_SIZE:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(modulus)
        return ctx

    @staticmethod
    def _check_residues(name: str, array: Any, limbs: int) -> np.ndarray:
        a = _limb_array(name, array, 2)
        if a.shape[1] != limbs:
            raise ValueError(f"{name} has {a.shape[1]} limbs per row; the modulus needs {limbs}")
        return a

    @staticmethod
    def _check_rows(name: str, array: np.ndarray, rows: int) -> int:
        """Row stride of an operand that is either one row per element or a single row."""
        if array.shape[0] == rows:
            return array.shape[1]
        if array.shape[0] == 1:
            return 0
        raise ValueError(f"{name} has {array.shape[0]} rows; expected {rows} or 1")

    # -- the protocol --------------------------------------------------------------------

    def mulmod(self, a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
        modulus = _odd_modulus(modulus)
        limbs = limbs_for(modulus)
        a = self._check_residues("a", a, limbs)
        b = self._check_residues("b", b, limbs)
        n = a.shape[0]
        b_stride = self._check_rows("b", b, n)
        if n == 0:
            return np.empty((0, limbs), dtype=np.uint64)
        step = self.max_rows(max(limbs, b.shape[1]))
        if n > step:
            return np.concatenate([
                self.mulmod(a[i:i + step], b[i:i + step] if b_stride else b, modulus)
                for i in range(0, n, step)
            ])
        with self._device_call("mulmod"):
            out = self._alloc(n * limbs)
            self._launch(
                self._program("montgomery", NLIMBS=limbs),
                "mulmod",
                n,
                [out, self._upload(a), self._upload(b), np.uint32(b_stride),
                 self._context(modulus), np.uint32(n)],
            )
            return self._download(out, (n, limbs))

    def powmod(self, base: np.ndarray, exp: np.ndarray, modulus: int) -> np.ndarray:
        modulus = _odd_modulus(modulus)
        limbs = limbs_for(modulus)
        base = self._check_residues("base", base, limbs)
        exp = _limb_array("exp", exp, 2)
        n = base.shape[0]
        exp_stride = self._check_rows("exp", exp, n)
        if n == 0:
            return np.empty((0, limbs), dtype=np.uint64)
        step = self.max_rows(max(limbs, exp.shape[1]))
        if n > step:
            return np.concatenate([
                self.powmod(base[i:i + step], exp[i:i + step] if exp_stride else exp, modulus)
                for i in range(0, n, step)
            ])
        with self._device_call("powmod"):
            out = self._alloc(n * limbs)
            self._launch(
                self._program("montgomery", NLIMBS=limbs),
                "powmod",
                n,
                [out, self._upload(base), self._upload(exp), np.uint32(exp.shape[1]),
                 np.uint32(exp_stride), self._context(modulus), np.uint32(n)],
            )
            return self._download(out, (n, limbs))

    def fixed_base_table(self, base: int, modulus: int, exp_bits: int) -> FixedBaseTable:
        modulus = _odd_modulus(modulus)
        if not isinstance(exp_bits, int) or exp_bits <= 0:
            raise ValueError(f"exp_bits must be a positive int, got {exp_bits!r}")
        if not isinstance(base, int) or not 0 <= base < modulus:
            raise ValueError("base must be an int in [0, modulus)")
        window = self.fixed_base_window(exp_bits)
        if not self.tables_on_device:
            rows = fixed_base_rows(base, modulus, exp_bits, window)
            with self._device_call("fixed_base_table"):
                data = self._upload(rows)
            return FixedBaseTable(base, modulus, exp_bits, window, self.name, data)
        # The host computes only each window's generator g^(2^(window i)); the device
        # raises each to every digit and converts to Montgomery form, so a table of
        # hundreds of MiB never crosses the bus and Python does a few thousand products.
        limbs = limbs_for(modulus)
        windows = -(-exp_bits // window)
        generators = []
        g = base % modulus
        for _ in range(windows):
            generators.append(g)
            g = pow(g, 1 << window, modulus)
        entries = windows << window
        bases = np.repeat(ints_to_limbs(generators, limbs), 1 << window, axis=0)
        digits = np.tile(np.arange(1 << window, dtype=np.uint64), windows)[:, None]
        with self._device_call("fixed_base_table"):
            program = self._program("montgomery", NLIMBS=limbs)
            ctx = self._context(modulus)
            plain = self._alloc(entries * limbs)
            self._launch(program, "powmod", entries,
                         [plain, self._upload(bases), self._upload(digits), np.uint32(1),
                          np.uint32(1), ctx, np.uint32(entries)])
            data = self._alloc(entries * limbs)
            self._launch(program, "to_montgomery", entries,
                         [data, plain, ctx, np.uint32(entries)])
            self.synchronize()
        return FixedBaseTable(base, modulus, exp_bits, window, self.name, data)

    def powmod_fixed(self, table: FixedBaseTable, exp: np.ndarray) -> np.ndarray:
        if not isinstance(table, FixedBaseTable) or table.backend != self.name:
            owner = getattr(table, "backend", type(table).__name__)
            raise ValueError(f"table was built by backend {owner!r}, not {self.name!r}")
        limbs = limbs_for(table.modulus)
        exp = _limb_array("exp", exp, 2)
        n = exp.shape[0]
        if n == 0:
            return np.empty((0, limbs), dtype=np.uint64)
        whole_limbs = table.exp_bits // LIMB_BITS
        spare = table.exp_bits % LIMB_BITS
        too_long = exp[:, whole_limbs + (spare > 0):].any()
        if spare and exp.shape[1] > whole_limbs:
            too_long = too_long or bool((exp[:, whole_limbs] >> np.uint64(spare)).any())
        if too_long:
            raise ValueError(f"an exponent has more than the table's {table.exp_bits} bits")
        step = self.max_rows(max(limbs, exp.shape[1]))
        if n > step:
            return np.concatenate([self.powmod_fixed(table, exp[i:i + step])
                                   for i in range(0, n, step)])
        windows = -(-table.exp_bits // table.window)
        with self._device_call("powmod_fixed"):
            out = self._alloc(n * limbs)
            self._launch(
                self._program("montgomery", NLIMBS=limbs),
                "powmod_fixed",
                n,
                [out, self._upload(exp), np.uint32(exp.shape[1]), table.data,
                 np.uint32(table.window), np.uint32(windows), self._context(table.modulus),
                 np.uint32(n)],
            )
            return self._download(out, (n, limbs))

    def multiexp(self, bases: np.ndarray, exps: np.ndarray, modulus: int) -> np.ndarray:
        modulus = _odd_modulus(modulus)
        limbs = limbs_for(modulus)
        bases = _limb_array("bases", bases, 3)
        exps = _limb_array("exps", exps, 3)
        p, k, bl = bases.shape
        if bl != limbs:
            raise ValueError(f"bases has {bl} limbs per element; the modulus needs {limbs}")
        if exps.shape[0] != k:
            raise ValueError(f"exps has {exps.shape[0]} rows; bases has {k} columns")
        m = exps.shape[1]
        n = p * m
        if n == 0:
            return np.empty((p, m, limbs), dtype=np.uint64)
        if k == 0:
            out = np.zeros((p, m, limbs), dtype=np.uint64)
            out[..., 0] = 1 % modulus
            return out
        chunk = self.multiexp_chunk(k, n)
        chunks = -(-k // chunk)
        with self._device_call("multiexp"):
            program = self._program("montgomery", NLIMBS=limbs)
            ctx = self._context(modulus)
            mont = self._alloc(p * k * limbs)
            self._launch(program, "to_montgomery", p * k,
                         [mont, self._upload(bases), ctx, np.uint32(p * k)])
            items = p * chunks * m
            out = self._alloc(items * limbs)
            self._launch(
                program,
                "multiexp",
                items,
                [out, mont, self._upload(exps), np.uint32(k), np.uint32(chunk), np.uint32(m),
                 np.uint32(exps.shape[2]), ctx, np.uint32(items)],
            )
            partial = self._download(out, (p, chunks, m, limbs))
        if chunks == 1:
            return partial[:, 0]
        per_chunk = np.ascontiguousarray(partial.transpose(1, 0, 2, 3)).reshape(chunks, n, limbs)
        return self.prodmod(per_chunk, modulus).reshape(p, m, limbs)

    def multiexp_chunk(self, k: int, outputs: int) -> int:
        """Bases per work-item of a multi-exponentiation with ``k`` bases and ``outputs``
        products: all of them unless the outputs alone leave the device mostly idle (each
        work-item runs hundreds of serial multiplications per base, so 10 outputs of 2000
        bases on one thread each took seconds on a GPU)."""
        chunks = min(k, max(1, -(-self.parallel_items // outputs)))
        return -(-k // chunks)

    def invmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        # An extended-gcd kernel would diverge on every element, so inverses are computed on
        # the host, by GMP: Python's own pow(x, -1, m) takes milliseconds at 4096 bits, which
        # made every product with negative plaintexts wait seconds for its inverses.
        if not isinstance(modulus, int) or modulus <= 0:
            raise ValueError(f"modulus must be a positive int, got {modulus!r}")
        limbs = limbs_for(modulus)
        a = self._check_residues("a", a, limbs)
        with self._device_call("invmod"):
            m = gmpy2.mpz(modulus)
            out = []
            for i, x in enumerate(limbs_to_ints(a) if a.shape[0] else []):
                try:
                    out.append(int(gmpy2.invert(x, m)))
                except ZeroDivisionError:
                    raise ValueError(f"element {i} has no inverse modulo the modulus") from None
            return ints_to_limbs(out, limbs)

    # -- LWE (accel.lwe: the server's pass of private query) --------------------------------

    def lwe_matmul(self, matrix: Any, queries: np.ndarray) -> np.ndarray:
        """``queries @ matrix.entries.T mod 2^32`` (see lwe.cl). The device keeps its copy of
        the matrix for as long as the ``Matrix`` lives, so a query moves only its own words."""
        batch, rows = queries.shape[0], matrix.rows
        with self._device_call("lwe"):
            db = self._lwe_tables.get(matrix)
            if db is None:
                db = self._upload(matrix.entries)
                self._lwe_tables[matrix] = db
            out = self._alloc((batch * rows + 1) // 2)
            self._launch(self._program("lwe", LWE_GROUP=LWE_GROUP), "lwe_matmul_u8",
                         rows * LWE_GROUP, [db, self._upload(queries), out, np.uint64(rows),
                                            np.uint64(matrix.cols), np.uint64(batch)],
                         group=LWE_GROUP)
            words = self._download(out, ((batch * rows + 1) // 2,))
            return words.view(np.uint32)[: batch * rows].reshape(batch, rows).copy()

    # -- NTT (docs/ntt.md: same tables and steps as the CPU path) --------------------------

    def _ntt_plan_buffers(self, plan: Any) -> dict[str, Any]:
        buffers = self._ntt_tables.get(plan)
        if buffers is None:
            buffers = {
                name: self._upload(np.ascontiguousarray(getattr(plan, name), dtype=np.uint64))
                for name in ("moduli", "psi_rev", "psi_rev_shoup", "psi_inv_rev",
                             "psi_inv_rev_shoup", "n_inv", "n_inv_shoup", "barrett")
            }
            self._ntt_tables[plan] = buffers
        return buffers

    def _ntt_program(self, n: int) -> tuple[Any, int, int]:
        """The NTT program for size ``n``, its chunk and its work-group size."""
        chunk = min(n, NTT_MAX_CHUNK)
        # a work-item keeps the 2^NTT_MAX_FUSED coefficients of a round in registers
        threads = max(1, min(chunk >> NTT_MAX_FUSED, self.max_group_size()))
        program = self._program("ntt", NTT_CHUNK=chunk, NTT_LOG_CHUNK=chunk.bit_length() - 1,
                                NTT_THREADS=threads)
        return program, chunk, threads

    @staticmethod
    def _ntt_batch(plan: Any, a: Any) -> np.ndarray:
        a = _limb_array("a", a, 3)
        if a.shape[1:] != (plan.limbs, plan.n):
            raise ValueError(f"a must be shaped (B, {plan.limbs}, {plan.n}), got {a.shape}")
        return a

    def ntt_forward(self, plan: Any, a: np.ndarray) -> np.ndarray:
        """Forward negacyclic NTT of a ``(B, L, n)`` batch, output in bit-reversed order."""
        a = self._ntt_batch(plan, a)
        if a.size == 0:
            return a.copy()
        with self._device_call("ntt"):
            data = self._upload(a, writable=True)
            self.ntt_forward_resident(plan, data, a.shape[0])
            return self._download(data, a.shape)

    def ntt_inverse(self, plan: Any, a: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`ntt_forward`: bit-reversed evaluations back to coefficients."""
        a = self._ntt_batch(plan, a)
        if a.size == 0:
            return a.copy()
        with self._device_call("ntt"):
            data = self._upload(a, writable=True)
            self.ntt_inverse_resident(plan, data, a.shape[0])
            return self._download(data, a.shape)

    def ntt_polymul(self, plan: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Negacyclic product per limb of two ``(B, L, n)`` batches, all on the device."""
        a = self._ntt_batch(plan, a)
        b = self._ntt_batch(plan, b)
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: a is {a.shape}, b is {b.shape}")
        if a.size == 0:
            return a.copy()
        batch = a.shape[0]
        with self._device_call("ntt"):
            fa, fb = self._upload(a, writable=True), self._upload(b, writable=True)
            self.ntt_forward_resident(plan, fa, batch)
            self.ntt_forward_resident(plan, fb, batch)
            t = self._ntt_plan_buffers(plan)
            program = self._ntt_program(plan.n)[0]
            self._launch(program, "ntt_pointwise", a.size,
                         [fa, fb, t["moduli"], t["barrett"], np.uint32(plan.limbs),
                          np.uint32(plan.log_n), np.uint64(a.size)])
            self.ntt_inverse_resident(plan, fa, batch)
            return self._download(fa, a.shape)

    def ntt_forward_resident(self, plan: Any, data: Any, batch: int) -> None:
        """:meth:`ntt_forward` in place on a device buffer of ``batch * L * n`` words (the
        launches are queued; :meth:`synchronize` waits for them)."""
        rows, log_n = batch * plan.limbs, plan.log_n
        program, chunk, threads = self._ntt_program(plan.n)
        t = self._ntt_plan_buffers(plan)
        common = [t["psi_rev"], t["psi_rev_shoup"], t["moduli"], np.uint32(plan.limbs),
                  np.uint32(log_n)]
        # Global stages up to NTT_MAX_FUSED at a time, one pass over memory for each group.
        log_t, last_global = log_n - 1, chunk.bit_length() - 1
        while log_t >= last_global:
            fused = min(NTT_MAX_FUSED, log_t - last_global + 1)
            items = (rows * plan.n) >> fused
            self._launch(program, f"ntt_forward_stages{fused}", items,
                         [data, *common, np.uint32(log_t), np.uint64(items)])
            log_t -= fused
        self._launch(program, "ntt_forward_tail", rows * (plan.n // chunk) * threads,
                     [data, *common], group=threads)

    def ntt_inverse_resident(self, plan: Any, data: Any, batch: int) -> None:
        """:meth:`ntt_inverse` in place on a device buffer (see :meth:`ntt_forward_resident`)."""
        rows, log_n = batch * plan.limbs, plan.log_n
        program, chunk, threads = self._ntt_program(plan.n)
        t = self._ntt_plan_buffers(plan)
        tables = [t["psi_inv_rev"], t["psi_inv_rev_shoup"], t["moduli"], t["n_inv"],
                  t["n_inv_shoup"], np.uint32(plan.limbs), np.uint32(log_n)]
        global_stages = list(range(chunk.bit_length() - 1, log_n))
        self._launch(program, "ntt_inverse_head", rows * (plan.n // chunk) * threads,
                     [data, *tables, np.uint32(not global_stages)], group=threads)
        while global_stages:
            fused = min(NTT_MAX_FUSED, len(global_stages))
            finish = np.uint32(global_stages[fused - 1] == log_n - 1)
            items = (rows * plan.n) >> fused
            self._launch(program, f"ntt_inverse_stages{fused}", items,
                         [data, *tables, np.uint32(global_stages[0]), finish, np.uint64(items)])
            global_stages = global_stages[fused:]
