"""Homomorphic arithmetic on ``EncryptedArray``: every heavy step is one backend batch call.

- ct + ct: ``mulmod``; ct + plaintext: ``mulmod`` by ``g**m`` (no randomness needed: the
  ciphertext operand already hides the sum).
- ct x plaintext: ``powmod`` with per-element exponents ``|w|``; where ``w < 0`` the ciphertext
  is inverted first (``invmod``), so a negative weight never becomes an n-bit exponent. A zero
  weight gives ``1``, a valid but not re-randomised encryption of zero, as in python-paillier;
  no result is re-randomised here (export does it, see ``EncryptedArray.to_bytes``).
- matrix products: ``multiexp`` over the ciphertexts (positive weights) and their inverses
  (negative weights), one call for the whole product.
- sums: ``prodmod`` along the reduced axes.
- scales align upwards: the lower-scale ciphertext is raised to ``2**d`` (a short powmod) or the
  plaintext is shifted; a product's scale is the sum of the factors' scales.

Magnitude bounds: every ``EncryptedArray`` carries ``bound >= |mantissa|`` for all its elements.
Each function here computes the result's bound from the operands' (a sum of bounds for
additions, bound x largest plaintext mantissa for products, bound x column L1 norm for matrix
products, bound x count for sums) *before* any backend work and refuses with ``OverflowError``
when it could pass the plaintext band ``n // 3 - 1``. Past the band a mantissa wraps modulo n
and decrypts to a wrong number, which is what ``e = e * 1.1`` repeated used to produce: each
product by a float adds its 53-bit scale, and nothing noticed when the mantissas outgrew n.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_tuple

from accel.backends.base import int_to_limbs, limbs_for
from accel.paillier import array as _array
from accel.paillier.encoding import Encoded, as_plaintext, encode, operand_precision
from accel.paillier.residues import g_power

if TYPE_CHECKING:
    from accel.paillier.array import EncryptedArray

CT_TIMES_CT = (
    "Paillier cannot multiply two ciphertexts: it is additively homomorphic only "
    "(multiply by a plaintext, or decrypt first)"
)


def is_encrypted(x: Any) -> bool:
    return isinstance(x, _array.EncryptedArray)


def check_same_key(a: EncryptedArray, b: EncryptedArray) -> None:
    if a.public_key != b.public_key:
        raise ValueError("the encrypted arrays are under different public keys")


def check_bound(a: EncryptedArray, bound: int, scale: int, what: str) -> int:
    """``bound`` if a result of that magnitude bound still decrypts correctly under ``a``'s
    key; otherwise ``OverflowError`` saying what happened and what to do."""
    max_int = a.public_key.max_int
    if bound <= max_int:
        return bound
    band = max_int.bit_length() - 1
    unknown = (
        " This array's magnitudes are unknown (ciphertexts imported by from_raw without "
        "bound=, or from format-1 bytes): pass the bound you can vouch for to from_raw."
        if a.bound == max_int else "")
    raise OverflowError(
        f"{what} refused: the result could leave the plaintext band of this "
        f"{a.public_key.n.bit_length()}-bit key (its fixed-point mantissas could need "
        f"{bound.bit_length()} bits at scale {scale}, the key holds {band}), and a value "
        "past the band wraps modulo n and would decrypt to a wrong number. Nothing was "
        "computed. Each product by a float adds that float's fractional bits to the scale, "
        "which only the key holder can lower: refresh the array with the key holder "
        "(sk.refresh(ea); in a protocol, mask it first), multiply with fewer bits "
        "(ea.mul(w, precision=24) or `with paillier.precision(24):`), or use a larger key."
        + unknown
    )


def _result_dtype(*floats: bool) -> np.dtype:
    return np.dtype(np.float64 if any(floats) else np.int64)


def _rows(a: EncryptedArray, shape: tuple[int, ...]) -> np.ndarray:
    """``a``'s ciphertexts broadcast to ``shape``, as a contiguous ``(N, L)`` batch."""
    L = a.public_key.limbs
    if a.shape == shape:
        return a.data.reshape(-1, L)
    return np.ascontiguousarray(np.broadcast_to(a.data, (*shape, L))).reshape(-1, L)


def _encryptions_of_zero(a: EncryptedArray, shape: tuple[int, ...]) -> np.ndarray:
    data = np.zeros((*shape, a.public_key.limbs), dtype=np.uint64)
    data[..., 0] = 1
    return data


