"""One party's side of the columns (vertical) layout: parties hold different columns of the
same ids, and the statistics are over the rows whose id every party holds (docs/stats.md).

The join is never revealed, not even its size to a non-receiver: each party turns its ids into
128-bit keys (SHA-256 of the job and the id) and secret-shares the keys and its columns into
SPU (``spu_job.py``); SPU sorts all parties' rows by key obliviously, marks where a key is held
by every party, and sums over the marked places only (``spu_programs.columns_program``). One
header round first makes every party fail alike, with the same message, on bad data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.psi import ecdh_engine
from appliance.operators.stats import order, spu_job
from appliance.operators.stats.protocol import (
    MAX_PROBLEMS,
    Local,
    Plan,
    _batches,
    _kind,
    capped,
    exchange_headers,
    noise_parts,
    results,
)
from appliance.operators.stats.ring import SCALE
from appliance.operators.stats.spu_programs import Request, noisy_outputs

KEY_KINDS = ("int", "string")
#: group-by: each group is a select over every joined place and column inside SPU
MAX_GROUPS = 100
SELF = "self"  # in a column's name: the initiator


@dataclass(frozen=True)
class Column:
    party: str  # node id
    name: str  # the column at that party

    @property
    def qualified(self) -> str:
        return f"{self.party}.{self.name}"


def resolve(plan: Plan, parties: dict[str, str]) -> list[Column]:
    """The job's ``PARTY.COLUMN`` names with ``self`` as the initiator's node id; a name that
    no party of the job qualifies is refused (the longest matching node id wins)."""
    out = [owner_of(raw, parties) for raw in plan.columns]
    qualified = [c.qualified for c in out]
    if len(set(qualified)) != len(qualified):
        raise OperatorError(f"stats: a column is named twice in {','.join(qualified)}")
    return out


def owner_of(raw: str, parties: dict[str, str]) -> Column:
    """One ``PARTY.COLUMN`` name resolved (``self``: the initiator)."""
    guest = next((p for p, role in parties.items() if role == "guest"), None)
    party, _, name = raw.partition(".")
    if party == SELF and guest is not None and name:
        return Column(guest, name)
    owners = sorted((p for p in parties if raw.startswith(p + ".") and len(raw) > len(p) + 1),
                    key=len)
    if not owners:
        raise OperatorError(f"stats: in layout=columns a column is PARTY.COLUMN with a party "
                            f"of the job or self (got {raw!r}; parties: "
                            f"{', '.join(sorted(parties))})")
    return Column(owners[-1], raw[len(owners[-1]) + 1:])


def _key_kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return f"{t} (an id column is integer or string)"


def keys_of(ids: pa.Array | list[Any], job_id: str) -> np.ndarray:
    """Each id as a 128-bit key, two int64 halves: the first 16 bytes of SHA-256 of the job and
    the id's text (PSI's batch hash: integers as decimal text, so 7 and "7" are one id; the
    same at every party for the same id, a fresh mapping per job)."""
    if not isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = pa.array([str(v) for v in ids], pa.string())
    domain = b"pec-stats-key\0" + job_id.encode() + b"\0"
    digests = ecdh_engine.hash_to_point(ids, domain)[:, :16]  # bit 255 is past these bytes
    return np.ascontiguousarray(digests).view("<i8").reshape(-1, 2)


@dataclass
class Mine:
    """This party's key column and columns, and what was wrong with them."""

    key_kind: str | None = None
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    keys: list[np.ndarray] = dataclasses.field(default_factory=list)
    values: list[np.ndarray] = dataclasses.field(default_factory=list)
    rows: int = 0
    clipped: int = 0  # values moved into their dp bounds
    groups: list[str] = dataclasses.field(default_factory=list)  # the group column, per row
    problems: list[str] = dataclasses.field(default_factory=list)


