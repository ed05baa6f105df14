"""Accelerators: backends, devices, health and calibration; benchmark jobs and their results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from appliance.panel.charts import benchmark_chart
from appliance.panel.daemon import daemon
from appliance.panel.forms import flag_field, int_field
from appliance.panel.jobs import FINISHED_STATES

bp = Blueprint("accelerators", __name__, url_prefix="/accelerators")

BENCHMARK_BITS = (512, 1024, 2048, 3072)
# The key size deployments use; smaller ones are there for a quick look.
DEFAULT_BENCHMARK_BITS = 2048
HISTORY_LIMIT = 20


def calibration_rows(calibration: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per operation: the best measured throughput, at which batch, and the CPU crossover."""
    if not isinstance(calibration, Mapping):
        return []
    per_op = calibration.get("ops_per_s") or {}
    crossover = calibration.get("crossover") or {}
    rows = []
    for op, by_batch in sorted(per_op.items()):
        if not isinstance(by_batch, Mapping) or not by_batch:
            continue
        batch, best = max(by_batch.items(), key=lambda item: item[1])
        rows.append({"op": op, "best": best, "batch": batch, "crossover": crossover.get(op)})
    return rows


@bp.get("")
def index() -> str:
    client = daemon()
    backends = [
        {**backend, "calibration_rows": calibration_rows(backend.get("calibration"))}
        for backend in client.get("/v1/backends").get("backends", [])
    ]
    history = client.get("/v1/jobs", kind="benchmark", limit=HISTORY_LIMIT, offset=0)["jobs"]
    shown = None
    if request.args.get("job", "").isdigit():
        shown = client.get(f"/v1/jobs/{int(request.args['job'])}")
    elif history:
        # the latest result worth a chart: a run that measured nothing (or failed) must not
        # hide the last real figures
        shown = next((job for job in history
                      if job["state"] == "done" and benchmark_chart(job.get("result"))),
                     history[0])
    params = (shown or {}).get("params") or {}
    return render_template(
        "accelerators.html",
        backends=backends,
        history=history,
        job=shown,
        chart=benchmark_chart(shown.get("result")) if shown else None,
        bits_choices=BENCHMARK_BITS,
        # the form offers again what the shown run used, so "run it again" is one click
        default_bits=params["bits"] if params.get("bits") in BENCHMARK_BITS
        else DEFAULT_BENCHMARK_BITS,
        quick=bool(params.get("quick", True)),
        finished=FINISHED_STATES,
    )


@bp.post("/benchmark")
def start_benchmark() -> Any:
    bits = int_field(request.form, "bits", minimum=min(BENCHMARK_BITS),
                     maximum=max(BENCHMARK_BITS), choices=BENCHMARK_BITS)
    quick = flag_field(request.form, "quick")
    job = daemon().post(
        "/v1/jobs",
        {"kind": "benchmark", "params": {"bits": bits, "quick": quick}},
    )
    return redirect(url_for("accelerators.index", job=job["id"]))
