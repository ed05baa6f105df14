"""Which backend runs a call, and what happens when a device fails during one.

Order of decision for one call of ``op`` over ``size`` elements:

1. an explicit ``backend=`` argument, else the innermost ``use(...)`` block;
2. otherwise the node's policy: ``"cpu-only"``, or ``"fastest-healthy"`` (the default), which
   sends the call to the healthy accelerator whose calibrated threshold for ``op`` the batch
   reaches (the lowest threshold wins a tie); without a calibration entry a backend is never
   picked automatically, so small batches and uncalibrated machines stay on the CPU;
3. a backend marked unhealthy is replaced by the CPU until a health probe brings it back.

``resolve`` hands out a :class:`RoutedBackend`: when the chosen device raises during a call
(``BackendError``, ``MemoryError`` or any runtime error other than bad input), the backend is
marked unhealthy, a warning is logged and the same call is redone on the CPU, whose result is
bit-identical by the protocol's contract.

Fault injection, for tests and drills: ``with inject_fault("opencl", "mulmod", "oom"):`` or
the environment variable ``PEC_ACCEL_FAULT="opencl:mulmod:oom,cuda:*:lost"`` make the device
backend raise inside the call, as the real runtime would, a kernel failure (``kernel``), a
lost device (``lost``) or an out-of-memory error (``oom``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from accel.backends.base import Backend, BackendError, FixedBaseTable
from accel.backends.calibration import Calibration

log = logging.getLogger("accel.backends")

FALLBACK = "cpu"
POLICIES = ("cpu-only", "fastest-healthy")
# Operations a device backend can be made to fail in (``ntt`` covers both directions).
# ``resolve`` takes any op name: callers route whole operations too ("encrypt", "decrypt");
# calibration.ROUTED_OPS lists the ones the accel code uses.
FAULT_OPS = (
    "mulmod", "powmod", "fixed_base_table", "powmod_fixed", "multiexp", "invmod", "ntt", "lwe",
)
FAULT_KINDS = ("kernel", "lost", "oom")
FAULT_ENV = "PEC_ACCEL_FAULT"
CACHE_ENV = "PEC_ACCEL_CACHE"
CALIBRATION_FILE = "calibration.json"

# name -> "module:Class" or a factory; modules are imported on first use so that a missing
# optional runtime (pyopencl, CUDA) never breaks ``import accel``.
_REGISTRY: dict[str, str | Callable[[], Backend]] = {
    "cpu": "accel.backends.cpu:CpuBackend",
    "opencl": "accel.backends.opencl.backend:OpenCLBackend",
    "cuda": "accel.backends.cuda.backend:CudaBackend",
}
_INSTANCES: dict[str, Backend] = {}
_UNAVAILABLE: dict[str, str] = {}  # name -> why it could not be created
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("accel_backend", default=None)
_STATE_LOCK = threading.RLock()


@dataclass
class Health:
    healthy: bool = True
    reason: str = ""
    checked_at: float = 0.0


_HEALTH: dict[str, Health] = {}
_POLICY = "fastest-healthy"
_CALIBRATION: Calibration | None = None  # loaded from disk on first need
_PROBE_INTERVAL: float | None = None
_FAULTS: list[tuple[str, str, str]] = []


# -- registry ------------------------------------------------------------------------------


def names() -> list[str]:
    """Names of all registered backends, available or not."""
    return list(_REGISTRY)


def register(name: str, factory: str | Callable[[], Backend]) -> None:
    """Add (or replace) a backend: ``"module:Class"`` or a callable returning the instance."""
    if not name or not isinstance(name, str):
        raise ValueError("a backend name must be a non-empty string")
    with _STATE_LOCK:
        _REGISTRY[name] = factory
        _INSTANCES.pop(name, None)
        _UNAVAILABLE.pop(name, None)
        _HEALTH.pop(name, None)


def unregister(name: str) -> None:
    """Remove a backend added with :func:`register`."""
    with _STATE_LOCK:
        _REGISTRY.pop(name, None)
        _INSTANCES.pop(name, None)
        _UNAVAILABLE.pop(name, None)
        _HEALTH.pop(name, None)


def get(name: str) -> Backend:
    """The backend instance called ``name``.

    Raises ``ValueError`` for an unknown name and ``BackendError`` (with the reason) for a
    known backend that cannot run here, e.g. no OpenCL platform or no NVIDIA GPU.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    with _STATE_LOCK:
        if name in _INSTANCES:
            return _INSTANCES[name]
        if name in _UNAVAILABLE:
            raise BackendError(f"backend {name!r} is not available: {_UNAVAILABLE[name]}")
        factory = _REGISTRY[name]
        try:
            if isinstance(factory, str):
                module_name, _, class_name = factory.partition(":")
                instance = getattr(importlib.import_module(module_name), class_name)()
            else:
                instance = factory()
        except Exception as exc:
            _UNAVAILABLE[name] = f"{type(exc).__name__}: {exc}"
            raise BackendError(f"backend {name!r} is not available: {_UNAVAILABLE[name]}") from exc
        _INSTANCES[name] = instance
        _HEALTH.setdefault(name, Health(checked_at=time.monotonic()))
        return instance


