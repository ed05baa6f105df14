"""Fixed-point encoding of plaintext arrays: ``value = mantissa * 2**(-scale)``.

One binary scale serves a whole array. Integers get scale 0 and are exact. Floats get the
scale at which the largest magnitude keeps ``precision`` bits (53 by default, all that a
float64 carries), then the scale is lowered while every mantissa stays an integer, so exact
values such as 0.25 or 3.0 get short mantissas: that keeps exponents, and so ct x plaintext
work, small.

A mantissa travels as its magnitude in uint64 limbs plus a sign flag; a negative mantissa is
encoded modulo n as ``n - |m|``, as python-paillier does, so integers interoperate with it.

Plaintext *multipliers* (``ea * w``, ``ea @ W``, ...) are encoded with the operand precision:
``precision(bits)`` (a context manager) or ``set_precision(bits)`` (process-wide) lower it from
53 bits. Each multiplication by a float adds the multiplier's scale to the array's scale, and a
ciphertext's scale can never be lowered without the private key, so fewer bits per product is
what lets an iterative computation run longer between refreshes (``PrivateKey.refresh``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from accel.backends.base import ints_to_limbs, limbs_for, limbs_to_ints
from accel.paillier import limbs as lm

DEFAULT_PRECISION = 53
MAX_PRECISION = 62  # mantissas are rounded in int64

_global_precision = DEFAULT_PRECISION
_scoped_precision: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "paillier_operand_precision", default=None)


def _checked_precision(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError("precision must be an int number of bits")
    if not 1 <= bits <= MAX_PRECISION:
        raise ValueError(f"precision must be between 1 and {MAX_PRECISION} bits")
    return int(bits)


def operand_precision() -> int:
    """Bits kept of a plaintext float multiplier's largest magnitude (53 unless changed)."""
    scoped = _scoped_precision.get()
    return _global_precision if scoped is None else scoped


def set_precision(bits: int) -> None:
    """Set the operand precision for the whole process (threads included)."""
    global _global_precision
    _global_precision = _checked_precision(bits)


@contextlib.contextmanager
def precision(bits: int) -> Iterator[None]:
    """``with precision(20): ea * w`` encodes plaintext float multipliers with ``bits`` bits
    of their largest magnitude inside the block (this thread or task only)."""
    token = _scoped_precision.set(_checked_precision(bits))
    try:
        yield
    finally:
        _scoped_precision.reset(token)


@dataclass(frozen=True)
class Encoded:
    """A flattened plaintext array in fixed point."""

    magnitude: np.ndarray  # (N, k) uint64 limbs of |mantissa|
    negative: np.ndarray  # (N,) bool
    scale: int
    shape: tuple[int, ...]
    is_float: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64 if self.is_float else np.int64)

    @cached_property
    def peak(self) -> int:
        """The largest ``|mantissa|``, exactly (vectorised: one lexicographic sort of rows
        only when mantissas span several limbs)."""
        mag = self.magnitude
        if mag.shape[0] == 0:
            return 0
        if mag.shape[1] == 1:
            return int(mag[:, 0].max())
        top = np.lexsort(mag.T)[-1]  # lexsort's last key (the top limb) is the primary one
        return limbs_to_ints(mag[top : top + 1])[0]

    def column_l1_peak(self, rows: int, cols: int) -> int:
        """An upper bound of ``max_j sum_i |m[i, j]|`` for the mantissas seen as a
        ``(rows, cols)`` matrix: the growth factor of a matrix product's magnitude bound.

        One-limb mantissas are summed exactly in two 32-bit halves (no uint64 overflow for
        fewer than 2**32 rows); wider ones fall back to ``rows * peak``.
        """
        if rows == 0 or cols == 0:
            return 0
        if self.magnitude.shape[1] != 1:
            return rows * self.peak
        mag = self.magnitude[:, 0].reshape(rows, cols)
        low = (mag & np.uint64(0xFFFFFFFF)).sum(axis=0, dtype=np.uint64)
        high = (mag >> np.uint64(32)).sum(axis=0, dtype=np.uint64)
        return (int(high.max()) << 32) + int(low.max())

    def negated(self) -> Encoded:
        nonzero = self.magnitude.any(axis=1)
        return Encoded(self.magnitude, self.negative ^ nonzero, self.scale, self.shape,
                       self.is_float)

    def at_scale(self, scale: int) -> Encoded:
        """The same values at a higher (or equal) scale, exactly."""
        if scale < self.scale:
            raise ValueError("a plaintext can only be moved to a higher scale exactly")
        mag = lm.shift_left(self.magnitude, scale - self.scale)
        return Encoded(mag, self.negative, scale, self.shape, self.is_float)

    def check_fits(self, max_int: int) -> None:
        """Raise ``OverflowError`` when a mantissa is outside the key's plaintext band."""
        if lm.bit_length(self.magnitude) >= max_int.bit_length() and any(
            v > max_int for v in limbs_to_ints(self.magnitude)
        ):
            raise OverflowError(
                "plaintext too large for this key: |mantissa| must stay below n/3 "
                f"({max_int.bit_length()} bits) at scale {self.scale}"
            )


