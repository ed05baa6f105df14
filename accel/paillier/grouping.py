"""Sums of ciphertexts by group, and several non-negative values packed into one ciphertext:
what a histogram of encrypted values (gradient boosting's per-bin gradient sums) needs.

    sums = grouping.group_sums(ea, bin_of_row, bins)     # [[sum of rows in bin b]] per b
    packed, layout = grouping.pack(sums, slot_bits=100)  # ~20 values a ciphertext
    values = grouping.unpack(sk.decrypt_mantissas(packed), layout)

``group_sums`` is one backend product call (the groups laid side by side, padded with the
trivial encryption of zero), like ``sum``. ``pack`` puts ``k`` values of at most
``slot_bits`` bits into one plaintext by Horner's rule on ciphertexts (``c * 2**slot + c'``),
so that the key holder decrypts ``k`` times fewer ciphertexts; it needs non-negative values
below ``2**slot_bits`` (checked from the array's bound where it can be).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from accel.paillier.array import EncryptedArray


def group_sums(a: EncryptedArray, groups: np.ndarray, count: int) -> EncryptedArray:
    """``[[sum of a[i] for i with groups[i] == g]]`` for g in 0..count-1 (an empty group
    sums to an encryption of zero). ``a`` is 1-D; ``groups`` holds ints in [0, count)."""
    from accel.paillier.arithmetic import _encryptions_of_zero

    groups = np.asarray(groups)
    if a.ndim != 1 or groups.shape != a.shape:
        raise ValueError(f"group_sums takes a 1-D array and one group per element "
                         f"({a.shape} and {groups.shape})")
    if groups.size and (groups.dtype.kind not in "iu" or groups.min() < 0
                        or groups.max() >= count):
        raise ValueError(f"groups must be integers in [0, {count})")
    sizes = np.bincount(groups, minlength=count) if groups.size else np.zeros(count, int)
    widest = int(sizes.max()) if count else 0
    L = a.public_key.limbs
    # the groups side by side, the shorter ones padded with the trivial encryption of zero;
    # then one sum down the columns (it checks the bound)
    data = _encryptions_of_zero(a, (max(widest, 1), count))
    if groups.size:
        order = np.argsort(groups, kind="stable")
        sorted_groups = groups[order]
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        slot = np.arange(groups.size) - starts[sorted_groups]
        data[slot, sorted_groups] = a.data.reshape(-1, L)[order]
    if widest <= 1:
        return a._like(data[0])
    return a._like(data).sum(axis=0)


@dataclass(frozen=True)
class Packing:
    """How ``pack`` laid the values out: ``count`` values, ``per`` to a ciphertext."""

    count: int
    per: int
    slot_bits: int


def pack(a: EncryptedArray, slot_bits: int) -> tuple[EncryptedArray, Packing]:
    """``a`` (1-D, integer values in [0, 2**slot_bits)) as ceil(n / per) ciphertexts."""
    from accel.paillier.arithmetic import _encryptions_of_zero, check_bound

    if a.ndim != 1 or a.scale != 0:
        raise ValueError("pack takes a 1-D array of integers (scale 0)")
    if a.bound >= 1 << slot_bits:
        raise OverflowError(f"values up to {a.bound.bit_length()} bits do not fit "
                            f"{slot_bits}-bit slots")
    per = max(1, (a.public_key.max_int.bit_length() - 1) // slot_bits)
    n = a.size
    layout = Packing(n, per, slot_bits)
    rows = -(-n // per)
    if n == 0:
        return a, layout
    L = a.public_key.limbs
    data = _encryptions_of_zero(a, (rows * per,))  # the padding
    data[:n] = a.data.reshape(-1, L)
    grid = a._like(data.reshape(rows, per, L))
    check_bound(a, (1 << (slot_bits * per)) - 1, 0, "packing")
    acc = grid[:, 0]
    for j in range(1, per):
        acc = acc * (1 << slot_bits) + grid[:, j]
    return acc, layout


def unpack(opened: list[int], layout: Packing) -> list[int]:
    """The values ``pack`` put in, from the decrypted mantissas of its ciphertexts."""
    rows = -(-layout.count // layout.per) if layout.count else 0
    if len(opened) != rows:
        raise ValueError(f"{len(opened)} packed values for {rows}")
    mask = (1 << layout.slot_bits) - 1
    out: list[int] = []
    for v in opened:
        if v < 0 or v.bit_length() > layout.slot_bits * layout.per:
            raise ValueError("a packed value does not fit its slots (an overflow or a "
                             "value that was negative)")
        out.extend((v >> (layout.slot_bits * (layout.per - 1 - j))) & mask
                   for j in range(layout.per))
    return out[: layout.count]
