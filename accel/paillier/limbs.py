"""Linear-time arithmetic on limb arrays, vectorised with NumPy.

The backends do the quadratic work (modular products and powers). What is left around them is
linear: ``1 + m*n`` for small plaintexts, comparisons with a modulus, a modular addition, a
shift. Doing those here on whole batches keeps Python integers off the hot paths.

Carries are handled on 32-bit digits held in ``int64``, digit-major: a batch is a ``(W, N)``
array whose row ``j`` holds digit ``j`` of every value. A digit sum or a signed difference then
never overflows, and one carry sweep is ``W`` vectorised steps over contiguous rows.
"""

from __future__ import annotations

import sys

import numpy as np

from accel.backends.base import int_to_limbs, limbs_for

if sys.byteorder != "little":  # the uint32 view of a limb array relies on it
    raise ImportError("accel.paillier needs a little-endian machine")

_MASK32 = np.int64(0xFFFFFFFF)
_SMALL_BATCH = 1024


def to_digits(limbs: np.ndarray, width: int | None = None) -> np.ndarray:
    """``(N, L)`` uint64 limbs as ``(width, N)`` int64 digit rows (zero-padded)."""
    limbs = np.ascontiguousarray(limbs, dtype=np.uint64)
    have = 2 * limbs.shape[1]
    width = have if width is None else width
    out = np.zeros((max(width, have), limbs.shape[0]), dtype=np.int64)
    out[:have] = limbs.view(np.uint32).T
    return out[:width] if width >= have else _checked_trim(out, width)


def _checked_trim(digits: np.ndarray, width: int) -> np.ndarray:
    if digits[width:].any():
        raise OverflowError(f"value does not fit in {width} digits")
    return digits[:width]


def normalize(digits: np.ndarray) -> np.ndarray:
    """Propagate carries and borrows so every digit is in ``[0, 2**32)``, in place.

    Raises ``OverflowError`` when the value does not fit the width or is negative, which
    callers size so that it cannot happen for valid inputs.
    """
    if digits.shape[1] < _SMALL_BATCH:
        # Few values: a handful of whole-array passes beats one Python step per digit row.
        # Carries rarely travel more than a digit or two; a long ripple falls through below.
        for _ in range(4):
            carry = digits >> 32
            if not carry.any():
                return digits
            digits &= _MASK32
            digits[1:] += carry[:-1]
            if carry[-1].any():
                raise OverflowError("limb arithmetic overflowed its width")
    carry = np.zeros(digits.shape[1], dtype=np.int64)
    for row in digits:
        row += carry
        np.right_shift(row, 32, out=carry)  # arithmetic shift: a borrow is a carry of -1
        row &= _MASK32
    if carry.any():
        raise OverflowError("limb arithmetic overflowed its width")
    return digits


def from_digits(digits: np.ndarray, limbs: int) -> np.ndarray:
    """Normalised digit rows back to ``(N, limbs)`` uint64; the value must fit."""
    digits = _checked_trim(digits, min(digits.shape[0], 2 * limbs))
    if digits.shape[0] < 2 * limbs:
        digits = np.pad(digits, ((0, 2 * limbs - digits.shape[0]), (0, 0)))
    words = digits.astype(np.uint32)
    return np.ascontiguousarray(words.T).view(np.uint64)


def const_digits(value: int, width: int) -> np.ndarray:
    """A non-negative constant as a ``(width, 1)`` digit column."""
    return to_digits(int_to_limbs(value, (width + 1) // 2)[None, :], width)


def mul_const(magnitude: np.ndarray, const: int, width: int) -> np.ndarray:
    """``magnitude[i] * const`` as normalised ``(width, N)`` digit rows; ``magnitude`` is
    ``(N, k)`` uint64 limbs with small ``k`` (a plaintext), ``const`` a modulus."""
    a = to_digits(magnitude).astype(np.uint64)
    c = to_digits(int_to_limbs(const, limbs_for(const))[None, :])[:, 0].astype(np.uint64)
    size = max(width, a.shape[0] + c.size + 1)
    acc = np.zeros((size, a.shape[1]), dtype=np.int64)
    for i, row in enumerate(a):
        if not row.any():
            continue
        partial = c[:, None] * row[None, :]  # 32 x 32 -> 64 bits, never overflows
        acc[i : i + c.size] += (partial & np.uint64(0xFFFFFFFF)).astype(np.int64)
        acc[i + 1 : i + 1 + c.size] += (partial >> np.uint64(32)).astype(np.int64)
    normalize(acc)
    return _checked_trim(acc, width)


def less_than(a: np.ndarray, bound: int) -> np.ndarray:
    """Rows of ``a`` (``(N, L)`` uint64) strictly below ``bound``, as a bool ``(N,)`` array."""
    if bound.bit_length() > 64 * a.shape[1]:
        return np.ones(a.shape[0], dtype=bool)
    b = int_to_limbs(bound, a.shape[1])
    lt = a < b
    ne = lt | (a > b)
    top = a.shape[1] - 1 - np.argmax(ne[:, ::-1], axis=1)  # most significant differing limb
    return ne.any(axis=1) & lt[np.arange(a.shape[0]), top]


def is_zero(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` equal to zero."""
    return ~a.any(axis=1)


def add_mod(a: np.ndarray, b: np.ndarray, modulus: int) -> np.ndarray:
    """``(a + b) mod modulus`` for reduced ``(N, L)`` operands."""
    L = a.shape[1]
    s = to_digits(a, 2 * L + 1) + to_digits(b, 2 * L + 1)
    normalize(s)
    over = ~less_than(from_digits(s, L + 1), modulus)
    if over.any():
        s[:, over] -= const_digits(modulus, 2 * L + 1)
        normalize(s)
    return from_digits(s, L)


def shift_left(magnitude: np.ndarray, bits: int) -> np.ndarray:
    """``magnitude * 2**bits`` for ``(N, k)`` uint64 limbs, widened as needed."""
    if bits < 0:
        raise ValueError("shift must be non-negative")
    if bits == 0:
        return magnitude
    q, r = divmod(bits, 64)
    n, k = magnitude.shape
    out = np.zeros((n, k + q + 1), dtype=np.uint64)
    out[:, q : q + k] = magnitude << np.uint64(r)
    if r:
        out[:, q + 1 : q + k + 1] |= magnitude >> np.uint64(64 - r)
    return out


def bit_length(magnitude: np.ndarray) -> int:
    """Largest bit length over all rows of ``(N, k)`` uint64 limbs (0 for all zeros)."""
    nz = np.flatnonzero(magnitude.any(axis=0))
    if nz.size == 0:
        return 0
    top = int(nz[-1])
    return 64 * top + int(magnitude[:, top].max()).bit_length()
