"""`python -m appliance.bench homo`: horizontal FedAvg, Flower against ours, same data.

    make flower-venv                                 # Flower 1.42 + Ray, in their own venv
    python -m appliance.bench homo [--parties 3] [--rows 5000] [--features 20] [--rounds 3]

N parties of generated rows (two Gaussian classes, seed 11) train a logistic regression with
the same local step (the appliance's ``SoftmaxLR.fit``: learning rate 0.1, batch 64, one local
epoch a round). Flower runs it in its simulation engine (Ray, one process tree). Ours runs it
between N real daemons on loopback (provisioned, enrolled and approved first, not timed), once
per secure aggregation: none, mask and paillier. A job's time runs from its submission to the
aggregator's "done", so it includes attestation of every peer, the job's creation at each,
the sessions, reading the data sets and the model written at every party. Ratios are to
Flower's wall time with its Ray start. CPU time is the daemons' (psutil) and load averages are
printed beside the times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.bench import machine
from appliance.bench.psi_daemons import BenchNode, start_nodes
from appliance.operators.base import job_dir
from appliance.operators.fl.models import SoftmaxLR, evaluate

ROOT = Path(__file__).resolve().parents[2]
FLOWER_VENV = ROOT / "build" / "flower-venv"
PARAMS = {"learning_rate": 0.1, "alpha": 0.0001, "batch_size": 64, "local_epochs": 1}
TARGETS = {"none": 1.0, "mask_over_none": 1.5}


def make_data(parties: int, rows: int, features: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Standardised over the pool, so that our pooled scaling step is the identity and both
    engines run the same arithmetic on the same numbers."""
    rng = np.random.default_rng(11)
    ys = [rng.integers(0, 2, rows) for _ in range(parties)]
    xs = [rng.standard_normal((rows, features)) + (y[:, None] * 0.8) for y in ys]
    pooled = np.concatenate(xs)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    return [((x - mean) / std, y) for x, y in zip(xs, ys, strict=True)]


def run_flower(data: list[tuple[np.ndarray, np.ndarray]], rounds: int, tmp: Path,
               timeout: float) -> dict[str, Any]:
    py = FLOWER_VENV / "bin" / "python"
    if not py.exists():
        return {"engine": "flower", "error": f"{py} missing: run `make flower-venv`"}
    npz = tmp / "parties.npz"
    np.savez(npz, parties=len(data), **{f"x{i}": x for i, (x, _) in enumerate(data)},
             **{f"y{i}": y for i, (_, y) in enumerate(data)})
    t0 = time.perf_counter()
    done = subprocess.run([str(py), str(ROOT / "appliance/bench/homo_flower.py"), str(npz),
                           str(rounds), json.dumps(PARAMS)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    outer = time.perf_counter() - t0
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["process_s"] = outer  # interpreter, imports and Ray's start included
            return res
    return {"engine": "flower", "error": f"exit {done.returncode}: "
            f"{(done.stderr or done.stdout).strip().splitlines()[-3:]}"}


def run_ours(data: list[tuple[np.ndarray, np.ndarray]], rounds: int, modes: list[str],
             timeout: float) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="pec-homo-bench-"))
    password = secrets.token_urlsafe(18)
    nodes: list[BenchNode] = []
    out: list[dict[str, Any]] = []
    try:
        start_nodes(nodes, base, len(data), password)
        d = data[0][0].shape[1]
        for n, (x, y) in zip(nodes, data, strict=True):
            path = base / f"{n.node_id}.csv"
            with path.open("w") as f:
                f.write(",".join(["id", *(f"x{j}" for j in range(d)), "label"]) + "\n")
                for i in range(len(x)):
                    f.write(",".join([f"{n.node_id}-{i}", *(repr(float(v)) for v in x[i]),
                                      str(int(y[i]))]) + "\n")
            n.api.post("/v1/datasets", {"name": "bench", "path": str(path), "id_column": "id",
                                        "grade": "L2"})
        agg, peers = nodes[0], nodes[1:]
        # the trained model is scored on the pooled rows, the same for every mode
        pooled_x = np.concatenate([p[0] for p in data])
        pooled_y = np.concatenate([p[1] for p in data])
        model = SoftmaxLR(d, 2, PARAMS)
        for mode in modes:
            load0 = machine.load()
            cpu0 = [n.cpu_s() for n in nodes]
            t0 = time.perf_counter()
            job = agg.api.post("/v1/jobs", {"kind": "train", "params": {
                "peers": [p.node_id for p in peers], "dataset": "bench",
                "peer_datasets": {p.node_id: "bench" for p in peers},
                "algorithm": "homo_lr", "label": "label", "rounds": rounds,
                "secure_aggregation": mode, "validation": 0.0, **PARAMS}})
            done, end = agg.wait_job(job["id"], timeout)
            row: dict[str, Any] = {"engine": f"pec {mode}", "wall_s": end - t0,
                                   "cpu_s": sum(n.cpu_s() for n in nodes) - sum(cpu0),
                                   "load_before": load0}
            if done["state"] != "done":
                row["error"] = f"{done['state']}: {done.get('error')}"
            else:
                o = done["result"]["outputs"]
                row |= {"protocol_s": o["seconds"], "he_s": o["he_seconds"]}
                doc = json.loads(Path(_model_file(agg, job)).read_text())
                z = (pooled_x - np.array(doc["mean"])) / np.array(doc["scale"])
                row["accuracy"] = evaluate(model, np.array(doc["weights"]), z,
                                           pooled_y)[1] / len(pooled_y)
            out.append(row)
        return out
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):
                n.stop()
        shutil.rmtree(base, ignore_errors=True)