def read_mine(ctx: PartyContext, key: str, own: list[str],
              bounds: dict[str, tuple[float, float]], group: str | None = None) -> Mine:
    """This party's rows; with differential privacy each column clipped to its ``bounds``
    first (in this layout every column is one party's, so it clips its own); ``group``: the
    group-by column, where this party holds it."""
    mine = Mine()
    local = Local()  # what the shared reader reports missing columns into
    for batch in _batches(ctx, [key, *own, *([group] if group else [])], local):
        mine.key_kind = _key_kind(batch.schema.field(key).type)
        mine.kinds = {c: _kind(batch.schema.field(c).type) for c in own}
        bad = [c for c in own if mine.kinds[c].startswith("non-numeric")]
        mine.problems.extend(f"column {c!r} is {mine.kinds[c]}" for c in bad)
        if mine.key_kind not in KEY_KINDS:
            mine.problems.append(f"key column {key!r} is {mine.key_kind}")
        if mine.problems:
            break
        if batch.num_rows == 0:
            continue
        ids = batch.column(key)
        if ids.null_count:
            mine.problems.append(f"key column {key!r} has {ids.null_count} empty values")
            break
        x = np.empty((batch.num_rows, len(own)))
        for i, c in enumerate(own):
            arr = batch.column(c)
            if arr.null_count:
                mine.problems.append(f"column {c!r} has {arr.null_count} empty (null) values")
                continue
            if not pa.types.is_floating(arr.type):
                arr = pc.cast(arr, pa.float64(), safe=False)
            x[:, i] = arr.to_numpy(zero_copy_only=False)
        mine.problems.extend(f"column {c!r} has NaN or infinite values"
                             for c, b in zip(own, ~np.isfinite(x).all(axis=0), strict=True) if b)
        for i, c in enumerate(own):
            if c in bounds:
                lo, hi = bounds[c]
                mine.clipped += int(((x[:, i] < lo) | (x[:, i] > hi)).sum())
                np.clip(x[:, i], lo, hi, out=x[:, i])
        big = np.abs(np.where(np.isfinite(x), x, 0)).max(axis=0, initial=0) >= order.MAX_ABS
        mine.problems.extend(f"column {c!r} has values past +-2^40, beyond the fixed point "
                             "of SPU" for c, b in zip(own, big, strict=True) if b)
        if mine.problems:
            break
        if group:
            labels = batch.column(group)
            if labels.null_count:
                mine.problems.append(f"group column {group!r} has {labels.null_count} empty "
                                     "values")
                break
            mine.groups.extend(str(v) for v in labels.to_pylist())
        mine.keys.append(keys_of(ids, ctx.job_id))
        mine.values.append(x)
        mine.rows += batch.num_rows
        ctx.progress(5, f"read {mine.rows} rows")
    mine.problems.extend(local.problems)
    if not mine.problems and mine.rows:
        keys = np.concatenate(mine.keys)
        distinct = len(np.unique(keys.view([("hi", "<i8"), ("lo", "<i8")])))
        if distinct != mine.rows:
            mine.problems.append(f"key column {key!r} has {mine.rows - distinct} repeated ids "
                                 "(a row per id is needed to join)")
    return mine


#: SPU forms a sum of products in its 128-bit ring (2^80 times the real value, 40 fractional
#: bits each) and truncates once: the sum must stay below 2^47, so a column whose sum of
#: squares passes 2^45 is scaled down by a power of two first (Cauchy-Schwarz then bounds
#: every cross product by 2^45 too)
SQUARES_BITS = 45
MAX_EXPONENT = 48  # values below 2^40, at most 2^36 rows


def exponent(values: np.ndarray) -> int:
    """The power of two (0 for most columns) that brings the column's sum of squares, over
    all this party's rows (so over any join), below 2^45; only it is told to the others
    (docs/stats.md)."""
    squares = float(np.einsum("i,i->", values, values)) if values.size else 0.0
    if squares <= 2.0 ** SQUARES_BITS:
        return 0
    return math.ceil((math.log2(squares) - SQUARES_BITS) / 2)