def at_scale(a: EncryptedArray, scale: int) -> EncryptedArray:
    """``a`` moved up to ``scale`` by raising each ciphertext to ``2**(scale - a.scale)``."""
    d = scale - a.scale
    if d == 0:
        return a
    if d < 0:
        raise ValueError("scales only move up")
    bound = check_bound(a, a.bound << d, scale, "aligning scales")
    dtype = np.float64 if a.dtype.kind == "f" or scale != 0 else np.int64
    if a.size == 0:
        return a._like(a.data.copy(), scale, dtype, bound)
    be = a._backend("powmod", a.size)
    factor = int_to_limbs(1 << d, limbs_for(1 << d))[None, :]
    raised = be.powmod(a.data.reshape(-1, a.public_key.limbs), factor, a.public_key.nsquare)
    return a._like(raised.reshape(a.data.shape), scale, dtype, bound)


def _encode_operand(x: Any, precision: int | None = None) -> Encoded:
    """A plaintext operand in fixed point; ``precision`` (bits of its largest magnitude) only
    matters for floats, and multipliers pass the operand precision."""
    if is_encrypted(x):
        raise TypeError("expected a plaintext operand")
    if isinstance(x, Encoded):
        return x
    return encode(x, DEFAULT_ADD_PRECISION if precision is None else precision)


DEFAULT_ADD_PRECISION = 53  # an added plaintext does not compound: it keeps all its bits


def _multiplier(x: Any, precision: int | None) -> Encoded:
    return _encode_operand(x, operand_precision() if precision is None else precision)


def _sum_bound(*terms: tuple[int, int]) -> tuple[int, int]:
    """``(bound, scale)`` of a sum of terms given as ``(bound, scale)``, aligned upwards."""
    scale = max(s for _, s in terms)
    return sum(b << (scale - s) for b, s in terms), scale


def encrypt_trivially(like: EncryptedArray, values: Any) -> EncryptedArray:
    """Plaintext ``values`` as ciphertexts ``g**m = 1 + m*n`` under ``like``'s key, with no
    randomness: the array is marked not obfuscated, so it is re-randomised like any computed
    array before it leaves (``to_bytes``, ``raw``). Costs no exponentiation."""
    enc = _encode_operand(values)
    data = g_power(like.public_key, enc).reshape(*enc.shape, like.public_key.limbs)
    return like._like(data, enc.scale, enc.dtype, enc.peak)


def as_encrypted(x: Any, like: EncryptedArray) -> EncryptedArray:
    """``x`` itself when encrypted (same key as ``like``), else trivially encrypted."""
    if is_encrypted(x):
        check_same_key(like, x)
        return x
    return encrypt_trivially(like, x)


def add(a: Any, b: Any) -> EncryptedArray:
    if not is_encrypted(a):
        a, b = b, a
    if is_encrypted(b):
        check_same_key(a, b)
        bound, scale = _sum_bound((a.bound, a.scale), (b.bound, b.scale))
        check_bound(a, bound, scale, "addition")
        a, b = at_scale(a, scale), at_scale(b, scale)
        shape = np.broadcast_shapes(a.shape, b.shape)
        dtype = _result_dtype(a.dtype.kind == "f", b.dtype.kind == "f")
        if a.size == 1 and b.size != 1:
            a, b = b, a
        rhs = b.data.reshape(-1, a.public_key.limbs) if b.size == 1 else _rows(b, shape)
    else:
        enc = _encode_operand(b)
        bound, scale = _sum_bound((a.bound, a.scale), (enc.peak, enc.scale))
        check_bound(a, bound, scale, "addition")
        a, enc = at_scale(a, scale), enc.at_scale(scale)
        shape = np.broadcast_shapes(a.shape, enc.shape)
        dtype = _result_dtype(a.dtype.kind == "f", enc.is_float)
        gm = g_power(a.public_key, enc)
        if gm.shape[0] == 1:
            rhs = gm
        else:
            rhs = np.ascontiguousarray(
                np.broadcast_to(gm.reshape(*enc.shape, -1), (*shape, gm.shape[1]))
            ).reshape(-1, gm.shape[1])
    lhs = _rows(a, shape)
    if lhs.shape[0] == 0:
        return a._like(np.zeros((*shape, a.public_key.limbs), np.uint64), scale, dtype, bound)
    out = a._backend("mulmod", lhs.shape[0]).mulmod(lhs, rhs, a.public_key.nsquare)
    return a._like(out.reshape(*shape, -1), scale, dtype, bound)


