"""The joint-statistics programs that run inside SPU, as JAX functions.

Imported by the stats engine (``spu_engine.py``) and by the benchmark's SPU reference
(``appliance/bench/stats_reference.py``), both under the engine venv's interpreter (jax, spu
0.9.5, numpy<2): so this module imports nothing of ``appliance`` and imports jax only inside
the functions. The reference times the very program the engine runs, in SPU's simulator.

Inputs are per party, in the job's party order (sorted node ids):
- ``rows`` layout: a float64 matrix rows x columns per party (the same columns everywhere);
- ``columns`` layout: per party an int64 matrix rows x 2 (the two 64-bit halves of each row's
  128-bit key, from the id column) and, where the party holds columns, a float64 matrix rows x
  its columns. Every party's keys are distinct (each party checks its own).

Outputs are a dict name -> array, opened to the receivers only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: a value no input reaches (inputs are below 2^40 in magnitude): rows outside the
#: intersection are pushed past the ends with it before a minimum, maximum or sort
OUTSIDE = float(2 ** 41)


@dataclass(frozen=True)
class Request:
    """What a program computes besides the count (the same at every party)."""

    sums: bool = False
    squares: bool = False  # the diagonal of ``cross`` only
    cross: bool = False  # the whole matrix of sums of products
    minmax: bool = False
    levels: tuple[float, ...] = ()  # quantile levels (NumPy's linear interpolation)
    edges: tuple[float, ...] = ()  # histogram bin edges (NumPy's bins, the last closed)
    threshold: float | None = None  # count and sum of the rows whose row sum exceeds it
    scales: tuple[float, ...] = ()  # per column, a power of two (1 for most) that keeps its
    # sums of products inside the fixed point (columns.exponent)
    dp: bool = False  # each party also gives its part of the noise of every released output
    # group-by: the joined column that holds each row's group number (-1: in no listed
    # group; it is not a statistic's column), and how many groups
    group: tuple[int, int] | None = None

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Request:
        """From its fields as JSON carries them (lists where the fields are tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def noisy_outputs(req: Request, width: int) -> list[tuple[str, tuple[int, ...]]]:
    """With ``dp``: the outputs that get noise and their shapes, in the order of each party's
    noise vector (the order statistics are not released with noise)."""
    out: list[tuple[str, tuple[int, ...]]] = [("count", ())]
    if req.sums:
        out.append(("sum", (width,)))
    if req.cross:
        out.append(("cross", (width, width)))
    elif req.squares:
        out.append(("cross", (width,)))
    if req.edges:
        out.append(("hist", (width, len(req.edges) - 1)))
    if req.threshold is not None:
        out += [("threshold_count", ()), ("threshold_sum", ())]
    if req.group is not None:
        out += [("group_count", (req.group[1],)), ("group_sum", (req.group[1], width))]
    return out


def rows_order_program(levels: tuple[float, ...], total: int) -> Callable[..., Any]:
    """Rows layout: per column the minimum, the maximum and the quantiles at ``levels`` of
    the parties' concatenated rows (``total`` of them, public: SPU needs the shapes)."""
    import math

    import jax.numpy as jnp

    picks = []
    for q in levels:  # positions known to all: the row count is public here
        pos = q * (total - 1)
        lo = math.floor(pos)
        picks.append((lo, min(lo + 1, total - 1), pos - lo))

    def program(*parts: Any) -> dict[str, Any]:
        v = jnp.concatenate(parts, axis=0).T  # columns x rows: SPU sorts along the last axis
        if not picks:
            return {"min": jnp.min(v, axis=1), "max": jnp.max(v, axis=1)}
        s = jnp.sort(v, axis=1)  # sorted anyway: its ends are the minimum and the maximum
        out = {"min": s[:, 0], "max": s[:, -1]}
        for i, (lo, hi, frac) in enumerate(picks):
            out[f"q{i}"] = s[:, lo] + frac * (s[:, hi] - s[:, lo])
        return out

    return program


def columns_program(parties: int, widths: list[int], req: Request) -> Callable[..., Any]:
    """Columns layout: the rows whose key every party holds, joined, and their statistics,
    without the join ever leaving SPU.

    The arguments are, per party in order, its keys, (where ``widths[g] > 0``) its values and
    (with ``req.dp``) its part of the noise, added to the outputs before they are opened.
    All parties' rows are stacked, each party's columns in its own block (zeros elsewhere),
    and sorted obliviously by the 128-bit key. A key that all ``parties`` hold then fills
    ``parties`` consecutive places, and no other key does (each party's keys are distinct):
    place i starts a joined row exactly when the key at i equals the key at i + parties - 1,
    and the joined row is the sum of those places' blocks. Every statistic is a sum over the
    places with that indicator, so which rows matched, and how many, stays secret; only the
    opened outputs (the count among them) are learned, and only by the receivers."""
    import math

    import jax
    import jax.numpy as jnp

    width = sum(widths)
    offsets = [sum(widths[:g]) for g in range(parties)]

    def program(*flat: Any) -> dict[str, Any]:
        keys, blocks, noise, at = [], [], [], 0
        for g in range(parties):
            k = flat[at]
            at += 1
            rows = k.shape[0]
            keys.append(k)
            if widths[g]:
                v = flat[at]
                at += 1
                blocks.append(jnp.concatenate(
                    [jnp.zeros((rows, offsets[g])), v,
                     jnp.zeros((rows, width - offsets[g] - widths[g]))], axis=1))
            else:
                blocks.append(jnp.zeros((rows, width)))
            if req.dp:
                noise.append(flat[at])
                at += 1
        key = jnp.concatenate(keys, axis=0)
        val = jnp.concatenate(blocks, axis=0)
        srt = jax.lax.sort([key[:, 0], key[:, 1], *[val[:, c] for c in range(width)]],
                           num_keys=2)
        k0, k1 = srt[0], srt[1]
        places = key.shape[0] - parties + 1
        last = parties - 1
        hit = (k0[:places] == k0[last:]) & (k1[:places] == k1[last:])
        joined = sum(jnp.stack(srt[2:], axis=1)[t:t + places] for t in range(parties))
        cols = width
        if req.group is not None:  # the group numbers ride the sort; not a statistic's column
            at_g, groups = req.group
            group_of = joined[:, at_g]
            joined = jnp.concatenate([joined[:, :at_g], joined[:, at_g + 1:]], axis=1)
            cols = width - 1
        count = jnp.sum(hit.astype(jnp.int64))
        out: dict[str, Any] = {"count": count}
        inside = hit[:, None]
        rows_in = jnp.where(inside, joined, 0.0)
        if req.sums:
            out["sum"] = jnp.sum(rows_in, axis=0)
        if req.cross or req.squares:
            # dot products: SPU sums in the ring and truncates once (an element-wise product
            # would truncate every term, and small terms keep few bits)
            scaled = rows_in * jnp.asarray(req.scales) if any(
                s != 1.0 for s in req.scales) else rows_in
            out["cross"] = (scaled.T @ scaled if req.cross else jnp.stack(
                [scaled[:, c] @ scaled[:, c] for c in range(cols)]))
        if req.threshold is not None:
            row_sum = jnp.sum(joined, axis=1)
            above = hit & (row_sum > req.threshold)
            out["threshold_count"] = jnp.sum(above.astype(jnp.int64))
            out["threshold_sum"] = jnp.sum(jnp.where(above, row_sum, 0.0))
        if req.edges:
            # at-or-above each edge; the last bin is closed, so past the last edge too
            at_least = [jnp.sum((inside & (joined >= e)).astype(jnp.int64), axis=0)
                        for e in req.edges]
            past = jnp.sum((inside & (joined > req.edges[-1])).astype(jnp.int64), axis=0)
            bins = [at_least[b] - at_least[b + 1] for b in range(len(req.edges) - 2)]
            bins.append(at_least[-2] - past)
            out["hist"] = jnp.stack(bins, axis=1)  # columns x bins
        if req.minmax:
            out["min"] = jnp.min(jnp.where(inside, joined, OUTSIDE), axis=0)
            out["max"] = jnp.max(jnp.where(inside, joined, -OUTSIDE), axis=0)
        if req.levels:
            # the joined rows first, in order; the others past the top
            s = jnp.sort(jnp.where(inside, joined, OUTSIDE).T, axis=1)
            index = jnp.arange(places, dtype=jnp.float64)
            top = count.astype(jnp.float64) - 1.0
            for i, q in enumerate(req.levels):
                # the position is secret (the count is): each end picked by a one-hot sum.
                # The interpolation is continuous, so a position a fixed-point step off
                # gives the same value to that step.
                pos = q * top
                lo = jnp.floor(pos)
                hi = jnp.minimum(lo + 1.0, top)
                at_lo = jnp.sum(jnp.where(index == lo, s, 0.0), axis=1)
                at_hi = jnp.sum(jnp.where(index == hi, s, 0.0), axis=1)
                out[f"q{i}"] = at_lo + (pos - lo) * (at_hi - at_lo)
        if req.group is not None:
            # selects, not products: a product with a 0/1 number would be formed at 2^80
            # times the value and could leave the ring, a select never does
            member = inside & (group_of[:, None] == jnp.arange(groups, dtype=jnp.float64))
            out["group_count"] = jnp.sum(member.astype(jnp.int64), axis=0)
            out["group_sum"] = jnp.sum(
                jnp.where(member[:, :, None], joined[:, None, :], 0.0), axis=0)
        if req.dp:  # the parties' parts add up to one noise per released value
            total, at = sum(noise), 0
            for name, shape in noisy_outputs(req, cols):
                size = math.prod(shape)
                out[name] = out[name].astype(jnp.float64) + total[at:at + size].reshape(shape)
                at += size
        return out

    return program
