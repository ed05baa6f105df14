"""NumPy dispatch for ``EncryptedArray``: ``__array_ufunc__`` and ``__array_function__``.

Structural functions (reshape, concatenate, stack, transpose, where, ...) run NumPy itself on
the arrays' opaque cells after aligning keys and scales, so their semantics are NumPy's; a plain
array among their inputs is encrypted with the key at hand. Linear functions (sum, cumsum, dot,
tensordot, einsum, ...) go to ``accel.paillier.arithmetic`` and ``accel.paillier.linear``.
Everything else raises a ``TypeError`` that names the function and says why Paillier cannot do
it, rather than NumPy's generic "no implementation found".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from accel.paillier import arithmetic, linear

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
    np.broadcast_to, np.concatenate, np.stack, np.vstack, np.hstack, np.dstack,
    np.column_stack, np.append, np.atleast_1d, np.atleast_2d, np.atleast_3d, np.copy, np.flip,
    np.fliplr, np.flipud, np.rot90, np.roll, np.take, np.repeat, np.tile, np.split,
    np.array_split, np.hsplit, np.vsplit, np.diagonal, np.shape, np.ndim, np.size,
}

# Functions whose sequence argument (the first) may mix ciphertexts and plaintexts.
_SEQUENCE_FIRST = {np.concatenate, np.stack, np.vstack, np.hstack, np.dstack, np.column_stack}

_COMPARES = (
    "it needs to compare or order the values, and Paillier ciphertexts cannot be compared "
    "without the private key (decrypt first, or compute it where the key is)"
)
_MULTIPLIES = (
    "it needs products of ciphertexts or a non-linear function of the values, and Paillier "
    "is only additively homomorphic: it adds ciphertexts and multiplies them by plaintexts "
    "(decrypt first, or compute it where the key is)"
)
_NEEDS_VALUES = "it needs the plaintext values (decrypt first)"


def _reasons() -> dict[Any, str]:
    compares = [
        "sort", "argsort", "partition", "argpartition", "max", "min", "amax", "amin", "argmax",
        "argmin", "ptp", "median", "percentile", "quantile", "nanmax", "nanmin", "nanmedian",
        "nanpercentile", "nanquantile", "nanargmax", "nanargmin", "unique", "clip",
        "searchsorted", "lexsort", "nonzero", "argwhere", "flatnonzero", "count_nonzero",
        "any", "all", "isclose", "allclose", "array_equal", "array_equiv", "sort_complex",
        "round", "around", "histogram", "digitize", "bincount", "maximum", "minimum", "fmax",
        "fmin", "absolute", "fabs", "sign", "floor", "ceil", "rint", "trunc", "fix", "greater",
        "greater_equal", "less", "less_equal", "equal", "not_equal", "logical_and",
        "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "isfinite",
        "heaviside", "floor_divide", "remainder", "mod", "fmod", "divmod", "extract",
        "select", "piecewise", "nan_to_num",
    ]
    multiplies = [
        "prod", "cumprod", "nanprod", "nancumprod", "var", "std", "nanvar", "nanstd", "cov",
        "corrcoef", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "power",
        "float_power", "sqrt", "cbrt", "square", "reciprocal", "sin", "cos", "tan", "arcsin",
        "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh", "arccosh",
        "arctanh", "hypot", "logaddexp", "logaddexp2", "inner", "vdot", "kron", "cross",
        "convolve", "correlate", "polyval", "interp",
    ]
    table: dict[Any, str] = {}
    for names, why in ((compares, _COMPARES), (multiplies, _MULTIPLIES)):
        for name in names:
            func = getattr(np, name, None)
            if func is not None:
                table[func] = why
    for func in (np.linalg.inv, np.linalg.det, np.linalg.norm, np.linalg.solve,
                 np.linalg.eig, np.linalg.svd, np.linalg.qr, np.linalg.cholesky):
        table[func] = _MULTIPLIES
    return table


_REASONS = _reasons()


def _name(func: Any) -> str:
    module = getattr(func, "__module__", None) or "numpy"
    prefix = "numpy.linalg." if "linalg" in module else "numpy."
    return prefix + getattr(func, "__name__", repr(func))


def refuse(func: Any) -> TypeError:
    """The ``TypeError`` for a NumPy function or ufunc that encrypted arrays cannot run."""
    why = _REASONS.get(func)
    if why is None:
        return TypeError(
            f"{_name(func)} is not supported on encrypted arrays: accel.paillier implements "
            "the linear operations (+, -, * and / by plaintexts, @, dot, tensordot, einsum, "
            "outer, sum, mean, average, cumsum, diff, trace) and the structural ones "
            "(indexing, reshape, concatenate, stack, where, ...). Decrypt first for anything "
            "else.")
    return TypeError(f"{_name(func)} is not supported on encrypted arrays: {why}")


def array_ufunc(ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict) -> Any:
    if ufunc is np.add and method == "reduce" and set(kwargs) <= {"axis", "keepdims"}:
        return arithmetic.sum_(inputs[0], kwargs.get("axis", 0), kwargs.get("keepdims", False))
    if ufunc is np.add and method == "accumulate" and set(kwargs) <= {"axis"}:
        return linear.cumsum(inputs[0], kwargs.get("axis", 0))
    if ufunc not in _UFUNCS:
        raise refuse(ufunc)
    if method != "__call__":
        raise TypeError(f"numpy.{ufunc.__name__}.{method} is not supported on encrypted arrays")
    if kwargs:
        raise TypeError(f"encrypted arrays do not support {', '.join(kwargs)}= in "
                        f"numpy.{ufunc.__name__}")
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


def _cumsum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None) -> Any:
    _refuse(dtype=dtype, out=out)
    return linear.cumsum(a, axis)


def _trace(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype: Any = None,
           out: Any = None) -> Any:
    _refuse(dtype=dtype, out=out)
    return linear.trace(a, offset, axis1, axis2)


def _outer(a: Any, b: Any, out: Any = None) -> Any:
    _refuse(out=out)
    return linear.outer(a, b)


def _einsum(*operands: Any, out: Any = None, dtype: Any = None, order: Any = "K",
            casting: Any = "safe", optimize: Any = False) -> Any:
    # order, casting and optimize only shape how NumPy computes: they change no value here
    _refuse(out=out, dtype=dtype)
    return linear.einsum(*operands)


_ARITHMETIC: dict[Callable[..., Any], Callable[..., Any]] = {
    np.sum: _sum, np.mean: _mean, np.dot: _dot, np.cumsum: _cumsum,
    np.diff: linear.diff, np.where: linear.where, np.outer: _outer, np.einsum: _einsum,
    np.tensordot: linear.tensordot, np.average: linear.average, np.trace: _trace,
}


def array_function(func: Any, args: tuple, kwargs: dict) -> Any:
    if func in _ARITHMETIC:
        return _ARITHMETIC[func](*args, **kwargs)
    if func not in _STRUCTURAL:
        raise refuse(func)
    found: list[Any] = []
    _collect(args, found)
    _collect(kwargs, found)
    if not found:
        return NotImplemented
    first = found[0]
    if func in _SEQUENCE_FIRST and args and isinstance(args[0], list | tuple):
        args = (_encrypt_members(args[0], first), *args[1:])
    elif func is np.append:
        args = tuple(linear.as_encrypted(x, first) if i < 2 else x for i, x in enumerate(args))
    found = []
    _collect(args, found)
    _collect(kwargs, found)
    for other in found[1:]:
        arithmetic.check_same_key(first, other)
    scale = max(x.scale for x in found)
    aligned = {id(x): arithmetic.at_scale(x, scale) for x in found}
    dtype = np.dtype(np.float64 if any(x.dtype.kind == "f" for x in found) else np.int64)
    bound = max(x.bound for x in aligned.values())  # cells are moved, never combined
    result = func(*_to_cells(args, aligned), **_to_cells(kwargs, aligned))
    fresh = all(x.obfuscated for x in aligned.values())
    return _wrap(result, first, scale, dtype, fresh, bound)


def _encrypt_members(seq: Any, like: Any) -> Any:
    """Plain members of a sequence as (trivial) ciphertexts under ``like``'s key: the public
    key is at hand, and a result mixing them is re-randomised before it leaves."""
    return type(seq)(linear.as_encrypted(x, like) for x in seq)


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


def _wrap(result: Any, like: Any, scale: int, dtype: np.dtype, fresh: bool, bound: int) -> Any:
    if isinstance(result, np.ndarray | np.void) and np.asarray(result).dtype.kind == "V":
        return like._from_cells(np.asarray(result), scale, dtype, fresh, bound)
    if isinstance(result, list | tuple):
        return type(result)(_wrap(r, like, scale, dtype, fresh, bound) for r in result)
    return result
