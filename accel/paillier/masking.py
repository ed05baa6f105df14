"""Decryption by the key holder for another party, without the key holder learning the values.

A protocol often has party A holding ``[[v]]`` under party B's key, and A must learn ``v``
while B must not (a host's encrypted gradient under the guest's key). A adds a random mask
to every fixed-point mantissa, B decrypts the mantissas exactly, A subtracts the mask:

    masked, mask = masking.mask(ea)          # A: [[m + r]], r uniform on [0, 2^(b + s))
    opened = sk.decrypt_mantissas(masked)    # B: the integers m + r, nothing rounded
    values = masking.unmask(opened, mask)    # A: (m + r - r) / 2^scale, as decrypt would

Why integers: a float mask added to a small value loses the value's low bits when the sum is
rounded to float64 (a mask near 2^40 leaves a gradient of 1e-3 about 12 bits). The mask is
added to the mantissa, so nothing is rounded until A decodes its own value.

What B sees: ``m + r`` with ``|m| <= bound`` and ``r`` uniform on ``[0, 2^(bits(bound) + s))``:
statistically hidden up to a distance of ``2^-s`` per element (``s`` = 40 by default).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from accel.backends.base import ints_to_limbs, limbs_for
from accel.paillier.encoding import Encoded, decode

if TYPE_CHECKING:
    from accel.paillier.array import EncryptedArray

STATISTICAL_BITS = 40


@dataclass(frozen=True)
class Mask:
    """What the masking party keeps to unmask: the mask's integers and the array's layout."""

    values: tuple[int, ...]
    scale: int
    shape: tuple[int, ...]
    is_float: bool
    bits: int  # the masked mantissas are below 2^bits plus the array's bound

    def __len__(self) -> int:
        return len(self.values)


def mask(a: EncryptedArray, *, statistical_bits: int = STATISTICAL_BITS
         ) -> tuple[EncryptedArray, Mask]:
    """``a`` with a fresh uniform mask on each mantissa, and the mask. ``OverflowError``
    (nothing computed) when the key's plaintext band cannot hold the masked values."""
    if not 16 <= statistical_bits <= 256:
        raise ValueError("statistical_bits must be 16..256")
    bits = max(a.bound.bit_length(), 1) + statistical_bits
    values = tuple(secrets.randbits(bits) for _ in range(a.size))
    width = max(limbs_for(1 << bits), 1)
    enc = Encoded(ints_to_limbs(list(values), width), np.zeros(a.size, dtype=bool), a.scale,
                  a.shape, a.dtype.kind == "f")
    masked = a + enc  # an Encoded operand is added as it is: mantissa to mantissa
    return masked, Mask(values, a.scale, a.shape, a.dtype.kind == "f", bits)


def unmask(opened: list[int], m: Mask) -> np.ndarray:
    """The values under ``m`` from the key holder's decrypted mantissas; ``ValueError`` when
    they cannot be the masked values (a count or a magnitude that does not fit)."""
    if len(opened) != len(m.values):
        raise ValueError(f"{len(opened)} decrypted values for {len(m.values)} masked ones")
    out = []
    for v, r in zip(opened, m.values, strict=True):
        if not isinstance(v, int) or isinstance(v, bool) or v.bit_length() > m.bits + 2:
            raise ValueError("a decrypted value is not an integer of the masked size")
        out.append(v - r)
    return decode(out, m.scale, m.is_float, m.shape)


def mantissas_to_wire(values: list[int]) -> list[str]:
    """Decrypted mantissas for a JSON message (hex: JSON numbers lose big integers)."""
    return [format(v, "x") if v >= 0 else "-" + format(-v, "x") for v in values]


def mantissas_from_wire(values: object, count: int) -> list[int]:
    """The inverse of ``mantissas_to_wire``; ``ValueError`` on anything else."""
    if not (isinstance(values, list) and len(values) == count
            and all(isinstance(v, str) and 0 < len(v) <= 2048 for v in values)):
        raise ValueError(f"expected {count} hexadecimal integers")
    return [int(v, 16) for v in values]