def _check_header(peer: str, msg: Any, expect: list[str], tells_groups: bool
                  ) -> dict[str, Any]:
    if (not isinstance(msg, dict)
            or set(msg) != {"t", "params", "key", "columns", "exponents", "rows", "groups",
                            "problems"}
            or msg["t"] != "stats/columns-header" or not isinstance(msg["params"], str)):
        raise OperatorError(f"party {peer} sent a malformed stats header")
    probs = msg["problems"]
    if not (isinstance(probs, list) and len(probs) <= MAX_PROBLEMS + 1
            and all(isinstance(p, str) and len(p) < 1000 for p in probs)):
        raise OperatorError(f"party {peer} sent a malformed stats header (problems)")
    if probs:
        return msg
    cols, exps, rows = msg["columns"], msg["exponents"], msg["rows"]
    if not (isinstance(cols, dict) and sorted(cols) == sorted(expect)
            and all(isinstance(v, str) for v in cols.values())
            and isinstance(exps, dict) and sorted(exps) == sorted(expect)
            and all(isinstance(v, int) and 0 <= v <= MAX_EXPONENT for v in exps.values())
            and isinstance(rows, int) and rows >= 0 and msg["key"] in (*KEY_KINDS, None)):
        raise OperatorError(f"party {peer} sent a malformed stats header (columns, "
                            "exponents, rows or key)")
    groups = msg["groups"]
    if (groups is None) == tells_groups or (groups is not None and not (
            isinstance(groups, list) and len(groups) <= MAX_GROUPS
            and all(isinstance(g, str) and len(g) <= 1000 for g in groups))):
        raise OperatorError(f"party {peer} sent a malformed stats header (groups)")
    return msg


