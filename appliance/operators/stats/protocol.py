"""One party's side of the rows-layout linear statistics (docs/stats.md).

Three rounds over the job's pairwise sessions, every party alike:

1. header: the parameters' digest, this party's column types and its local problems (missing
   or non-numeric column, NaN, nulls, an aggregate past the ring's bound); any problem at any
   party fails the job at every party with the same message, before a share is sent;
2. shares: each party's local aggregates, computed with numpy over its own rows, split into n
   additive shares over Z_2^128; share j goes to party j;
3. reveal: each party adds the shares it holds and sends that sum to the receivers, who add
   the n sums and so learn only the pooled aggregates.

The parameters (``plan_of``) and the header exchange serve both layouts: a ``layout=columns``
job is handed to ``columns.py`` once the parties and receivers are checked.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from appliance.operators.base import OperatorError, PartyContext, canonical
from appliance.operators.stats import order as spu_order
from appliance.operators.stats import ring

VERSION = 2  # of the parameters digest: 2 adds the layout and the key
# threshold in the rows layout is linear: each row is whole at one party, which compares it
LINEAR = ("count", "sum", "mean", "var", "std", "cov", "corr", "hist", "threshold")
COMPARISON = ("min", "max", "median", "quantiles")  # by SPU (order.py, spu_job.py)
DEFAULT_STATS = ("count", "sum", "mean", "var", "std")
MIN_PARTIES, MAX_PARTIES = 2, 5
MAX_PROBLEMS = 20  # per party, so a header stays small however bad the data


MAX_GROUPS = 1000


@dataclass(frozen=True)
class Dp:
    """Differential privacy at release: Laplace (no delta) or Gaussian (with delta), the
    budget split evenly over the released queries; each column clipped to its bounds."""

    epsilon: float
    delta: float | None
    bounds: tuple[tuple[str, float, float], ...]  # (column, low, high)

    @property
    def mechanism(self) -> str:
        return "laplace" if self.delta is None else "gaussian"

    def bound_of(self, column: str) -> tuple[float, float]:
        return next((lo, hi) for c, lo, hi in self.bounds if c == column)


@dataclass(frozen=True)
class Plan:
    """What to compute, the same at every party (its digest is checked in the header)."""

    columns: tuple[str, ...]
    stats: tuple[str, ...]
    edges: tuple[float, ...]
    receivers: str  # all | initiator
    group_by: str | None = None
    groups: tuple[str, ...] | None = None  # stated by the job; else the parties' union
    dp: Dp | None = None
    threshold: float | None = None  # count and sum of the values above it
    quantiles: tuple[float, ...] = ()  # the levels of ``quantiles``
    layout: str = "rows"  # rows | columns (columns.py: PARTY.COLUMN names, joined on key)
    key: str | None = None  # columns: the id column (default: each data set's own)

    @property
    def order_stats(self) -> tuple[str, ...]:
        """The comparison-based statistics (computed by SPU, order.py)."""
        return tuple(st for st in self.stats if st in COMPARISON)

    @property
    def need_sums(self) -> bool:
        return bool({"sum", "mean", "var", "std", "cov", "corr"} & set(self.stats))

    @property
    def need_cross(self) -> bool:  # the full cross-product matrix (upper triangle)
        return bool({"cov", "corr"} & set(self.stats))

    @property
    def need_squares(self) -> bool:  # only its diagonal
        return not self.need_cross and bool({"var", "std"} & set(self.stats))

    def digest(self) -> str:
        body = {"v": VERSION, "columns": list(self.columns), "stats": list(self.stats),
                "edges": list(self.edges), "receivers": self.receivers,
                "layout": self.layout, "key": self.key,
                "group_by": self.group_by, "groups": list(self.groups or []),
                "threshold": self.threshold, "quantiles": list(self.quantiles),
                "dp": None if self.dp is None else [self.dp.epsilon, self.dp.delta,
                                                    [list(b) for b in self.dp.bounds]]}
        return hashlib.sha256(canonical(body)).hexdigest()


def _names(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise OperatorError(f"{what} must be a comma-separated list of names (got {value!r})")
    return list(value)


def plan_of(params: dict[str, Any]) -> Plan:
    """The job's parameters checked; what is not built yet is refused by name."""
    layout = params.get("layout") or "rows"
    if layout not in ("rows", "columns"):
        raise OperatorError(f"stats: layout must be rows or columns (got {layout!r})")
    key = params.get("key") or None
    if key is not None and (layout != "columns" or not isinstance(key, str)):
        raise OperatorError("stats: key=ID_COLUMN names the id column of layout=columns")
    if "columns" not in params:
        raise OperatorError("stats needs columns=C1[,C2...]")
    columns = _names(params["columns"], "columns")
    if len(set(columns)) != len(columns):
        raise OperatorError(f"stats: a column is named twice in {','.join(columns)}")
    stats = _names(params.get("stats", ",".join(DEFAULT_STATS)), "stats")
    for s in stats:
        if s not in LINEAR and s not in COMPARISON:
            raise OperatorError(f"stats: unknown statistic {s!r} (built: "
                                f"{', '.join(LINEAR + COMPARISON)})")
    quantiles: list[float] = []
    if params.get("quantiles") not in (None, ""):
        raw = params["quantiles"]
        raw = raw.split(",") if isinstance(raw, str) else raw
        try:
            quantiles = [float(q) for q in raw]
        except (TypeError, ValueError):
            raise OperatorError(f"stats: quantiles are levels Q1,Q2,... in [0, 1] "
                                f"(got {raw!r})") from None
        if not quantiles or not all(0.0 <= q <= 1.0 for q in quantiles):
            raise OperatorError("stats: quantiles are levels in [0, 1]")
        if "quantiles" not in stats:
            stats.append("quantiles")
    elif "quantiles" in stats:
        raise OperatorError("stats: quantiles needs its levels, quantiles=Q1,Q2,...")
    edges: list[float] = []
    if params.get("hist") not in (None, ""):
        raw = params["hist"]
        raw = raw.split(",") if isinstance(raw, str) else raw
        try:
            edges = [float(e) for e in raw]
        except (TypeError, ValueError):
            raise OperatorError(f"stats: hist must be bin edges E0,E1,... (got {raw!r})") from None
        if (len(edges) < 2 or not all(math.isfinite(e) for e in edges)
                or any(b <= a for a, b in itertools.pairwise(edges))):
            raise OperatorError("stats: hist needs at least two finite, increasing bin edges")
        if "hist" not in stats:
            stats.append("hist")
    elif "hist" in stats:
        raise OperatorError("stats: hist needs its bin edges, hist=E0,E1,...")
    threshold = None
    if params.get("threshold") not in (None, ""):
        try:
            threshold = float(params["threshold"])
        except (TypeError, ValueError):
            raise OperatorError("stats: threshold is a number") from None
        if not math.isfinite(threshold):
            raise OperatorError("stats: threshold is a finite number")
        if "threshold" not in stats:
            stats.append("threshold")
    elif "threshold" in stats:
        raise OperatorError("stats: threshold needs its value, threshold=T")
    receivers = params.get("receivers", "all")
    if receivers not in ("all", "initiator"):
        raise OperatorError(f"stats: receivers must be all or initiator (got {receivers!r})")
    group_by = params.get("group_by") or None
    groups = None
    if group_by is not None:
        if not isinstance(group_by, str) or group_by in columns:
            raise OperatorError("stats: group_by names one column that is not among columns")
        if params.get("groups") not in (None, ""):
            groups = tuple(dict.fromkeys(_names(params["groups"], "groups")))
            if len(groups) > MAX_GROUPS:
                raise OperatorError(f"stats: at most {MAX_GROUPS} groups")
    elif params.get("groups") not in (None, ""):
        raise OperatorError("stats: groups needs group_by=COLUMN")
    dp = _dp_of(params, columns, stats, group_by)
    ordered = [st for st in stats if st in COMPARISON]
    if ordered and (dp is not None or group_by is not None):
        raise OperatorError(f"stats: {', '.join(ordered)} with "
                            f"{'dp_epsilon' if dp is not None else 'group_by'} is not built yet")
    return Plan(tuple(columns), tuple(dict.fromkeys(stats)), tuple(edges), receivers,
                group_by, groups, dp, threshold, tuple(quantiles), layout, key)