def negative(a: EncryptedArray) -> EncryptedArray:
    if a.size == 0:
        return a.copy()
    rows = a.data.reshape(-1, a.public_key.limbs)
    inv = a._backend("invmod", a.size).invmod(rows, a.public_key.nsquare)
    return a._like(inv.reshape(a.data.shape))


def subtract(a: Any, b: Any) -> EncryptedArray:
    if is_encrypted(b):
        if is_encrypted(a):  # refuse before paying for the inverses
            check_same_key(a, b)
            check_bound(b, *_sum_bound((a.bound, a.scale), (b.bound, b.scale)), "subtraction")
        return add(a, negative(b))
    return add(a, _encode_operand(b).negated())


def multiply(a: Any, b: Any, *, precision: int | None = None) -> EncryptedArray:
    """``a * b`` with one plaintext factor, encoded on ``precision`` bits (the operand
    precision when None) of its largest magnitude if it holds floats."""
    if not is_encrypted(a):
        a, b = b, a
    if is_encrypted(b):
        raise TypeError(CT_TIMES_CT)
    enc = _multiplier(b, precision)
    shape = np.broadcast_shapes(a.shape, enc.shape)
    scale = a.scale + enc.scale
    bound = check_bound(a, a.bound * enc.peak, scale, "multiplication")
    dtype = _result_dtype(a.dtype.kind == "f", enc.is_float)
    bases = _rows(a, shape)
    count = bases.shape[0]
    if count == 0:
        return a._like(np.zeros((*shape, a.public_key.limbs), np.uint64), scale, dtype, bound)
    nsq = a.public_key.nsquare
    if enc.magnitude.shape[0] == 1:
        exps = enc.magnitude
        negative_rows = np.full(count, bool(enc.negative[0]))
    else:
        k = enc.magnitude.shape[1]
        exps = np.ascontiguousarray(
            np.broadcast_to(enc.magnitude.reshape(*enc.shape, k), (*shape, k))
        ).reshape(-1, k)
        negative_rows = np.broadcast_to(enc.negative.reshape(enc.shape), shape).ravel()
    be = a._backend("powmod", count)
    n_negative = int(np.count_nonzero(negative_rows))
    if n_negative:
        bases = bases.copy()  # may be a read-only view of ``a``
        if a.size < n_negative:
            # ``a`` was broadcast: invert each of its ciphertexts once, then spread them
            inverses = be.invmod(a.data.reshape(-1, a.public_key.limbs), nsq)
            spread = _rows(a._like(inverses.reshape(a.data.shape)), shape)
            bases[negative_rows] = spread[negative_rows]
        else:
            bases[negative_rows] = be.invmod(np.ascontiguousarray(bases[negative_rows]), nsq)
    out = be.powmod(bases, exps, nsq)
    return a._like(out.reshape(*shape, -1), scale, dtype, bound)


def true_divide(a: Any, b: Any, *, precision: int | None = None) -> EncryptedArray:
    if is_encrypted(b):
        raise TypeError("cannot divide by a ciphertext: Paillier has no encrypted division")
    w = as_plaintext(b).astype(np.float64)
    if (w == 0).any():
        raise ZeroDivisionError("division of an encrypted array by zero")
    return multiply(a, 1.0 / w, precision=precision)


def matmul(a: Any, b: Any, *, precision: int | None = None) -> EncryptedArray:
    """``a @ b`` where exactly one operand is encrypted."""
    if is_encrypted(a) and is_encrypted(b):
        raise TypeError(CT_TIMES_CT)
    if is_encrypted(a):
        return _encrypted_at_plain(a, as_plaintext(b), precision)
    w = as_plaintext(a)
    if w.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: input operand does not have enough dimensions")
    if w.ndim > 2:
        raise ValueError("matmul with a plaintext of more than 2 dimensions is not supported")
    # (W @ E)^T = E^T @ W^T, with ^T on the last two axes
    if b.ndim == 1:
        return _encrypted_at_plain(b, w.T, precision)
    flipped = _encrypted_at_plain(b.swapaxes(-1, -2), w.T, precision)
    return flipped if w.ndim == 1 else flipped.swapaxes(-1, -2)