def run(ctx: PartyContext, plan: Plan, receivers: list[str]) -> dict[str, Any]:
    parties = sorted(ctx.parties)
    cols = resolve(plan, ctx.parties)
    key = plan.key or getattr(ctx.dataset, "id_column", None)
    if not key:
        raise OperatorError("stats: layout=columns needs key=ID_COLUMN (this data set names "
                            "no id column)")
    own = [c.name for c in cols if c.party == ctx.node_id]
    grouping = owner_of(plan.group_by, ctx.parties) if plan.group_by else None
    holds_groups = grouping is not None and grouping.party == ctx.node_id
    bounds = ({c.name: plan.dp.bound_of(raw) for c, raw in zip(cols, plan.columns, strict=True)
               if c.party == ctx.node_id and any(b[0] == raw for b in plan.dp.bounds)}
              if plan.dp is not None else {})

    # 1. header: every party's problems, so that all fail alike before anything is shared
    mine = read_mine(ctx, key, own, bounds, grouping.name if holds_groups else None)
    values = np.concatenate(mine.values) if mine.values else np.zeros((0, len(own)))
    mine_groups = None
    if holds_groups and plan.groups is None:  # its values (not their counts) told to all
        mine_groups = sorted(set(mine.groups))
    if holds_groups and len(plan.groups or mine_groups or []) > MAX_GROUPS:
        mine.problems.append(f"group column {plan.group_by!r} has more than {MAX_GROUPS} "
                             "values (the columns layout's limit)")
    problems = capped(mine.problems)
    header = {"t": "stats/columns-header", "params": plan.digest(), "key": mine.key_kind,
              "columns": {c: mine.kinds.get(c, "?") for c in own},
              "exponents": {c: exponent(values[:, i]) for i, c in enumerate(own)},
              "rows": mine.rows, "groups": mine_groups, "problems": problems}
    if problems:
        header.update(key=None, columns={}, exponents={}, rows=0, groups=None)
    headers, all_problems = exchange_headers(
        ctx, plan, header,
        lambda p, msg: _check_header(p, msg, [c.name for c in cols if c.party == p],
                                     grouping is not None and grouping.party == p
                                     and plan.groups is None))
    kinds = {headers[p]["key"] for p in parties if headers[p]["rows"]}
    if not all_problems and len(kinds) > 1:
        all_problems.append("the key columns differ in type: " + ", ".join(
            f"party {p}'s is {headers[p]['key']}" for p in parties if headers[p]["rows"]))
    if all_problems:
        raise OperatorError("stats refused: " + "; ".join(all_problems))
    ctx.progress(30, "headers agree")

    groups = None
    if grouping is not None:
        groups = list(plan.groups) if plan.groups is not None else headers[grouping.party][
            "groups"]
        if holds_groups:  # each row's group number rides with this party's columns
            at = {g: i for i, g in enumerate(groups)}
            values = np.column_stack([values, np.array([at.get(g, -1) for g in mine.groups],
                                                       dtype=np.float64)])

    # 2. SPU: the keys and columns shared, joined, summed; opened to the receivers only
    # what protocol.results computes: the row-sum threshold is this layout's own
    named = dataclasses.replace(plan, columns=tuple(c.qualified for c in cols), threshold=None,
                                stats=tuple(s for s in plan.stats if s != "threshold"),
                                group_by=grouping.qualified if grouping else None)
    base = {"layout": "columns", "parties": len(parties), "receivers": receivers, "key": key,
            "columns": list(named.columns), "statistics": list(plan.stats),
            "received": ctx.node_id in receivers}
    rows = [headers[p]["rows"] for p in parties]
    dp_info: dict[str, Any] = {}
    if min(rows) == 0:  # a party without rows: the join is empty, and all know it
        found = None if ctx.node_id not in receivers else _empty(named, plan, groups)
        engine: dict[str, Any] = {"skipped": "a party has no rows"}
    else:
        # the engine's columns come party by party (SPU's blocks), each party's in job order
        block = [i for p in parties for i, c in enumerate(cols) if c.party == p]
        exps = [headers[cols[i].party]["exponents"][cols[i].name] for i in block]
        group = None
        if grouping is not None and groups is not None:  # after the holder's own columns
            before = parties[:parties.index(grouping.party) + 1]
            group = (sum(1 for c in cols if c.party in before), len(groups))
        request = request_of(plan, exps, group)
        levels = request["levels"]
        arrays = {"keys": np.concatenate(mine.keys), "values": values}
        if plan.dp is not None:
            arrays["noise"], dp_info = _noise(plan, request, block, len(parties))
            dp_info["clipped_here"] = mine.clipped
        doc = spu_job.run(ctx, "columns", arrays, request, receivers, "columns statistics")
        engine = {k: doc[k] for k in ("protocol", "engine", "computing", "provided", "rows",
                                      "run_s", "cpu_s", "link_bytes_sent",
                                      "link_bytes_received") if k in doc}
        found = (None if ctx.node_id not in receivers
                 else _results(named, plan, doc.get("results"), block, exps, levels, groups))
    result = {**base, "engine": engine, **({"dp": dp_info} if dp_info else {})}
    if found is not None and min(rows) and (plan.need_cross or plan.need_squares):
        # a scaled column's sums of products are exact to 2^(e_i + e_j - 40) (docs/stats.md)
        result["scaled"] = {cols[i].qualified: e for i, e in zip(block, exps, strict=True) if e}
    if found is not None:
        result.update(found)
    ctx.progress(100, "columns statistics done" if found is not None
                 else "shares sent; this party receives no result")
    return result


def request_of(plan: Plan, exponents: list[int], group: tuple[int, int] | None = None
               ) -> dict[str, Any]:
    """What SPU computes (``spu_programs.Request``'s fields), with the columns' scaling
    exponents in SPU's block order and, for group-by, where the group numbers ride."""
    return {"sums": plan.need_sums, "cross": plan.need_cross, "squares": plan.need_squares,
            "minmax": bool({"min", "max"} & set(plan.stats)),
            "levels": [*plan.quantiles, *([0.5] if "median" in plan.stats else [])],
            "edges": list(plan.edges), "threshold": plan.threshold,
            "scales": [2.0 ** -e for e in exponents], "dp": plan.dp is not None,
            "group": group}