def _dp_of(params: dict[str, Any], columns: list[str], stats: list[str],
           group_by: str | None) -> Dp | None:
    eps = params.get("dp_epsilon")
    if eps in (None, ""):
        if params.get("dp_delta") not in (None, "") or params.get("dp_bounds") not in (None,
                                                                                     ""):
            raise OperatorError("stats: dp_delta and dp_bounds need dp_epsilon")
        return None
    try:
        epsilon = float(eps)
        delta = None if params.get("dp_delta") in (None, "") else float(params["dp_delta"])
    except (TypeError, ValueError):
        raise OperatorError("stats: dp_epsilon and dp_delta are numbers") from None
    if not (math.isfinite(epsilon) and 0 < epsilon <= 100):
        raise OperatorError("stats: dp_epsilon must be in (0, 100]")
    if delta is not None and not 0 < delta < 0.01:
        raise OperatorError("stats: dp_delta must be in (0, 0.01)")
    bounds: list[tuple[str, float, float]] = []
    raw = params.get("dp_bounds")
    items = raw.split(",") if isinstance(raw, str) else raw or []
    for item in items:
        parts = str(item).split(":")
        try:
            col, lo, hi = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise OperatorError(f"stats: dp_bounds is COLUMN:LOW:HIGH,... (got {item!r})"
                                ) from None
        if col not in columns or not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise OperatorError(f"stats: dp_bounds {item!r}: a column of the job and "
                                "finite LOW < HIGH")
        bounds.append((col, lo, hi))
    needs = ({"sum", "mean", "var", "std", "cov", "corr", "threshold"} & set(stats)
             or group_by is not None)
    missing = [c for c in columns if c not in {b[0] for b in bounds}]
    if needs and missing:
        raise OperatorError(f"stats: with dp_epsilon, sums need each column's range to clip "
                            f"to: dp_bounds={missing[0]}:LOW:HIGH,... (missing "
                            f"{', '.join(missing)})")
    return Dp(epsilon, delta, tuple(sorted(bounds)))


