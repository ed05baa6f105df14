"""The comparison-based statistics (min, max, median, quantiles) on SecretFlow's SPU.

Sums need no comparison, so the rows layout's linear statistics stay with our own additive
sharing (protocol.py). An order statistic does: the pooled rows must be compared without
anyone seeing them. That runs in SPU (spu 0.9.5, the engine venv of ``engines.secretflow``),
one engine process per party (``spu_engine.py``), its link carried over the job's sessions by
the engine relay. Each party secret-shares its own rows inside SPU; SPU sorts each column
obliviously and opens the minimum, maximum and quantiles to the receivers only.

Protocols: CHEETAH for two parties (semi-honest, no dealer), ABY3 for three (replicated secret
sharing, honest majority: any one party alone learns nothing). Four or five parties: refused by
name (SPU's SEMI2K for n parties needs a trusted dealer for its triples).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from appliance.operators import engines
from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.engine_runner import run_engine, scratch_dir

ENGINE_SCRIPT = Path(__file__).resolve().with_name("spu_engine.py")
#: beyond this magnitude a value cannot be ordered exactly in the engine's fixed point (FM128,
#: 40 fractional bits: the interpolation multiplies two such numbers)
MAX_ABS = float(2 ** 40)
PROTOCOLS = {2: "CHEETAH", 3: "ABY3"}


def run(ctx: PartyContext, plan: Any, local: Any, receivers: list[str]
        ) -> dict[str, Any] | None:
    """This party's part; at a receiver, {"stats": {...}, "undefined": {...}, figures}."""
    order = sorted(ctx.parties)
    if len(order) not in PROTOCOLS:
        raise OperatorError(f"stats: {', '.join(plan.order_stats)} run among 2 or 3 parties "
                            f"(SPU's CHEETAH or ABY3), not {len(order)}")
    engine = engines.secretflow(ctx.node_id)
    values = (np.concatenate(local.values) if local.values
              else np.zeros((0, len(plan.columns))))
    levels = list(plan.quantiles)
    if "median" in plan.stats:
        levels.append(0.5)
    work = scratch_dir(ctx, ".spu-stats-")
    try:
        return _run(ctx, engine, order, values, levels, plan, receivers, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(ctx: PartyContext, engine: engines.Engine, order: list[str], values: np.ndarray,
         levels: list[float], plan: Any, receivers: list[str], work: Path
         ) -> dict[str, Any] | None:
    total = len(values)  # this party's; the pooled count is checked by the engine
    inp = work / "input.npy"
    ranks = ",".join(str(order.index(r)) for r in receivers)
    # each engine waits this long for any one message (its barriers included): generous, as
    # an oblivious sort among three engines on a loaded machine can hold a party a minute or
    # more (a 60 s wait failed once in CI); a peer that is gone ends the job sooner through
    # its session
    timeout = max(ctx.timeout, 600.0 + 120.0 * total / 1e5)

    def command(addresses: list[str]) -> list[str]:
        return [str(engine.python), str(ENGINE_SCRIPT), "--rank",
                str(order.index(ctx.node_id)), "--addresses", ",".join(addresses),
                "--input", str(inp), "--receivers", ranks,
                "--quantiles", ",".join(repr(q) for q in levels),
                "--link-id", "stats-" + hashlib.sha256(ctx.job_id.encode()).hexdigest()[:16],
                "--link-timeout-s", f"{timeout:.0f}", "--wait-for-go"]

    doc = run_engine(ctx, order, command, work, timeout,
                     f"SPU engine ({PROTOCOLS[len(order)]})",
                     prepare=lambda: np.save(inp, values))
    figures = {"protocol": doc.get("protocol"), "engine": f"spu {engine.version}",
               "rows": doc.get("rows"), "run_s": doc.get("run_s"), "cpu_s": doc.get("cpu_s"),
               "link_bytes_sent": doc.get("link_bytes_sent"),
               "link_bytes_received": doc.get("link_bytes_received")}
    if ctx.node_id not in receivers:
        return None
    found = doc.get("results")
    rows = doc.get("rows")
    if not isinstance(found, dict) or not isinstance(rows, list):
        raise OperatorError("stats: the SPU engine returned no results at a receiver")
    k = len(plan.columns)
    expect = ["min", "max"] + [f"q{i}" for i in range(len(levels))]
    if sorted(found) != sorted(expect) or any(len(found[n]) != k for n in expect):
        raise OperatorError("stats: the SPU engine's results do not match the request")
    pooled = sum(int(r) for r in rows)
    out: dict[str, Any] = {}
    undefined: dict[str, str] = {}
    cols = plan.columns

    def column_map(key: str) -> dict[str, float]:
        return {c: found[key][i] for i, c in enumerate(cols)}

    for st in plan.order_stats:
        if pooled == 0:
            out[st] = {c: None for c in cols}
            undefined[st] = "the pooled data set has no rows"
        elif st in ("min", "max"):
            out[st] = column_map(st)
        elif st == "median":
            out[st] = column_map(f"q{len(levels) - 1}")
        else:
            out[st] = {c: {repr(q): found[f"q{j}"][i] for j, q in enumerate(plan.quantiles)}
                       for i, c in enumerate(cols)}
    return {"stats": out, "undefined": undefined, **figures}
