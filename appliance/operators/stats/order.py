"""The rows layout's comparison-based statistics (min, max, median, quantiles) on SPU.

Sums need no comparison, so the rows layout's linear statistics stay with our own additive
sharing (protocol.py). An order statistic does: the pooled rows must be compared without
anyone seeing them. That runs in SecretFlow's SPU (``spu_job.py``: CHEETAH between two
parties, ABY3 among three; with four or five parties three compute and the others provide
their rows as shares). SPU sorts each column obliviously and opens the minimum, maximum and
quantiles to the receivers only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.stats import spu_job
from appliance.operators.stats.spu_programs import OUTSIDE

#: beyond this magnitude a value cannot be ordered exactly in the engine's fixed point (FM128,
#: 40 fractional bits: the interpolation multiplies two such numbers)
MAX_ABS = float(2 ** 40)
assert OUTSIDE > MAX_ABS  # the columns layout pushes unmatched rows past every value


def run(ctx: PartyContext, plan: Any, local: Any, receivers: list[str]
        ) -> dict[str, Any] | None:
    """This party's part; at a receiver, {"stats": {...}, "undefined": {...}, figures}."""
    values = (np.concatenate(local.values) if local.values
              else np.zeros((0, len(plan.columns))))
    levels = list(plan.quantiles)
    if "median" in plan.stats:
        levels.append(0.5)
    doc = spu_job.run(ctx, "rows", {"values": values}, {"levels": levels}, receivers,
                      "order statistics")
    figures = {k: doc[k] for k in ("protocol", "engine", "computing", "provided", "rows",
                                   "run_s", "cpu_s", "link_bytes_sent", "link_bytes_received")
               if k in doc}
    if ctx.node_id not in receivers:
        return None
    found, rows = doc.get("results"), doc.get("rows")
    if not isinstance(found, dict) or not isinstance(rows, list):
        raise OperatorError("stats: the SPU engine returned no results at a receiver")
    return {**format_results(plan, found, sum(int(r) for r in rows), levels), **figures}


def format_results(plan: Any, found: dict[str, Any] | None, pooled: int,
                   levels: list[float]) -> dict[str, Any]:
    """{"stats": ..., "undefined": ...} of the order statistics from SPU's opened outputs
    (per column, in the plan's order: ``min``, ``max``, ``q<j>`` for each level) over
    ``pooled`` rows; with none, every one is null with the reason."""
    k, cols = len(plan.columns), plan.columns
    stats = set(plan.order_stats)
    expect = ([n for n in ("min", "max") if n in stats]
              + [f"q{i}" for i in range(len(levels))])
    if pooled and (found is None or any(not isinstance(found.get(n), list)
                                        or len(found[n]) != k for n in expect)):
        raise OperatorError("stats: the SPU engine's results do not match the request")
    out: dict[str, Any] = {}
    undefined: dict[str, str] = {}

    def column_map(key: str) -> dict[str, float]:
        assert found is not None
        return {c: float(found[key][i]) for i, c in enumerate(cols)}

    for st in plan.order_stats:
        if pooled == 0:
            out[st] = {c: None for c in cols}
            undefined[st] = "the pooled data set has no rows"
        elif st in ("min", "max"):
            out[st] = column_map(st)
        elif st == "median":
            out[st] = column_map(f"q{len(levels) - 1}")
        else:
            assert found is not None
            out[st] = {c: {repr(q): float(found[f"q{j}"][i]) for j, q in
                           enumerate(plan.quantiles)} for i, c in enumerate(cols)}
    return {"stats": out, "undefined": undefined}