@dataclass
class Local:
    """One party's aggregates over its own rows, and what was wrong with them."""

    kinds: dict[str, str] | None = None  # column -> int | float | decimal | ...; None: no rows
    rows: int = 0
    sums: np.ndarray | None = None
    cross: np.ndarray | None = None
    hist: np.ndarray | None = None
    # group value -> (row count, the columns' sums) of this party's rows
    groups: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    abs_sums: np.ndarray | None = None  # bounds every group's sum
    above: np.ndarray | None = None  # per column: count and sum of the values above
    # the threshold
    clipped: int = 0  # values moved into the dp bounds
    problems: list[str] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)  # the rows, for order statistics


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal"
    return f"non-numeric ({t})"


def _batches(ctx: PartyContext, columns: list[str], local: Local) -> Iterator[pa.RecordBatch]:
    """The data set's batches of these columns; a missing column becomes a problem (the
    schema is read from the whole set's first batch to say which)."""
    assert ctx.dataset is not None
    try:
        yield from ctx.dataset.batches(columns)
        return
    except Exception as exc:  # the reader says why in its own words; we name the columns
        first_error = exc
    try:
        first = next(iter(ctx.dataset.batches(None)), None)
    except Exception as exc:
        local.problems.append(f"cannot read its data set: {exc}")
        return
    names = set(first.schema.names) if first is not None else set()
    missing = [c for c in columns if c not in names]
    if missing:
        local.problems.extend(f"has no column {c!r}" for c in missing)
    else:
        local.problems.append(f"cannot read its data set: {first_error}")