class BackendStatus(TypedDict):
    """One backend as :func:`available` reports it (JSON-ready: the daemon serves it as is)."""

    name: str
    devices: list[str]
    healthy: bool
    #: why it is unhealthy or absent; "" when healthy
    reason: str
    #: False when its runtime, driver or device is absent here (no pycuda/CuPy, no NVIDIA
    #: driver, no OpenCL platform): expected on many hosts, unlike a device that loads and
    #: then computes wrong
    loaded: bool


def available(*, refresh: bool = False) -> list[BackendStatus]:
    """Every registered backend, with its devices and health: the one survey of this host.

    With ``refresh`` each backend's health probe runs first (a backend that failed to start
    is tried again), and what it finds is what the router routes by from then on; without it
    the health recorded so far (by probes and device faults) is reported.
    """
    if refresh:
        probe()
    out: list[BackendStatus] = []
    for name in names():
        try:
            devices = get(name).devices()
        except BackendError:
            reason = _UNAVAILABLE.get(name, "failed to start")
            out.append(BackendStatus(name=name, devices=[], healthy=False, reason=reason,
                                     loaded=False))
            continue
        except Exception as exc:  # a runtime that loads but cannot list its devices
            out.append(BackendStatus(name=name, devices=[], healthy=False,
                                     reason=f"{type(exc).__name__}: {exc}", loaded=True))
            continue
        health = _HEALTH.get(name, Health())
        out.append(BackendStatus(name=name, devices=list(devices), healthy=health.healthy,
                                 reason=health.reason, loaded=True))
    return out


@contextlib.contextmanager
def use(name: str) -> Iterator[Backend]:
    """Force every accel call in this block (and this context) onto backend ``name``."""
    backend = get(name)
    token = _FORCED.set(name)
    try:
        yield backend
    finally:
        _FORCED.reset(token)


# -- policy, calibration, health -----------------------------------------------------------


def set_policy(name: str) -> None:
    """``"cpu-only"`` or ``"fastest-healthy"``; the node daemon sets it from the profile."""
    global _POLICY
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")
    _POLICY = name


def policy() -> str:
    return _POLICY


def calibration_path() -> Path:
    """Where the calibration lives: ``$PEC_ACCEL_CACHE`` or ``~/.cache/pec-accel``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(Path.home(), ".cache", "pec-accel")
    return Path(root) / CALIBRATION_FILE


def set_calibration(
    table: Calibration | Mapping[str, Mapping[str, int | None]], *, save: bool = True
) -> Path | None:
    """Route by ``table`` from now on: a :class:`Calibration` (what ``calibrate`` returns) or,
    set by hand, ``{backend: {op: batch size from which it beats the CPU}}``.

    With ``save`` the table is written atomically to :func:`calibration_path` so that the next
    process (the daemon after a restart) starts with it; returns the path written.
    """
    global _CALIBRATION
    checked = table if isinstance(table, Calibration) else Calibration(thresholds=dict(table))
    _CALIBRATION = checked
    return checked.save(calibration_path()) if save else None


def calibration() -> Calibration:
    """The calibration in force, read from disk the first time (empty when there is none)."""
    global _CALIBRATION
    if _CALIBRATION is None:
        path = calibration_path()
        try:
            _CALIBRATION = Calibration.load(path)
        except FileNotFoundError:
            _CALIBRATION = Calibration()
        except (ValueError, OSError) as exc:
            log.warning("ignoring unreadable calibration %s: %s", path, exc)
            _CALIBRATION = Calibration()
    return _CALIBRATION


def reload_calibration() -> Calibration:
    """Forget the in-memory calibration and read :func:`calibration_path` again (the daemon
    does this at start, so that it routes by the table its last calibration stored)."""
    global _CALIBRATION
    _CALIBRATION = None
    return calibration()


def set_probe_interval(seconds: float | None) -> None:
    """Re-probe an unhealthy backend at most every ``seconds`` when a call would want it
    (checked lazily by ``resolve``, no thread); ``None`` leaves it to :func:`probe`."""
    global _PROBE_INTERVAL
    if seconds is not None and seconds < 0:
        raise ValueError("probe interval must be >= 0 seconds or None")
    _PROBE_INTERVAL = seconds


def is_healthy(name: str) -> bool:
    return _HEALTH.get(name, Health()).healthy and name not in _UNAVAILABLE


def mark_unhealthy(name: str, reason: str) -> None:
    with _STATE_LOCK:
        _HEALTH[name] = Health(False, reason, time.monotonic())


def probe(names_: list[str] | None = None) -> dict[str, bool]:
    """Run each backend's health probe (retrying ones that failed to start) and record it."""
    results = {}
    for name in names_ if names_ is not None else names():
        with _STATE_LOCK:
            _UNAVAILABLE.pop(name, None)
        try:
            ok = get(name).health_probe()
            reason = "" if ok else "health probe computed a wrong answer or failed"
        except Exception as exc:
            ok, reason = False, str(exc)
        with _STATE_LOCK:
            _HEALTH[name] = Health(ok, reason, time.monotonic())
        if ok:
            log.info("backend %s is healthy", name)
        elif name in _UNAVAILABLE:
            # an absent runtime (CUDA on a box without NVIDIA) is expected, not a warning
            log.info("backend %s is not available: %s", name, _UNAVAILABLE[name])
        else:
            log.warning("backend %s is unhealthy: %s", name, reason)
        results[name] = ok
    return results


