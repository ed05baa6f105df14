"""Additive secret sharing over Z_2^128 and the fixed-point encoding of aggregates.

Only a handful of aggregates per job are shared (counts, sums, cross products, bin counts),
so each is a Python int mod 2^128; the per-row work happens before, in numpy, on each party's
own rows. A value v is encoded as round(v * 2^FRAC_BITS) read in the ring's signed range
[-2^127, 2^127). Counts are encoded with scale 0 (exact integers).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence

RING_BITS = 128
MOD = 1 << RING_BITS
HALF = 1 << (RING_BITS - 1)
MASK = MOD - 1
# 32 fractional bits: 2^-32 (about 2.3e-10) absolute resolution per party and aggregate, and
# still 2^95 / n of headroom for sums of squares (see bound()); 24 bits would cost accuracy on
# small values for headroom nobody needs
FRAC_BITS = 32
SCALE = 1 << FRAC_BITS
_HEX = re.compile(r"[0-9a-f]{32}")


def bound(parties: int, scaled: bool = True) -> float:
    """The largest |local aggregate| one party may contribute: n parties each below
    2^127 / n (in ring units) keep the pooled total inside the signed range, so the
    reconstruction never wraps. In value units that is 2^(127 - FRAC_BITS) / n."""
    return float(HALF // parties) / (SCALE if scaled else 1)


def encode(value: float, parties: int, scaled: bool = True) -> int | None:
    """The ring element of one party's aggregate, or None when it is not finite or not
    below the per-party bound (checked on the exact integer, after rounding)."""
    if not math.isfinite(value):
        return None
    n = round(value * SCALE) if scaled else int(value)
    if abs(n) >= HALF // parties:
        return None
    return n & MASK


def decode(x: int) -> int:
    """A ring element read as a signed integer (still in ring units)."""
    x &= MASK
    return x - MOD if x >= HALF else x


def share(values: Sequence[int], parties: int) -> list[list[int]]:
    """n additive shares of each value: n-1 fresh uniform ones, the last makes the sum.
    Any n-1 of them are uniform and independent of the value."""
    out: list[list[int]] = [[] for _ in range(parties)]
    for v in values:
        rest = v
        for j in range(parties - 1):
            r = secrets.randbits(RING_BITS)
            out[j].append(r)
            rest -= r
        out[parties - 1].append(rest & MASK)
    return out


def add(vectors: Sequence[Sequence[int]]) -> list[int]:
    return [sum(col) & MASK for col in zip(*vectors, strict=True)]


def to_wire(values: Sequence[int]) -> list[str]:
    """Fixed-width hex (JSON numbers above 2^53 are not portable)."""
    return [format(v & MASK, "032x") for v in values]


def from_wire(items: object, length: int) -> list[int] | str:
    """The ring elements of a peer's list, or what is wrong with it."""
    if not isinstance(items, list):
        return f"a {type(items).__name__} where a list of ring elements belongs"
    if len(items) != length:
        return f"{len(items)} ring elements where {length} belong"
    for i, s in enumerate(items):
        if not isinstance(s, str) or not _HEX.fullmatch(s):
            return f"element {i} is not a 128-bit ring element in hex ({str(s)[:40]!r})"
    return [int(s, 16) for s in items]