def _model_file(node: BenchNode, job: dict[str, Any]) -> str:
    fed = node.api.get(f"/v1/jobs/{job['id']}/parties")["job_id"]
    return str(job_dir(node.state / "outputs", fed) / "model.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.bench homo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--features", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", default="none,mask,paillier")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv or [])
    if args.parties < 3:
        p.error("--parties: at least 3 (masking needs three)")
    host = machine.describe()
    load0 = machine.load()
    print(f"homo bench: {host['nproc']} CPUs ({host['cpu_model']}); {args.parties} "
          f"parties x {args.rows} rows x {args.features} features, {args.rounds} rounds; "
          f"load {machine.fmt_load(load0)} before", flush=True)
    data = make_data(args.parties, args.rows, args.features)
    with tempfile.TemporaryDirectory() as tmp:
        flower = run_flower(data, args.rounds, Path(tmp), args.timeout)
    ours = run_ours(data, args.rounds, args.modes.split(","), args.timeout)
    report = {"machine": host, "flower": flower, "ours": ours, "load_before": load0,
              "load_after": machine.load()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    ref = flower.get("wall_s")
    print(f"{'engine':<16}{'wall s':>9}{'rounds s':>10}{'CPU s':>8}{'HE s':>7}"
          f"{'accuracy':>10}{'x Flower':>10}")
    if "error" in flower:
        print(f"flower: {flower['error']}")
    else:
        print(f"{'flower ' + flower['version']:<16}{flower['wall_s']:>9.2f}"
              f"{flower['rounds_s']:>10.2f}{flower['cpu_s_driver']:>8.2f}{'-':>7}"
              f"{flower['accuracy']:>10.4f}{1.0:>10.2f}")
    plain = next((r["wall_s"] for r in ours if r["engine"] == "pec none" and "error" not in r),
                 None)
    for r in ours:
        if "error" in r:
            print(f"{r['engine']:<16} {r['error']}")
            continue
        ratio = f"{r['wall_s'] / ref:.2f}" if ref else "-"
        print(f"{r['engine']:<16}{r['wall_s']:>9.2f}{r['protocol_s']:>10.2f}{r['cpu_s']:>8.2f}"
              f"{r['he_s']:>7.2f}{r['accuracy']:>10.4f}{ratio:>10}")
    if ref and plain:
        mask = next((r["wall_s"] for r in ours if r["engine"] == "pec mask"
                     and "error" not in r), None)
        print(f"targets: plain <= 1.0 x Flower: {plain / ref:.2f} "
              f"({'met' if plain / ref <= TARGETS['none'] else 'MISSED'})"
              + (f"; mask <= 1.5 x plain: {mask / plain:.2f} "
                 f"({'met' if mask / plain <= TARGETS['mask_over_none'] else 'MISSED'})"
                 if mask else ""))
    print(f"load {machine.fmt_load(machine.load())} after")
    return 0