def as_plaintext(values: object) -> np.ndarray:
    """``values`` as an ndarray of a kind that can be encoded, or a clear ``TypeError``."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biuf":
        return arr
    if arr.dtype.kind == "O":
        flat = arr.ravel()
        if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in flat):
            return arr
        if all(isinstance(v, int | float | np.integer | np.floating) for v in flat):
            return arr.astype(np.float64)
    raise TypeError(
        f"cannot encrypt or combine with values of dtype {arr.dtype}: use integers or floats"
    )


def encode(values: object, precision: int = DEFAULT_PRECISION) -> Encoded:
    """Encode ``values`` (anything ``np.asarray`` takes) at their natural scale."""
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be between 1 and {MAX_PRECISION} bits")
    arr = as_plaintext(values)
    shape = arr.shape
    if arr.dtype.kind == "O":
        return _encode_python_ints(arr.ravel(), shape)
    if arr.dtype.kind in "biu":
        return _encode_machine_ints(arr.ravel(), shape)
    return _encode_floats(arr.astype(np.float64, copy=False).ravel(), shape, precision)


def _encode_machine_ints(flat: np.ndarray, shape: tuple[int, ...]) -> Encoded:
    if flat.dtype.kind == "u":
        mag = flat.astype(np.uint64)
        neg = np.zeros(flat.shape, dtype=bool)
    else:
        signed = flat.astype(np.int64)
        neg = signed < 0
        as_unsigned = signed.view(np.uint64)
        # two's complement negation in uint64 is exact even for the most negative int64
        mag = np.where(neg, np.uint64(0) - as_unsigned, as_unsigned)
    return Encoded(mag.reshape(-1, 1), neg, 0, shape, False)


def _encode_python_ints(flat: np.ndarray, shape: tuple[int, ...]) -> Encoded:
    ints = [int(v) for v in flat]
    neg = np.array([v < 0 for v in ints], dtype=bool)
    mags = [abs(v) for v in ints]
    width = max((limbs_for(v) for v in mags), default=1)
    return Encoded(ints_to_limbs(mags, width), neg, 0, shape, False)


def _encode_floats(flat: np.ndarray, shape: tuple[int, ...], precision: int) -> Encoded:
    if not np.isfinite(flat).all():
        raise ValueError("NaN or infinity cannot be encrypted or used with ciphertexts")
    peak = float(np.abs(flat).max()) if flat.size else 0.0
    if peak == 0.0:
        zeros = np.zeros((flat.size, 1), dtype=np.uint64)
        return Encoded(zeros, np.zeros(flat.size, dtype=bool), 0, shape, True)
    _, exponent = np.frexp(peak)  # peak = f * 2**exponent, 0.5 <= f < 1
    scale = precision - int(exponent)
    mantissa = np.rint(np.ldexp(flat, scale)).astype(np.int64)
    mag = np.abs(mantissa).astype(np.uint64)
    # lower the scale while every mantissa stays an integer (exact values get short ones)
    nonzero = mag[mag != 0]
    lowest_bit = nonzero & (np.uint64(0) - nonzero)
    trailing = int(np.frexp(lowest_bit.astype(np.float64))[1].min()) - 1
    new_scale = max(scale - trailing, min(0, scale))
    mag >>= np.uint64(scale - new_scale)
    return Encoded(mag.reshape(-1, 1), mantissa < 0, new_scale, shape, True)


def decode(mantissas: list[int], scale: int, is_float: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Signed mantissas back to values: float64, or int64 for integer arrays (object dtype
    holding Python ints when an integer result does not fit int64)."""
    if is_float:
        if scale >= 0:
            denom = 1 << scale
            vals = [m / denom for m in mantissas]  # int / int rounds correctly
        else:
            vals = [float(m << -scale) for m in mantissas]
        return np.array(vals, dtype=np.float64).reshape(shape)
    if scale != 0:
        raise ValueError("integer arrays have scale 0")
    lo, hi = -(1 << 63), (1 << 63) - 1
    if all(lo <= m <= hi for m in mantissas):
        return np.array(mantissas, dtype=np.int64).reshape(shape)
    out = np.empty(len(mantissas), dtype=object)
    out[:] = mantissas
    return out.reshape(shape)
