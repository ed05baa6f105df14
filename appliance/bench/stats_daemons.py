"""Joint statistics end to end through real daemons, for ``python -m appliance.bench stats
--end-to-end``.

One daemon per party on a temporary state directory (``psi_daemons.BenchNode``: dev trust
root, the development profile override, interconnect on 127.0.0.1), every pair enrolled, each
party's generated rows written as a CSV and registered as a data set, then one ``stats`` job
submitted from the first and polled to the end at every party. The job's time includes what
the in-process run leaves out: the data set read (CSV scan), the attested mTLS sessions and
the ledger records. Registration (a full scan for the fingerprint) is timed on its own line.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.bench import machine
from appliance.bench.psi_daemons import BenchNode, register_all, start_nodes

DATASET = "bench_rows"


def write_csv(path: Path, data: np.ndarray, columns: list[str], party: int) -> None:
    """The party's rows with an id column, in chunks (10^6 rows x 4 columns is ~80 MB)."""
    with path.open("w") as f:
        f.write(",".join(["id", *columns]) + "\n")
        for lo in range(0, len(data), 100_000):
            chunk = data[lo:lo + 100_000]
            f.write("".join(f"p{party}-{lo + i}," + ",".join(repr(float(v)) for v in row)
                            + "\n" for i, row in enumerate(chunk)))


def run_end_to_end(parts: list[np.ndarray], columns: list[str], stats: str,
                   timeout_s: float = 600.0) -> dict[str, Any]:
    """K daemons, one stats job over their rows; timings, per-daemon CPU, the result."""
    base = Path(tempfile.mkdtemp(prefix="pec-stats-e2e-"))
    password = secrets.token_urlsafe(18)
    nodes: list[BenchNode] = []
    res: dict[str, Any] = {"load_before": machine.load()}
    try:
        t0 = time.perf_counter()
        start_nodes(nodes, base, len(parts), password)
        res["setup_s"] = round(time.perf_counter() - t0, 2)
        paths = []
        for g, data in enumerate(parts):
            path = base / f"party{g}.csv"
            write_csv(path, data, columns, g)
            paths.append(path)
        res["register_s"] = register_all(list(zip(nodes, paths, strict=True)), DATASET,
                                         timeout_s)
        cpu0 = [n.cpu_s() for n in nodes]
        res["load_job_before"] = machine.load()
        a, others = nodes[0], nodes[1:]
        t_submit = time.perf_counter()
        job = a.api.post("/v1/jobs", {"kind": "stats", "params": {
            "peers": [n.node_id for n in others], "dataset": DATASET,
            "peer_datasets": {n.node_id: DATASET for n in others},
            "columns": ",".join(columns), "stats": stats}})
        a_job, a_end = a.wait_job(job["id"], timeout_s)
        ends = [a_end]
        for n in others:
            side = n.api.get("/v1/jobs", kind="stats")["jobs"][0]
            _, end = n.wait_job(side["id"], timeout_s)
            ends.append(end)
        res["job_s"] = [round(e - t_submit, 3) for e in ends]
        res["wall_s"] = max(res["job_s"])
        res["job_cpu_s"] = [round(n.cpu_s() - c, 2) for n, c in zip(nodes, cpu0, strict=True)]
        if a_job["state"] != "done":
            res["error"] = f"job {a_job['state']}: {a_job.get('error')}"
            return res
        res["stats"] = a_job["result"]["outputs"]["stats"]
        return res
    except Exception as e:  # the report says what failed; the daemons are stopped below
        res["error"] = f"{type(e).__name__}: {e}"
        return res
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()
        res["load_after"] = machine.load()
        shutil.rmtree(base, ignore_errors=True)