def _noise(plan: Plan, request: dict[str, Any], block: list[int], parties: int
           ) -> tuple[np.ndarray, dict[str, Any]]:
    """This party's part of the noise of every released output, in the order SPU adds it
    (``spu_programs.noisy_outputs``: columns in SPU's block order), and the ``dp`` block.
    Queries (each gets epsilon/m): the count, each column's sum, each sum of squares or
    products (one query for (i, j) and (j, i): the same draw), each column's histogram, the
    threshold's count and sum. A row (an id all parties hold) adds at most 1 to a count,
    reach(i) to a sum and reach(i) * reach(j) to a sum of products, and the sum of the
    reaches to the threshold's sum."""
    assert plan.dp is not None
    dp = plan.dp
    names = plan.columns  # as the job names them (dp_bounds' names)

    def reach(i: int) -> float:
        return max(abs(v) for v in dp.bound_of(names[i]))

    req = Request.of(request)
    width = len(block)
    slots: list[str] = []  # the query of each noise slot
    sensitivities: dict[str, float] = {}
    for name, shape in noisy_outputs(req, width):
        if name in ("count", "threshold_count"):
            slots.append(name)
            sensitivities[name] = 1.0
        elif name == "threshold_sum":
            slots.append(name)
            sensitivities[name] = sum(reach(i) for i in range(width))
        elif name == "sum":
            for b in range(width):
                q = f"sum:{names[block[b]]}"
                slots.append(q)
                sensitivities[q] = reach(block[b])
        elif name == "cross":
            pairs = ([(a, b) for a in range(width) for b in range(width)] if len(shape) == 2
                     else [(a, a) for a in range(width)])
            for a, b in pairs:
                i, j = sorted((block[a], block[b]))
                q = f"cross:{names[i]}:{names[j]}"
                slots.append(q)
                sensitivities[q] = reach(i) * reach(j)
        elif name == "group_count":  # a row is in one group: one query, a draw per group
            slots += ["group_count"] * shape[0]
            sensitivities["group_count"] = 1.0
        elif name == "group_sum":  # per column one query, a draw per group
            for _ in range(shape[0]):
                slots += [f"group_sum:{names[block[b]]}" for b in range(width)]
            for b in range(width):
                sensitivities[f"group_sum:{names[block[b]]}"] = reach(block[b])
        else:  # hist: one query per column, a draw per bin
            for b in range(width):
                q = f"hist:{names[block[b]]}"
                slots += [q] * shape[1]
                sensitivities[q] = 1.0
    draws, info = noise_parts(dp, sensitivities, parties)
    drawn: dict[str, float] = {}  # a sum of products' one draw, for both of its places
    out = np.empty(len(slots))
    for at, q in enumerate(slots):
        if q.startswith("cross:"):
            out[at] = drawn.setdefault(q, draws[q]())
        else:
            out[at] = draws[q]()
    return out, info


def _empty(named: Plan, plan: Plan, groups: list[str] | None) -> dict[str, Any]:
    out = results(named, _ring_vector(named, 0, [], {}, [], groups, None, None), groups)
    if plan.threshold is not None:
        out["stats"]["threshold"] = _threshold(named, plan, 0, 0.0)
    return _with_order(out, named, plan, None, [], [])


