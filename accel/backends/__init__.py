"""Backend registry and router.

Callers never pick a backend class themselves: they ask ``resolve()`` for the backend that
should run a call, given an explicit ``backend=`` argument, the innermost ``accel.use(...)``
block, or (later) the node's policy and calibration.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator

from accel.backends.base import Backend, BackendError, FixedBaseTable

__all__ = ["Backend", "BackendError", "FixedBaseTable", "get", "names", "resolve", "use"]

# name -> "module:Class"; modules are imported on first use so that a missing optional runtime
# (pyopencl, CUDA) never breaks ``import accel``.
_REGISTRY: dict[str, str] = {
    "cpu": "accel.backends.cpu:CpuBackend",
}
_INSTANCES: dict[str, Backend] = {}
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("accel_backend", default=None)


def names() -> list[str]:
    """Names of all registered backends, available or not."""
    return list(_REGISTRY)


def get(name: str) -> Backend:
    """The backend instance called ``name``; raises ``ValueError`` for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_REGISTRY)}")
    if name not in _INSTANCES:
        module_name, _, class_name = _REGISTRY[name].partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        _INSTANCES[name] = cls()
    return _INSTANCES[name]


@contextlib.contextmanager
def use(name: str) -> Iterator[Backend]:
    """Force every accel call in this block (and this context) onto backend ``name``."""
    backend = get(name)
    token = _FORCED.set(name)
    try:
        yield backend
    finally:
        _FORCED.reset(token)


def resolve(backend: str | Backend | None = None, *, op: str = "", size: int = 0) -> Backend:
    """The backend that runs one call of ``op`` over ``size`` elements."""
    if isinstance(backend, Backend):
        return backend
    if backend is not None:
        return get(backend)
    forced = _FORCED.get()
    if forced is not None:
        return get(forced)
    return get("cpu")
