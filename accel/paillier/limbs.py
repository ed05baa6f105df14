"""Linear-time arithmetic on limb arrays, vectorised with NumPy.

The backends do the quadratic work (modular products and powers). What is left around them is
linear: ``1 + m*n`` for small plaintexts, comparisons with a modulus, a modular addition, a
shift. Doing those here on whole batches keeps Python integers off the hot paths.

Carries are handled on 32-bit digits held in ``int64``: a digit sum or a signed difference then
never overflows, and one vectorised pass propagates a carry by one digit.
"""

from __future__ import annotations

import sys

import numpy as np

from accel.backends.base import int_to_limbs, limbs_for

if sys.byteorder != "little":  # the uint32 view of a limb array relies on it
    raise ImportError("accel.paillier needs a little-endian machine")

_MASK32 = np.int64(0xFFFFFFFF)


def to_digits(limbs: np.ndarray, width: int | None = None) -> np.ndarray:
    """``(N, L)`` uint64 limbs as ``(N, width)`` int64 32-bit digits (zero-padded)."""
    limbs = np.ascontiguousarray(limbs, dtype=np.uint64)
    digits = limbs.view(np.uint32).astype(np.int64)
    if width is not None and width > digits.shape[1]:
        digits = np.pad(digits, ((0, 0), (0, width - digits.shape[1])))
    return digits


def normalize(digits: np.ndarray) -> np.ndarray:
    """Propagate carries and borrows until every digit is in ``[0, 2**32)``, in place.

    Raises ``OverflowError`` when the value does not fit the width or is negative, which
    callers size so that it cannot happen for valid inputs.
    """
    while True:
        carry = digits >> 32  # arithmetic shift: a borrow is a carry of -1
        if not carry.any():
            return digits
        if carry[:, -1].any():
            raise OverflowError("limb arithmetic overflowed its width")
        digits &= _MASK32
        digits[:, 1:] += carry[:, :-1]


def from_digits(digits: np.ndarray, limbs: int) -> np.ndarray:
    """Normalised digits back to ``(N, limbs)`` uint64; the value must fit."""
    if digits.shape[1] > 2 * limbs and digits[:, 2 * limbs :].any():
        raise OverflowError(f"value does not fit in {limbs} limbs")
    out = np.zeros((digits.shape[0], 2 * limbs), dtype=np.uint32)
    keep = min(2 * limbs, digits.shape[1])
    out[:, :keep] = digits[:, :keep]
    return out.view(np.uint64)


def const_digits(value: int, width: int) -> np.ndarray:
    """A non-negative constant as a ``(width,)`` int64 digit row."""
    return to_digits(int_to_limbs(value, (width + 1) // 2)[None, :], width)[0, :width]


def mul_const(magnitude: np.ndarray, const: int, width: int) -> np.ndarray:
    """``magnitude[i] * const`` as normalised ``(N, width)`` digits; ``magnitude`` is
    ``(N, k)`` uint64 limbs with small ``k`` (a plaintext), ``const`` a modulus."""
    a = to_digits(magnitude)
    c = to_digits(int_to_limbs(const, limbs_for(const))[None, :])[0].astype(np.uint64)
    acc = np.zeros((a.shape[0], max(width, a.shape[1] + c.size + 1)), dtype=np.int64)
    for i in range(a.shape[1]):
        if not a[:, i].any():
            continue
        partial = a[:, i : i + 1].astype(np.uint64) * c[None, :]  # 32 x 32 -> 64 bits
        acc[:, i : i + c.size] += (partial & np.uint64(0xFFFFFFFF)).astype(np.int64)
        acc[:, i + 1 : i + 1 + c.size] += (partial >> np.uint64(32)).astype(np.int64)
    normalize(acc)
    if acc[:, width:].any():
        raise OverflowError("product does not fit the requested width")
    return acc[:, :width]


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
    wide = from_digits(s, L + 1)
    over = ~less_than(wide, modulus)
    if over.any():
        s[over] -= const_digits(modulus, 2 * L + 1)
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