def _ring_vector(named: Plan, count: float, sums: list[float],
                 cross: dict[tuple[int, int], float], hist: list[list[float]],
                 groups: list[str] | None, group_counts: list[float] | None,
                 group_sums: list[list[float]] | None) -> list[int]:
    """The aggregates in the order (and ring units) ``protocol.results`` reads them."""
    k = len(named.columns)
    noisy = named.dp is not None  # noisy counts are fractions: fixed point like the sums
    vec: list[int] = [round(count * SCALE) if noisy else int(count)]
    if named.need_sums:
        vec += [round(s * SCALE) for s in sums] if sums else [0] * k
    if named.need_cross:
        vec += [round(cross.get((i, j), 0.0) * SCALE) for i in range(k) for j in range(i, k)]
    elif named.need_squares:
        vec += [round(cross.get((i, i), 0.0) * SCALE) for i in range(k)]
    if named.edges:
        bins = len(named.edges) - 1
        vec += [round(v * SCALE) if noisy else int(v)
                for row in (hist or [[0] * bins] * k) for v in row]
    for g in range(len(groups or [])):
        c = group_counts[g] if group_counts is not None else 0
        vec.append(round(c * SCALE) if noisy else int(c))
        vec += [round((group_sums[g][i] if group_sums is not None else 0.0) * SCALE)
                for i in range(k)]
    return vec


def _threshold(named: Plan, plan: Plan, count: float, total: float) -> dict[str, Any]:
    return {"row_sum": {"threshold": plan.threshold, "columns": list(named.columns),
                        "count": count, "sum": total}}


def _results(named: Plan, plan: Plan, found: Any, block: list[int], exps: list[int],
             levels: list[float], groups: list[str] | None) -> dict[str, Any]:
    """The statistics from SPU's opened outputs (columns in SPU's block order)."""
    k = len(block)
    if not isinstance(found, dict) or not isinstance(
            found.get("count"), float if named.dp is not None else int):
        raise OperatorError("stats: the SPU engine returned no results at a receiver")
    pos = {plan_i: b for b, plan_i in enumerate(block)}  # job's column -> SPU's

    def vec(name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = np.asarray(found.get(name), dtype=np.float64)
        if arr.shape != shape:
            raise OperatorError(f"stats: the SPU engine's {name} does not match the request")
        return arr

    count = found["count"]
    sums = ([float(vec("sum", (k,))[pos[i]]) for i in range(k)] if named.need_sums else [])
    cross: dict[tuple[int, int], float] = {}
    if named.need_cross or named.need_squares:
        raw = vec("cross", (k, k) if named.need_cross else (k,))
        for i in range(k):
            for j in range(k) if named.need_cross else (i,):
                v = raw[pos[i], pos[j]] if named.need_cross else raw[pos[i]]
                cross[i, j] = float(v) * 2.0 ** (exps[pos[i]] + exps[pos[j]])
    hist = []
    if named.edges:
        raw = vec("hist", (k, len(named.edges) - 1))
        hist = [[float(v) if named.dp is not None else round(v) for v in raw[pos[i]]]
                for i in range(k)]
    counts = sums_by = None
    if groups is not None:
        noisy = named.dp is not None
        counts = [float(v) if noisy else round(v) for v in vec("group_count", (len(groups),))]
        raw = vec("group_sum", (len(groups), k))
        sums_by = [[float(raw[g, pos[i]]) for i in range(k)] for g in range(len(groups))]
    out = results(named, _ring_vector(named, count, sums, cross, hist, groups, counts,
                                      sums_by), groups)
    if plan.threshold is not None:
        above = float(vec("threshold_count", ()))
        out["stats"]["threshold"] = _threshold(
            named, plan, above if named.dp is not None else round(above),
            float(vec("threshold_sum", ())))
    return _with_order(out, named, plan, found, block, levels)


def _with_order(out: dict[str, Any], named: Plan, plan: Plan, found: dict[str, Any] | None,
                block: list[int], levels: list[float]) -> dict[str, Any]:
    if not named.order_stats:
        return out
    count = 0 if found is None else found["count"]
    # order.format reads the outputs in the job's column order
    ordered = None if found is None else {
        n: [found[n][block.index(i)] for i in range(len(block))]
        for n in ["min", "max"] + [f"q{j}" for j in range(len(levels))] if n in found}
    got = order.format_results(named, ordered, count, levels)
    out["stats"].update(got["stats"])
    if got["undefined"]:
        out.setdefault("undefined", {}).update(got["undefined"])
    return out