def _encrypted_at_plain(a: EncryptedArray, w: np.ndarray, precision: int | None = None
                        ) -> EncryptedArray:
    if a.ndim == 0 or w.ndim == 0:
        raise ValueError("matmul: input operand does not have enough dimensions")
    if w.ndim > 2:
        raise ValueError("matmul with a plaintext of more than 2 dimensions is not supported")
    K = a.shape[-1]
    if w.shape[0] != K:
        raise ValueError(f"matmul: size mismatch, {a.shape} @ {w.shape} ({K} != {w.shape[0]})")
    M = w.shape[1] if w.ndim == 2 else 1
    lead = a.shape[:-1]
    out_shape = lead + ((M,) if w.ndim == 2 else ())
    enc = _multiplier(w, precision)
    scale = a.scale + enc.scale
    # |sum_k a_k w_km| <= bound(a) * max_m sum_k |w_km|: tighter than K * peak(w)
    bound = check_bound(a, a.bound * enc.column_l1_peak(K, M), scale, "matrix product")
    dtype = _result_dtype(a.dtype.kind == "f", enc.is_float)
    P = int(np.prod(lead, dtype=np.int64))
    L = a.public_key.limbs
    if K == 0 or P == 0 or M == 0:
        data = _encryptions_of_zero(a, out_shape)
        return a._like(data, scale, dtype, bound)
    bases = a.data.reshape(P, K, L)
    k = enc.magnitude.shape[1]
    mag = enc.magnitude.reshape(K, M, k)
    neg = enc.negative.reshape(K, M)
    exps = mag
    be = a._backend("multiexp", P * K * M)
    if neg.any():
        rows = np.flatnonzero(neg.any(axis=1))  # only these bases need an inverse
        inv = be.invmod(np.ascontiguousarray(bases[:, rows]).reshape(-1, L), a.public_key.nsquare)
        zero = np.uint64(0)
        positive_part = np.where(neg[..., None], zero, mag)
        negative_part = np.where(neg[rows][..., None], mag[rows], zero)
        bases = np.concatenate([bases, inv.reshape(P, rows.size, L)], axis=1)
        exps = np.concatenate([positive_part, negative_part], axis=0)
    out = be.multiexp(np.ascontiguousarray(bases), np.ascontiguousarray(exps),
                      a.public_key.nsquare)
    return a._like(out.reshape(*out_shape, L), scale, dtype, bound)


def dot(a: Any, b: Any, *, precision: int | None = None) -> EncryptedArray:
    """``np.dot`` for operands of at most two dimensions (a scalar operand multiplies)."""
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return multiply(a, b, precision=precision)
    if max(np.ndim(a), np.ndim(b)) > 2:
        raise ValueError("np.dot of encrypted arrays supports at most 2 dimensions; "
                         "use np.matmul for stacks or np.tensordot")
    return matmul(a, b, precision=precision)


def _reduced_axes(a: EncryptedArray, axis: Any) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(a.ndim))
    return normalize_axis_tuple(axis, a.ndim)


def sum_(a: EncryptedArray, axis: Any = None, keepdims: bool = False) -> EncryptedArray:
    axes = _reduced_axes(a, axis)
    kept = [i for i in range(a.ndim) if i not in axes]
    kept_shape = tuple(a.shape[i] for i in kept)
    K = int(np.prod([a.shape[i] for i in axes], dtype=np.int64))
    R = int(np.prod(kept_shape, dtype=np.int64))
    L = a.public_key.limbs
    bound = check_bound(a, a.bound * K, a.scale, f"sum of {K} elements")
    if K == 0 or R == 0:
        data = _encryptions_of_zero(a, kept_shape)
    else:
        moved = np.transpose(a.data, [*axes, *kept, a.ndim]).reshape(K, R, L)
        be = a._backend("prodmod", K * R)
        data = be.prodmod(np.ascontiguousarray(moved), a.public_key.nsquare).reshape(
            *kept_shape, L)
    if keepdims:
        data = data.reshape(*(1 if i in axes else a.shape[i] for i in range(a.ndim)), L)
    return a._like(data, bound=bound)


def mean(a: EncryptedArray, axis: Any = None, keepdims: bool = False) -> EncryptedArray:
    axes = _reduced_axes(a, axis)
    count = int(np.prod([a.shape[i] for i in axes], dtype=np.int64))
    if count == 0:
        raise ValueError("mean of an empty encrypted array")
    return multiply(sum_(a, axis, keepdims), np.float64(1.0 / count))