def local_aggregates(ctx: PartyContext, plan: Plan) -> Local:
    cols = list(plan.columns)
    k, m = len(cols), max(len(plan.edges) - 1, 0)
    local = Local(sums=np.zeros(k), cross=np.zeros((k, k)),
                  hist=np.zeros((k, m), dtype=np.int64), abs_sums=np.zeros(k),
                  above=np.zeros((k, 2)))
    read = cols + ([plan.group_by] if plan.group_by else [])
    for batch in _batches(ctx, read, local):
        kinds = {c: _kind(batch.schema.field(c).type) for c in cols}
        if local.kinds is None:
            local.kinds = kinds
        bad = [c for c in cols if kinds[c].startswith("non-numeric")]
        if bad:
            local.problems.extend(f"column {c!r} is {kinds[c]}" for c in bad)
            break
        if batch.num_rows == 0:
            continue
        x = np.empty((batch.num_rows, k))
        for i, c in enumerate(cols):
            arr = batch.column(c)
            if arr.null_count:
                local.problems.append(f"column {c!r} has {arr.null_count} empty (null) values")
                continue
            if not pa.types.is_floating(arr.type):  # ints and decimals, as float64
                arr = pc.cast(arr, pa.float64(), safe=False)
            x[:, i] = arr.to_numpy(zero_copy_only=False)
        nan = np.isnan(x).any(axis=0)
        inf = np.isinf(x).any(axis=0)
        local.problems.extend(f"column {c!r} has NaN values" for c, b in zip(cols, nan,
                                                                           strict=True) if b)
        local.problems.extend(f"column {c!r} has infinite values"
                              for c, b in zip(cols, inf, strict=True) if b)
        if local.problems:
            break
        if plan.dp is not None:
            # each value into its column's bounds: what bounds one row's contribution
            for i, c in enumerate(cols):
                if any(b[0] == c for b in plan.dp.bounds):
                    lo, hi = plan.dp.bound_of(c)
                    local.clipped += int(((x[:, i] < lo) | (x[:, i] > hi)).sum())
                    np.clip(x[:, i], lo, hi, out=x[:, i])
        if plan.group_by:
            keys = batch.column(plan.group_by)
            if keys.null_count:
                local.problems.append(f"group column {plan.group_by!r} has {keys.null_count} "
                                      "empty values")
                break
            values = np.array([str(v) for v in keys.to_pylist()], dtype=object)
            # one pass: rows sorted by group (stable), each group a contiguous slice
            names, inverse = np.unique(values, return_inverse=True)
            counts = np.bincount(inverse, minlength=len(names))
            ordered = x[np.argsort(inverse, kind="stable")]
            ends = np.cumsum(counts)
            for g, c, end in zip(names, counts, ends, strict=True):
                count, sums = local.groups.get(g, (0, np.zeros(k)))
                local.groups[g] = (count + int(c), sums + ordered[end - c:end].sum(axis=0))
            if len(local.groups) > MAX_GROUPS:
                local.problems.append(f"group column {plan.group_by!r} has more than "
                                      f"{MAX_GROUPS} values")
                break
        if plan.order_stats:
            big = np.abs(x).max(axis=0) > spu_order.MAX_ABS
            local.problems.extend(
                f"column {c!r} has values past +-{spu_order.MAX_ABS:.0f}, beyond the fixed point "
                "of the order statistics" for c, b in zip(cols, big, strict=True) if b)
            local.values.append(x)
        local.rows += batch.num_rows
        local.sums += x.sum(axis=0)
        if plan.group_by:  # it bounds the group sums; nothing else reads it
            local.abs_sums += np.abs(x).sum(axis=0)
        if plan.threshold is not None:
            hit = x > plan.threshold
            local.above[:, 0] += hit.sum(axis=0)
            local.above[:, 1] += np.where(hit, x, 0.0).sum(axis=0)
        if plan.need_cross:
            local.cross += x.T @ x  # BLAS, float64
        elif plan.need_squares:
            local.cross[np.diag_indices(k)] += np.einsum("ij,ij->j", x, x)
        for i in range(k if m else 0):
            local.hist[i] += np.histogram(x[:, i], bins=np.asarray(plan.edges))[0]
        ctx.progress(5, f"read {local.rows} rows")
    return local