def _usable(name: str) -> bool:
    health = _HEALTH.get(name)
    if health is not None and not health.healthy:
        due = _PROBE_INTERVAL is not None and (
            time.monotonic() - health.checked_at >= _PROBE_INTERVAL
        )
        if not (due and probe([name])[name]):
            return False
    try:
        get(name)
    except BackendError:
        return False
    return True


def _choose(op: str, size: int) -> str:
    if _POLICY == "cpu-only" or not op:
        return FALLBACK
    candidates = []
    for name, ops in calibration().thresholds.items():
        threshold = ops.get(op)
        if name in _REGISTRY and name != FALLBACK and threshold is not None and size >= threshold:
            candidates.append((threshold, name))
    for _, name in sorted(candidates):
        if _usable(name):
            return name
    return FALLBACK


def resolve(backend: str | Backend | None = None, *, op: str = "", size: int = 0) -> Backend:
    """The backend that runs one call of ``op`` over ``size`` elements (see module doc)."""
    if isinstance(backend, Backend):
        return backend
    name = backend if backend is not None else _FORCED.get()
    if name is None:
        name = _choose(op, size)
    else:
        get(name)  # unknown or unavailable names fail here, loudly
        if name != FALLBACK and not _usable(name):
            name = FALLBACK
    return RoutedBackend(name)


# -- fallback ------------------------------------------------------------------------------

# Fixed-base tables are backend-specific; a call that lands on another backend (fallback, or
# a routing change) rebuilds the table there once and reuses it.
_FOREIGN_TABLES: OrderedDict[tuple[str, int, int, int], FixedBaseTable] = OrderedDict()
_FOREIGN_TABLES_SIZE = 16


def _table_for(backend: Backend, table: FixedBaseTable) -> FixedBaseTable:
    if table.backend == backend.name:
        return table
    key = (backend.name, table.base, table.modulus, table.exp_bits)
    with _STATE_LOCK:
        own = _FOREIGN_TABLES.get(key)
    if own is None:
        own = backend.fixed_base_table(table.base, table.modulus, table.exp_bits)
        with _STATE_LOCK:
            _FOREIGN_TABLES[key] = own
            if len(_FOREIGN_TABLES) > _FOREIGN_TABLES_SIZE:
                _FOREIGN_TABLES.popitem(last=False)
    return own


