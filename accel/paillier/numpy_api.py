"""NumPy dispatch for ``EncryptedArray``: ``__array_ufunc__`` and ``__array_function__``.

Structural functions (reshape, concatenate, stack, transpose, ...) run NumPy itself on the
arrays' opaque cells after aligning keys and scales, so their semantics are NumPy's. Arithmetic
goes to ``accel.paillier.arithmetic``. Anything else returns ``NotImplemented`` and NumPy
raises its usual ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from accel.paillier import arithmetic

_UFUNCS: dict[np.ufunc, Callable[..., Any]] = {
    np.add: arithmetic.add,
    np.subtract: arithmetic.subtract,
    np.multiply: arithmetic.multiply,
    np.true_divide: arithmetic.true_divide,
    np.negative: arithmetic.negative,
    np.positive: lambda a: a,
    np.matmul: arithmetic.matmul,
}

_STRUCTURAL = {
    np.reshape, np.transpose, np.ravel, np.squeeze, np.expand_dims, np.swapaxes, np.moveaxis,
    np.broadcast_to, np.concatenate, np.stack, np.vstack, np.hstack, np.atleast_1d,
    np.atleast_2d, np.copy, np.flip, np.roll, np.take, np.repeat, np.tile, np.split,
    np.array_split, np.shape, np.ndim, np.size,
}


def array_ufunc(ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict) -> Any:
    if ufunc is np.add and method == "reduce" and set(kwargs) <= {"axis", "keepdims"}:
        return arithmetic.sum_(inputs[0], kwargs.get("axis", 0), kwargs.get("keepdims", False))
    if method != "__call__" or kwargs or ufunc not in _UFUNCS:
        return NotImplemented
    return _UFUNCS[ufunc](*inputs)


def _sum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False,
         **unsupported: Any) -> Any:
    _refuse(dtype=dtype, out=out, **unsupported)
    return arithmetic.sum_(a, axis, keepdims)


def _mean(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False,
          **unsupported: Any) -> Any:
    _refuse(dtype=dtype, out=out, **unsupported)
    return arithmetic.mean(a, axis, keepdims)


def _dot(a: Any, b: Any, out: Any = None) -> Any:
    _refuse(out=out)
    return arithmetic.dot(a, b)


def _refuse(**options: Any) -> None:
    used = [k for k, v in options.items() if v is not None and v is not np._NoValue]
    if used:
        raise TypeError(f"encrypted arrays do not support {', '.join(used)}=")


_ARITHMETIC: dict[Callable[..., Any], Callable[..., Any]] = {
    np.sum: _sum, np.mean: _mean, np.dot: _dot,
}


def array_function(func: Any, args: tuple, kwargs: dict) -> Any:
    if func in _ARITHMETIC:
        return _ARITHMETIC[func](*args, **kwargs)
    if func not in _STRUCTURAL:
        return NotImplemented
    found: list[Any] = []
    _collect(args, found)
    _collect(kwargs, found)
    if not found:
        return NotImplemented
    first = found[0]
    for other in found[1:]:
        arithmetic.check_same_key(first, other)
    scale = max(x.scale for x in found)
    aligned = {id(x): arithmetic.at_scale(x, scale) for x in found}
    dtype = np.dtype(np.float64 if any(x.dtype.kind == "f" for x in found) else np.int64)
    result = func(*_to_cells(args, aligned), **_to_cells(kwargs, aligned))
    fresh = all(x.obfuscated for x in aligned.values())
    return _wrap(result, first, scale, dtype, fresh)


def _collect(obj: Any, found: list) -> None:
    if arithmetic.is_encrypted(obj):
        found.append(obj)
    elif isinstance(obj, list | tuple):
        for x in obj:
            _collect(x, found)
    elif isinstance(obj, dict):
        for x in obj.values():
            _collect(x, found)


def _to_cells(obj: Any, aligned: dict) -> Any:
    if arithmetic.is_encrypted(obj):
        return aligned[id(obj)].cells
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cells(x, aligned) for x in obj)
    if isinstance(obj, dict):
        return {k: _to_cells(v, aligned) for k, v in obj.items()}
    return obj


def _wrap(result: Any, like: Any, scale: int, dtype: np.dtype, fresh: bool) -> Any:
    if isinstance(result, np.ndarray | np.void) and np.asarray(result).dtype.kind == "V":
        return like._from_cells(np.asarray(result), scale, dtype, fresh)
    if isinstance(result, list | tuple):
        return type(result)(_wrap(r, like, scale, dtype, fresh) for r in result)
    return result