def items_of(plan: Plan, local: Local, groups: list[str] | None
             ) -> list[tuple[float, bool, str, str]]:
    """The local aggregates in the plan's fixed order: (value, fixed point?, what it is,
    the released query it belongs to, for the noise)."""
    cols, k = plan.columns, len(plan.columns)
    assert local.sums is not None and local.cross is not None and local.hist is not None
    dp = plan.dp is not None  # noisy counts are fractions: fixed point too
    items: list[tuple[float, bool, str, str]] = [(local.rows, dp, "row count", "count")]
    if plan.need_sums:
        items += [(float(local.sums[i]), True, f"column {cols[i]!r}: its sum", f"sum:{c}")
                  for i, c in enumerate(cols)]
    if plan.need_cross:
        items += [(float(local.cross[i, j]), True,
                   f"column {cols[i]!r}: its sum of squares" if i == j else
                   f"columns {cols[i]!r} and {cols[j]!r}: their sum of products",
                   f"cross:{i}:{j}") for i in range(k) for j in range(i, k)]
    elif plan.need_squares:
        items += [(float(local.cross[i, i]), True, f"column {cols[i]!r}: its sum of squares",
                   f"cross:{i}:{i}") for i in range(k)]
    if plan.edges:
        items += [(int(local.hist[i, b]), dp, f"column {cols[i]!r}: a bin count",
                   f"hist:{cols[i]}") for i in range(k) for b in range(local.hist.shape[1])]
    if plan.threshold is not None:
        for i, c in enumerate(cols):
            items += [(int(local.above[i, 0]), dp, f"column {c!r}: its count above the "
                       "threshold", f"threshold_count:{c}"),
                      (float(local.above[i, 1]), True, f"column {c!r}: its sum above the "
                       "threshold", f"threshold_sum:{c}")]
    if groups is None:  # before the groups are agreed: every group sum is within these
        items += [(float(local.abs_sums[i]), True, f"column {c!r}: its sum of magnitudes "
                   "(a bound of its group sums)", "-") for i, c in enumerate(cols)
                  if plan.group_by]
    else:
        for g in groups:
            count, sums = local.groups.get(g, (0, np.zeros(k)))
            items.append((count, dp, "a group's row count", "group_count"))
            items += [(float(sums[i]), True, f"column {c!r}: a group's sum", f"group_sum:{c}")
                      for i, c in enumerate(cols)]
    return items


def vector_of(plan: Plan, local: Local, parties: int, groups: list[str] | None = None,
              noise: dict[str, Any] | None = None) -> list[int]:
    """The local aggregates as ring elements, in the plan's fixed order, with this party's
    part of the noise where ``noise`` says (query -> its draw); each one past the per-party
    bound becomes a problem instead (refused, never wrapped)."""
    items = items_of(plan, local, groups)
    out: list[int] = []
    for value, scaled, what, query in items:
        if noise and query in noise:
            value = float(value) + noise[query]()
        enc = ring.encode(value, parties, scaled)
        if enc is None:
            local.problems.append(
                # the value itself stays out: every party reads this message
                f"{what} is not below the bound {ring.bound(parties, scaled):.6g}"
                f" (2^{ring.RING_BITS - 1 - (ring.FRAC_BITS if scaled else 0)}/{parties}) that"
                f" {parties} parties may each add in the {ring.RING_BITS}-bit ring with"
                f" {ring.FRAC_BITS} fractional bits; refused rather than wrapped")
            enc = 0
        out.append(enc)
    return out


def _recv(ctx: PartyContext, peer: str, what: str) -> Any:
    try:
        return ctx.sessions[peer].recv(timeout=ctx.timeout)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(f"party {peer} did not send its {what}: {exc}") from exc


def capped(problems: list[str]) -> list[str]:
    """A party's problems as its header carries them: at most MAX_PROBLEMS, then a count."""
    out = problems[:MAX_PROBLEMS]
    if len(problems) > MAX_PROBLEMS:
        out.append(f"and {len(problems) - MAX_PROBLEMS} more problems")
    return out


