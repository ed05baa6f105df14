"""Numba compilation that keeps its machine code on disk where it can.

``numba.njit(cache=True)`` refuses to decorate, so the import fails, when no cache directory is
writable: not the package's ``__pycache__``, not ``NUMBA_CACHE_DIR``, not the user's cache (a
read-only image root and a service user without a home, say). There the kernels compile once
per process instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)``, falling back to no cache when none is writable."""

    def decorate(fn: Callable[..., Any]) -> Any:
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as exc:
            if "cannot cache" not in str(exc):
                raise
            return njit(**options)(fn)

    return decorate