class RoutedBackend(Backend):
    """One backend, with the CPU standing in when it fails during a call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.target = get(name)

    def devices(self) -> list[str]:
        return self.target.devices()

    def health_probe(self) -> bool:
        return self.target.health_probe()

    def _call(self, op: str, *args: Any, method: str | None = None,
              on_cpu: Callable[..., Any] | None = None) -> Any:
        """Run ``method`` (default: ``op``) on the target; on a device fault, mark it
        unhealthy and run ``on_cpu`` (default: the same method of the CPU backend)."""
        method = method or op
        target = self.target
        if op == "powmod_fixed":
            args = (_table_for(target, args[0]), *args[1:])
        try:
            return getattr(target, method)(*args)
        except (ValueError, TypeError):
            raise  # bad input fails the same way everywhere: not a device fault
        except Exception as exc:
            if self.name == FALLBACK:
                raise
            reason = f"{type(exc).__name__}: {exc}"
            mark_unhealthy(self.name, reason)
            log.warning("backend %s failed in %s (%s); redoing the call on %s",
                        self.name, op, reason, FALLBACK)
        if on_cpu is not None:
            return on_cpu(*args)
        fallback = get(FALLBACK)
        if op == "powmod_fixed":
            args = (_table_for(fallback, args[0]), *args[1:])
        return getattr(fallback, method)(*args)

    def _ntt(self, what: str, plan: Any, *arrays: np.ndarray) -> np.ndarray:
        # The CPU's transform is the Numba path of accel.ntt, not a method of the CPU backend.
        from accel.ntt import cpu as ntt_cpu

        on_cpu = getattr(ntt_cpu, what)
        if not hasattr(self.target, f"ntt_{what}"):
            return on_cpu(plan, *arrays)
        return self._call("ntt", plan, *arrays, method=f"ntt_{what}", on_cpu=on_cpu)

    def lwe_matmul(self, matrix: Any, queries: np.ndarray) -> np.ndarray:
        """The LWE pass of a validated batch (``accel.lwe.Matrix.mul``); the CPU's is the C
        kernel of ``accel.lwe.cpu``, not a method of the CPU backend."""
        from accel.lwe import cpu as lwe_cpu

        if not hasattr(self.target, "lwe_matmul"):
            return lwe_cpu.matmul(matrix, queries)
        return self._call("lwe", matrix, queries, method="lwe_matmul", on_cpu=lwe_cpu.matmul)

    def ntt_forward(self, plan: Any, a: np.ndarray) -> np.ndarray:
        """Forward NTT of a validated ``(B, L, n)`` batch (``accel.ntt.Plan.forward``)."""
        return self._ntt("forward", plan, a)

    def ntt_inverse(self, plan: Any, a: np.ndarray) -> np.ndarray:
        """Inverse NTT of a validated ``(B, L, n)`` batch (``accel.ntt.Plan.inverse``)."""
        return self._ntt("inverse", plan, a)

    def ntt_polymul(self, plan: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Negacyclic products of validated batches (``accel.ntt.Plan.polymul``)."""
        return self._ntt("polymul", plan, a, b)

    def mulmod(self, a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
        return self._call("mulmod", a, b, modulus)

    def powmod(self, base: np.ndarray, exp: np.ndarray, modulus: int) -> np.ndarray:
        return self._call("powmod", base, exp, modulus)

    def fixed_base_table(self, base: int, modulus: int, exp_bits: int) -> FixedBaseTable:
        return self._call("fixed_base_table", base, modulus, exp_bits)

    def powmod_fixed(self, table: FixedBaseTable, exp: np.ndarray) -> np.ndarray:
        return self._call("powmod_fixed", table, exp)

    def multiexp(self, bases: np.ndarray, exps: np.ndarray, modulus: int) -> np.ndarray:
        return self._call("multiexp", bases, exps, modulus)

    def invmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        return self._call("invmod", a, modulus)

    def prodmod(self, a: np.ndarray, modulus: int) -> np.ndarray:
        return self._call("prodmod", a, modulus)


# -- fault injection -----------------------------------------------------------------------


class InjectedDeviceFault(RuntimeError):
    """What an injected ``kernel`` or ``lost`` fault raises inside a device backend."""


def _parse_faults(spec: str) -> list[tuple[str, str, str]]:
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or parts[2] not in FAULT_KINDS:
            raise ValueError(
                f"{FAULT_ENV} entry {item!r} must be backend:op:kind with kind one of "
                f"{', '.join(FAULT_KINDS)} (op may be *)"
            )
        faults.append((parts[0], parts[1], parts[2]))
    return faults


@contextlib.contextmanager
def inject_fault(backend: str, op: str = "*", kind: str = "kernel") -> Iterator[None]:
    """Make ``backend`` fail in ``op`` (``*``: every op) with ``kind`` inside this block."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    if op != "*" and op not in FAULT_OPS:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(FAULT_OPS)} or *")
    entry = (backend, op, kind)
    with _STATE_LOCK:
        _FAULTS.append(entry)
    try:
        yield
    finally:
        with _STATE_LOCK:
            _FAULTS.remove(entry)


def raise_injected_fault(backend: str, op: str) -> None:
    """Called by device backends at the start of each device operation."""
    with _STATE_LOCK:
        faults = list(_FAULTS)
    faults += _parse_faults(os.environ.get(FAULT_ENV, ""))
    for name, fault_op, kind in faults:
        if name == backend and fault_op in ("*", op):
            if kind == "oom":
                raise MemoryError(f"injected fault: out of device memory in {backend} {op}")
            if kind == "lost":
                raise InjectedDeviceFault(f"injected fault: {backend} device lost during {op}")
            raise InjectedDeviceFault(f"injected fault: {backend} kernel failed in {op}")