def exchange_headers(ctx: PartyContext, plan: Plan, header: dict[str, Any],
                     check: Callable[[str, Any], dict[str, Any]]
                     ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """This party's header to every peer and theirs, each ``check``-ed; with every party's
    problems and parameter mismatches, in party order (the same list at every party)."""
    order = sorted(ctx.parties)
    peers = [p for p in order if p != ctx.node_id]
    for p in peers:
        ctx.sessions[p].send(header)
    headers = {ctx.node_id: header}
    for p in peers:
        headers[p] = check(p, _recv(ctx, p, "stats header"))
    problems: list[str] = []
    for p in order:
        if headers[p]["params"] != plan.digest():
            problems.append(f"party {p} runs with different stats parameters")
        problems.extend(f"party {p}: {msg}" for msg in headers[p]["problems"])
    return headers, problems


def _check_header(peer: str, msg: Any) -> dict[str, Any]:
    if (not isinstance(msg, dict) or set(msg) != {"t", "params", "columns", "problems",
                                                  "groups"}
            or msg["t"] != "stats/header" or not isinstance(msg["params"], str)):
        raise OperatorError(f"party {peer} sent a malformed stats header")
    groups = msg["groups"]
    if groups is not None and not (isinstance(groups, list) and len(groups) <= MAX_GROUPS
                                   and all(isinstance(g, str) and len(g) <= 1000
                                           for g in groups)):
        raise OperatorError(f"party {peer} sent a malformed stats header (groups)")
    cols, probs = msg["columns"], msg["problems"]
    if cols is not None and not (isinstance(cols, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in cols.items())):
        raise OperatorError(f"party {peer} sent a malformed stats header (columns)")
    if not (isinstance(probs, list) and len(probs) <= MAX_PROBLEMS + 1
            and all(isinstance(p, str) and len(p) < 1000 for p in probs)):
        raise OperatorError(f"party {peer} sent a malformed stats header (problems)")
    return msg


def _ring_list(peer: str, msg: Any, tag: str, length: int) -> list[int]:
    if not isinstance(msg, dict) or set(msg) != {"t", "s"} or msg["t"] != tag:
        raise OperatorError(f"party {peer} sent a malformed {tag} message")
    got = ring.from_wire(msg["s"], length)
    if isinstance(got, str):
        raise OperatorError(f"party {peer} sent a malformed {tag} message: {got}")
    return got


def run(ctx: PartyContext) -> dict[str, Any]:
    plan = plan_of(ctx.params)
    if ctx.dataset is None:
        raise OperatorError("stats needs a data set on every party")
    order = sorted(ctx.parties)
    n = len(order)
    if not MIN_PARTIES <= n <= MAX_PARTIES:
        raise OperatorError(f"stats runs among {MIN_PARTIES} to {MAX_PARTIES} parties, not {n}")
    peers = [p for p in order if p != ctx.node_id]
    if ctx.node_id not in ctx.parties or set(ctx.sessions) != set(peers):
        raise OperatorError("stats needs a session to every other party of the job")
    if plan.receivers == "all":
        receivers = order
    else:
        receivers = [p for p in order if ctx.parties[p] == "guest"]
        if len(receivers) != 1:
            raise OperatorError("receivers=initiator needs exactly one guest (the initiator)")
    if plan.layout == "columns":
        from appliance.operators.stats import columns  # it builds on this module

        return columns.run(ctx, plan, receivers)

    # 1. header: every party's problems, so that all fail alike before any share is sent
    local = local_aggregates(ctx, plan)
    # the bounds, checked before anything is sent; the vector itself is final unless groups
    # (agreed in the header) or noise (drawn after it) change it
    vector = vector_of(plan, local, n) if not local.problems else []
    # without stated groups, each party's group values (not their counts) are told to all
    mine_groups = (sorted(local.groups) if plan.group_by and plan.groups is None
                   and not local.problems else None)
    header = {"t": "stats/header", "params": plan.digest(), "columns": local.kinds,
              "problems": capped(local.problems), "groups": mine_groups}
    headers, all_problems = exchange_headers(ctx, plan, header, _check_header)
    groups = None
    if plan.group_by:
        groups = list(plan.groups) if plan.groups is not None else sorted(
            {g for h in headers.values() for g in h.get("groups") or []})
        if len(groups) > MAX_GROUPS:
            all_problems.append(f"the parties' group column {plan.group_by!r} has "
                                f"{len(groups)} values together (at most {MAX_GROUPS})")
    if all_problems:
        raise OperatorError("stats refused: " + "; ".join(all_problems))
    ctx.progress(30, "headers agree")
    noise, dp_info = dp_noise(plan, local, n, groups)
    if plan.group_by or plan.dp:
        vector = vector_of(plan, local, n, groups, noise)
        if local.problems:  # only noise near the ring's bound gets here
            raise OperatorError("stats refused: " + "; ".join(local.problems[:3]))

    # 2. shares: party j gets share j of every aggregate; fresh randomness per job
    length = len(vector)
    shares = ring.share(vector, n)
    me = order.index(ctx.node_id)
    for j, p in enumerate(order):
        if p != ctx.node_id:
            ctx.sessions[p].send({"t": "stats/shares", "s": ring.to_wire(shares[j])})
    held = [shares[me]]
    for p in peers:
        held.append(_ring_list(p, _recv(ctx, p, "shares"), "stats/shares", length))
    mine = ring.add(held)
    ctx.progress(60, "shares added")

    # 3. reveal: only the receivers get the share sums, so only they learn the aggregates
    for p in receivers:
        if p != ctx.node_id:
            ctx.sessions[p].send({"t": "stats/sum", "s": ring.to_wire(mine)})
    base = {"layout": "rows", "parties": n, "receivers": receivers,
            "columns": list(plan.columns), "statistics": list(plan.stats),
            **({"dp": dp_info} if dp_info else {})}
    result: dict[str, Any] = {**base, "received": ctx.node_id in receivers}
    if ctx.node_id in receivers:
        sums = [mine] + [_ring_list(p, _recv(ctx, p, "share sum"), "stats/sum", length)
                         for p in peers]
        total = [ring.decode(v) for v in ring.add(sums)]
        result.update(results(plan, total, groups))
        ctx.progress(70 if plan.order_stats else 100, "aggregates reconstructed")
    else:
        ctx.progress(70 if plan.order_stats else 100, "share sums sent to the receivers")
    if plan.order_stats:
        # 4. order statistics: the parties' rows secret-shared again, inside SPU
        found = spu_order.run(ctx, plan, local, receivers)
        if found is not None:
            result["stats"].update(found.pop("stats"))
            if found.get("undefined"):
                result.setdefault("undefined", {}).update(found.pop("undefined"))
            result["order_engine"] = found
        ctx.progress(100, "order statistics done")
    return result


def dp_noise(plan: Plan, local: Local, parties: int, groups: list[str] | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """This party's part of each released query's noise (rows layout), and what the result
    and the ledger say of it."""
    dp = plan.dp
    if dp is None:
        return {}, {}

    def reach(column: str) -> float:  # the largest |value| after clipping
        return max(abs(v) for v in dp.bound_of(column))

    sensitivities: dict[str, float] = {}
    for q in sorted({q for *_, q in items_of(plan, local, groups) if q != "-"}):
        name, _, col = q.partition(":")
        if name in ("sum", "group_sum", "threshold_sum"):
            sensitivities[q] = reach(col)
        elif name == "cross":  # a row adds x_i * x_j
            i, j = (int(v) for v in col.split(":"))
            sensitivities[q] = reach(plan.columns[i]) * reach(plan.columns[j])
        else:  # counts: a row adds 1
            sensitivities[q] = 1.0
    draws, info = noise_parts(dp, sensitivities, parties)
    info["clipped_here"] = local.clipped
    return draws, info


def noise_parts(dp: Dp, sensitivities: dict[str, float], parties: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """This party's part of each query's noise (query -> a draw), and the ``dp`` block of the
    result and the ledger. The budget is split evenly over the m queries (basic composition);
    each party adds a 1/n part of an infinitely divisible noise: Laplace(b) as the sum over
    the parties of Gamma(1/n, b) - Gamma(1/n, b), Gaussian(sigma) as n draws of
    N(0, sigma^2/n). So the released totals carry exactly one Laplace (Gaussian) noise, and
    no party alone knows it."""
    m = len(sensitivities)
    rng = np.random.default_rng(secrets.randbits(128))
    scales: dict[str, float] = {}
    for q, sensitivity in sensitivities.items():
        if dp.delta is None:
            scales[q] = sensitivity * m / dp.epsilon
        else:
            eps_q, delta_q = dp.epsilon / m, dp.delta / m
            scales[q] = sensitivity * math.sqrt(2 * math.log(1.25 / delta_q)) / eps_q
    draws: dict[str, Any] = {}
    for q, b in scales.items():
        if dp.delta is None:
            draws[q] = lambda b=b: float(rng.gamma(1 / parties, b) - rng.gamma(1 / parties, b))
        else:
            draws[q] = lambda b=b: float(rng.normal(0.0, b / math.sqrt(parties)))
    info = {"mechanism": dp.mechanism, "epsilon": dp.epsilon, "delta": dp.delta,
            "queries": m, "noise_scale": scales,
            "bounds": {c: [lo, hi] for c, lo, hi in dp.bounds},
            "composition": "basic: each query gets epsilon/m (and delta/m)"}
    return draws, info


def results(plan: Plan, total: list[int], groups: list[str] | None = None) -> dict[str, Any]:
    """The statistics from the pooled aggregates (ring units, exact integers): the
    numerators are formed in exact integer arithmetic, so the only rounding is each party's
    float64 local sums, its fixed-point rounding, and the final division. With dp, counts
    are noisy fractions."""
    cols, k, s = plan.columns, len(plan.columns), ring.SCALE
    dp = plan.dp is not None
    it = iter(total)
    count: Any = next(it) / s if dp else next(it)
    sums = [next(it) for _ in range(k)] if plan.need_sums else []
    cross: dict[tuple[int, int], int] = {}
    if plan.need_cross:
        for i in range(k):
            for j in range(i, k):
                cross[i, j] = cross[j, i] = next(it)
    elif plan.need_squares:
        for i in range(k):
            cross[i, i] = next(it)
    bins = max(len(plan.edges) - 1, 0)
    hist = [[next(it) / s if dp else next(it) for _ in range(bins)] for _ in range(k)
            ] if plan.edges else []
    above = [(next(it) / s if dp else next(it), next(it) / s) for _ in range(k)
             ] if plan.threshold is not None else []
    by_group: dict[str, tuple[Any, list[float]]] = {}
    for g in groups or []:
        c = next(it)
        by_group[g] = (c / s if dp else c, [next(it) / s for _ in range(k)])

    def cov(i: int, j: int) -> float:  # population: divides by the count
        num = count * cross[i, j] * s - sums[i] * sums[j]
        v = num / (count * count * s * s)
        return max(v, 0.0) if i == j else v  # rounding must not make a variance negative

    out: dict[str, Any] = {}
    undefined: dict[str, str] = {}
    empty = "the pooled data set has no rows"
    for st in plan.stats:
        if st == "count":
            out[st] = {c: count for c in cols}
        elif st == "sum":
            out[st] = {c: sums[i] / s for i, c in enumerate(cols)}
        elif st == "threshold":
            out[st] = {c: {"threshold": plan.threshold, "count": above[i][0],
                           "sum": above[i][1]} for i, c in enumerate(cols)}
        elif st == "hist":
            out[st] = {c: {"edges": list(plan.edges), "counts": hist[i]}
                       for i, c in enumerate(cols)}
        elif count == 0 or (dp and count <= 0):
            out[st] = {c: None for c in cols}
            undefined[st] = empty if count == 0 else "the noisy count is not positive"
        elif st == "mean":
            out[st] = {c: sums[i] / (count * s) for i, c in enumerate(cols)}
        elif st in ("var", "std"):
            v = [cov(i, i) for i in range(k)]
            out[st] = {c: (v[i] if st == "var" else math.sqrt(v[i]))
                       for i, c in enumerate(cols)}
        elif st == "cov":
            out[st] = {a: {b: cov(i, j) for j, b in enumerate(cols)}
                       for i, a in enumerate(cols)}
        elif st == "corr":
            var = [cov(i, i) for i in range(k)]
            # with dp the noisy moments can put a ratio past 1: clipped (post-processing)
            out[st] = {a: {b: (max(-1.0, min(1.0, cov(i, j) / math.sqrt(var[i] * var[j])))
                               if var[i] > 0 and var[j] > 0 else None)
                           for j, b in enumerate(cols)} for i, a in enumerate(cols)}
            flat = [c for i, c in enumerate(cols) if var[i] <= 0]
            if flat:
                undefined[st] = f"no variance in {', '.join(flat)}: its correlations are null"
    if plan.group_by:
        out["group_count"] = {plan.group_by: {g: v[0] for g, v in by_group.items()}}
        out["group_sum"] = {c: {g: v[1][i] for g, v in by_group.items()}
                            for i, c in enumerate(cols)}
    result: dict[str, Any] = {"stats": out,
                              "variance": "population (divides by the count, numpy ddof=0)"}
    if undefined:
        result["undefined"] = undefined
    return result
