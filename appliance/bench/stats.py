"""Joint statistics benchmark: SecretFlow SPU as the reference, and our stats operator beside it.

    python -m appliance.bench stats [--rows 100000] [--parties 2] [--columns 4] [--seed 13]
        [--reference-venv build/reference-venv] [--timeout-s 600] [--order | --layout columns]

Generates K parties' float data (--rows rows per party, --columns columns, seeded) and computes
per-column sum, mean and population variance of the pooled rows three ways, in the same run on
the same machine:

- numpy on the concatenated rows (the truth both engines are checked against);
- ours: the native stats operator (``appliance.operators.stats``), all K parties in this process
  (one thread each, ``run_parties``) over in-memory sessions (the channel's real session code,
  without gRPC), data sets in memory;
- SPU: ``stats_reference.py`` under the reference venv's python (spu 0.9.5 needs numpy<2),
  SPU's simulator (all parties in one process), SEMI2K for 2 parties, ABY3 for 3, FM128.

The table gives wall and CPU time, the largest relative error against numpy (ours must be
within 1e-6; SPU's is reported as measured), load average before and after, and the ratio
ours/SPU on wall time (target <= 1.0). Exit 2 if the reference venv is missing.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.bench import machine
from appliance.bench.psi import REFERENCE_VENV, reference_python

REFERENCE_SCRIPT = Path(__file__).resolve().with_name("stats_reference.py")
RATIO_TARGET = 1.0  # ours wall / SPU wall
OUR_REL_TOL = 1e-6
STATS = ("sum", "mean", "var")


class _Rows:
    """One party's rows in memory, as the operator reads a data set."""

    id_column = "id"
    grade = "internal"

    def __init__(self, name: str, data: np.ndarray, columns: list[str],
                 batch: int = 1 << 16) -> None:
        self._data, self._columns, self._batch = data, columns, batch
        self._name = name
        self.fingerprint = f"in-memory:{name}:{data.shape[0]}x{data.shape[1]}"

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        want = list(columns or [self.id_column, *self._columns])
        for lo in range(0, self._data.shape[0], self._batch):
            hi = min(lo + self._batch, self._data.shape[0])
            arrays = []
            for c in want:
                if c == self.id_column:
                    arrays.append(pa.array([f"{self._name}-{i}" for i in range(lo, hi)]))
                else:
                    arrays.append(pa.array(self._data[lo:hi, self._columns.index(c)]))
            yield pa.record_batch(arrays, names=want)


def make_data(parties: int, rows: int, columns: int, seed: int) -> list[np.ndarray]:
    """K parties' rows: per column its own location and scale, shifted a little per party."""
    rng = np.random.default_rng(seed)
    loc = rng.uniform(-500.0, 500.0, columns)
    scale = rng.uniform(0.5, 100.0, columns)
    return [rng.normal(loc + 10.0 * p, scale, (rows, columns)) for p in range(parties)]


def truth(parts: list[np.ndarray]) -> dict[str, np.ndarray]:
    x = np.concatenate(parts)
    return {"sum": x.sum(axis=0), "mean": x.mean(axis=0), "var": x.var(axis=0)}


def max_rel_err(got: dict[str, Any], want: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for s in STATS:
        g = np.asarray(got[s], dtype=float)
        w = want[s]
        worst = max(worst, float(np.max(np.abs(g - w) / np.maximum(np.abs(w), 1e-300))))
    return worst


def run_operator(readers: dict[str, Any], params: dict[str, Any], job_id: str,
                 timeout: float) -> tuple[dict[str, Any], float, float]:
    """The stats operator, all parties in this process (the first name the guest): each
    party's result, the wall time, and the CPU time of this process and of its engines."""
    from appliance.operators.base import local_contexts, run_parties
    from appliance.operators.stats import STATS as OPERATOR

    # SPU runs engine processes, whose scratch goes beside the job's output
    out = Path(tempfile.mkdtemp(prefix="pec-stats-bench-out-"))
    ctxs = local_contexts(list(readers), params, readers, job_id=job_id, timeout=timeout,
                          output_root=out)
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    results = run_parties(OPERATOR.run, ctxs, timeout=4 * timeout)
    wall = time.perf_counter() - start
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    shutil.rmtree(out, ignore_errors=True)
    for node, res in results.items():
        if isinstance(res, Exception):
            raise RuntimeError(f"stats operator failed at {node}: {res}") from res
    cpu = sum((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)
              for a, b in zip(before, after, strict=True))
    return results, wall, cpu


def run_ours(parts: list[np.ndarray], columns: list[str], timeout: float,
             stats: tuple[str, ...] = STATS) -> dict[str, Any]:
    names = [f"party-{i}" for i in range(len(parts))]
    params = {"columns": ",".join(columns), "stats": ",".join(stats)}
    results, wall, cpu = run_operator(
        {n: _Rows(n, d, columns) for n, d in zip(names, parts, strict=True)}, params,
        "bench-stats", timeout)
    s = results[names[0]]["stats"]
    return {"wall_s": wall, "cpu_s": cpu, **{k: [s[k][c] for c in columns] for k in stats}}


def run_spu(py: Path, parts: list[np.ndarray], timeout: float,
            order: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pec-stats-bench-") as d:
        paths = []
        for i, p in enumerate(parts):
            path = Path(d) / f"p{i}.npy"
            np.save(path, p)
            paths.append(str(path))
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([str(py), str(REFERENCE_SCRIPT), str(len(parts)), *paths,
                               *(["--order"] if order else [])],
                              capture_output=True, text=True, timeout=timeout)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            break
    if proc.returncode != 0 or res is None or "error" in res:
        raise RuntimeError(f"SPU reference exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                           f"\n{proc.stderr[-4000:]}")
    res["process_cpu_s"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return res


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m appliance.bench stats",
                                 description="joint statistics: SPU and the native operator")
    ap.add_argument("--rows", type=int, default=100_000, help="rows per party")
    ap.add_argument("--parties", type=int, default=2, choices=(2, 3, 4, 5),
                    help="2 or 3; up to 5 with --layout columns")
    ap.add_argument("--columns", type=int, default=4)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--reference-venv", type=Path, default=REFERENCE_VENV)
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--order", action="store_true",
                    help="min, max and median instead (ours: the operator's SPU engines, one "
                         "process per party over the relay; SPU: its simulator with the same "
                         "protocol, CHEETAH or ABY3, FM128, 40 fractional bits)")
    ap.add_argument("--layout", choices=("rows", "columns"), default="rows")
    ap.add_argument("--end-to-end", action="store_true",
                    help="rows layout, linear statistics: ours through one real daemon per "
                         "party (data sets registered from CSVs, mTLS sessions), beside the "
                         "in-process run and SPU")
    args = ap.parse_args(argv)
    if args.parties > 3 and args.layout != "columns":
        ap.error("4 or 5 parties: with --layout columns")
    return args


ORDER_STATS = ("min", "max", "median")


def main_order(args: argparse.Namespace, py: Path) -> int:
    """--order: the comparison-based statistics; exact to the fixed point, so the check is
    absolute (1e-9 of the column's range)."""
    columns = [f"c{i}" for i in range(args.columns)]
    parts = make_data(args.parties, args.rows, args.columns, args.seed)
    x = np.concatenate(parts)
    want = {"min": x.min(axis=0), "max": x.max(axis=0), "median": np.median(x, axis=0)}
    span = float(np.max(x.max(axis=0) - x.min(axis=0)))
    print(f"data: {args.parties} parties x {args.rows} rows x {args.columns} columns; "
          f"per-column {', '.join(ORDER_STATS)}")
    ours = run_ours(parts, columns, args.timeout_s, ORDER_STATS)
    spu = run_spu(py, parts, args.timeout_s, order=True)

    def err(got: dict[str, Any]) -> float:
        return max(float(np.max(np.abs(np.asarray(got[k], float) - want[k])))
                   for k in ORDER_STATS) / span

    print()
    print(f"{'engine':<52} {'wall s':>9} {'CPU s':>9} {'max err / range':>16}")
    print(f"{'ours: stats operator, SPU engines over the relay':<52} {ours['wall_s']:>9.3f} "
          f"{ours['cpu_s']:>9.3f} {err(ours):>16.3e}")
    print(f"{spu['engine']:<52} {spu['wall_s']:>9.3f} {spu['cpu_s']:>9.3f} {err(spu):>16.3e}")
    print("ours: job wall, all parties in this process, engine processes' CPU included; SPU: "
          "its simulator's run (inputs shared, compiled, run, revealed), one process")
    print(f"load {machine.fmt_load(machine.load())} (1/5/15 min) after")
    ratio = ours["wall_s"] / spu["wall_s"]
    print(f"ratio ours/SPU (wall): {ratio:.2f} (target <= 2: {'met' if ratio <= 2 else 'missed'})")
    return 0 if err(ours) <= 1e-9 else 1


COLUMNS_STATS = "count,sum,mean,var,cov"


class _Keyed:
    """One party of the columns layout in memory: integer ids and its own columns."""

    id_column = "id"
    grade = "internal"

    def __init__(self, name: str, ids: np.ndarray, data: np.ndarray,
                 columns: list[str]) -> None:
        self._ids, self._data, self._columns = ids, data, columns
        self.fingerprint = f"in-memory:{name}:{data.shape[0]}x{data.shape[1]}"

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        want = list(columns or [self.id_column, *self._columns])
        for lo in range(0, len(self._ids), 1 << 16):
            hi = min(lo + (1 << 16), len(self._ids))
            yield pa.record_batch(
                [pa.array(self._ids[lo:hi]) if c == self.id_column
                 else pa.array(self._data[lo:hi, self._columns.index(c)]) for c in want],
                names=want)


def main_columns(args: argparse.Namespace, py: Path) -> int:
    """--layout columns: count, sums, variances and the covariance matrix of the join, with a
    threshold on the row sum; ours through the operator, SPU's simulator on the same program."""
    from appliance.operators.stats import columns as layout
    from appliance.operators.stats.protocol import plan_of

    k, n = args.parties, args.rows
    rng = np.random.default_rng(args.seed)
    names = [f"party-{g}" for g in range(k)]
    owned = {g: [c for c in range(args.columns) if c % k == g] for g in range(k)}
    ids = [rng.choice(int(1.25 * n), n, replace=False) for _ in range(k)]
    loc = rng.uniform(-500.0, 500.0, args.columns)
    scale = rng.uniform(0.5, 100.0, args.columns)
    data = [rng.normal(loc[owned[g]], scale[owned[g]], (n, len(owned[g]))) for g in range(k)]
    qualified = [f"{names[c % k]}.c{c}" for c in range(args.columns)]
    params = {"layout": "columns", "key": "id", "columns": ",".join(qualified),
              "stats": COLUMNS_STATS, "threshold": "0"}
    # numpy's join: the truth
    common = ids[0]
    for more in ids[1:]:
        common = np.intersect1d(common, more)
    x = np.empty((len(common), args.columns))
    for g in range(k):
        at = np.searchsorted(ids[g], common, sorter=np.argsort(ids[g]))
        rows = np.argsort(ids[g])[at]
        for j, c in enumerate(owned[g]):
            x[:, c] = data[g][rows, j]
    print(f"data: {k} parties x {n} rows of {int(1.25 * n)} ids; {args.columns} columns "
          f"spread over them; the join has {len(common)} rows; {COLUMNS_STATS}, threshold")

    readers = {names[g]: _Keyed(names[g], ids[g], data[g], [f"c{c}" for c in owned[g]])
               for g in range(k)}
    results, wall, ours_cpu = run_operator(readers, params, "bench-columns", args.timeout_s)
    ours = results[names[0]]["stats"]

    # SPU's simulator on the same keys and values, the same program and request
    plan = plan_of(params)
    block = [c for g in range(k) for c in owned[g]]
    exps = [layout.exponent(data[g][:, j]) for g in range(k) for j in range(len(owned[g]))]
    with tempfile.TemporaryDirectory(prefix="pec-stats-bench-") as d:
        paths = []
        for g in range(k):
            path = Path(d) / f"p{g}.npz"
            np.savez(path, keys=layout.keys_of(ids[g].tolist(), "bench-columns"),
                     values=data[g])
            paths.append(str(path))
        s0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([str(py), str(REFERENCE_SCRIPT), str(k), *paths, "--columns",
                               json.dumps(layout.request_of(plan, exps))],
                              capture_output=True, text=True, timeout=4 * args.timeout_s)
        s1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ref = next((json.loads(ln) for ln in reversed(proc.stdout.splitlines())
                if ln.startswith("{")), None)
    if proc.returncode != 0 or ref is None:
        raise RuntimeError(f"SPU reference exited {proc.returncode}:\n{proc.stderr[-4000:]}")

    want = {"count": len(common), "sum": x.sum(axis=0), "var": x.var(axis=0)}
    row_sum = x.sum(axis=1)

    def rel(got: float, w: float) -> float:
        return abs(got - w) / max(abs(w), 1e-300)

    ours_err = max([rel(ours["sum"][q], want["sum"][c]) for c, q in enumerate(qualified)]
                   + [rel(ours["var"][q], want["var"][c]) for c, q in enumerate(qualified)])
    spu_sum = np.empty(args.columns)
    spu_sum[block] = ref["sum"]
    spu_err = max(rel(spu_sum[c], want["sum"][c]) for c in range(args.columns))
    exact = (ours["count"][qualified[0]] == len(common) == int(ref["count"])
             and ours["threshold"]["row_sum"]["count"] == int((row_sum > 0).sum()))
    print()
    print(f"{'engine':<52} {'wall s':>9} {'CPU s':>9} {'max rel err':>12}")
    print(f"{'ours: stats operator, SPU engines over the relay':<52} {wall:>9.3f} "
          f"{ours_cpu:>9.3f} {ours_err:>12.3e}")
    print(f"{ref['engine']:<52} {ref['wall_s']:>9.3f} {ref['cpu_s']:>9.3f} {spu_err:>12.3e}")
    print(f"(SPU process, start to exit incl. jax/spu import: CPU "
          f"{(s1.ru_utime + s1.ru_stime) - (s0.ru_utime + s0.ru_stime):.3f} s)")
    print("ours: job wall, all parties in this process (the keys hashed, the header round, "
          "the engines), engine processes' CPU included; SPU: its simulator's run")
    engine = results[names[0]]["engine"]
    print(f"ours, inside the first computing party's engine (share, compile, run, reveal, "
          f"over the relay): {engine.get('run_s', float('nan')):.3f} s wall, "
          f"{engine.get('cpu_s', float('nan')):.3f} s CPU")
    print(f"load {machine.fmt_load(machine.load())} (1/5/15 min) after")
    print(f"count and threshold count exact: {'yes' if exact else 'NO'}; sums and variances "
          f"within {OUR_REL_TOL:g}: {'yes' if ours_err <= OUR_REL_TOL else 'NO'}")
    print(f"ratio ours/SPU (wall): {wall / ref['wall_s']:.2f} (recorded; no target)")
    return 0 if exact and ours_err <= OUR_REL_TOL else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    py = reference_python(args.reference_venv, "libspu")
    if py is None:
        return 2
    host = machine.describe()
    load0 = machine.load()
    print(f"machine: {host['nproc']} CPUs ({host['cpu_model']}), "
          f"Linux {host['kernel']}; load {machine.fmt_load(load0)} (1/5/15 min) before")
    if args.order:
        return main_order(args, py)
    if args.layout == "columns":
        return main_columns(args, py)
    columns = [f"c{i}" for i in range(args.columns)]
    parts = make_data(args.parties, args.rows, args.columns, args.seed)
    print(f"data: {args.parties} parties x {args.rows} rows x {args.columns} float64 columns "
          f"({args.parties * args.rows} pooled rows), seed {args.seed}; "
          f"per-column {', '.join(STATS)} (population variance)")
    want = truth(parts)
    ours = run_ours(parts, columns, args.timeout_s)
    ours_err = max_rel_err(ours, want)
    spu = run_spu(py, parts, args.timeout_s)
    spu_err = max_rel_err(spu, want)
    load1 = machine.load()
    print()
    print(f"{'engine':<44} {'wall s':>9} {'CPU s':>9} {'max rel err vs numpy':>21}")
    print(f"{'ours: stats operator, ' + str(args.parties) + ' parties, in-memory':<44} "
          f"{ours['wall_s']:>9.3f} {ours['cpu_s']:>9.3f} {ours_err:>21.3e}")
    print(f"{spu['engine']:<44} {spu['wall_s']:>9.3f} {spu['cpu_s']:>9.3f} {spu_err:>21.3e}")
    print(f"(SPU process, start to exit incl. jax/spu import: CPU {spu['process_cpu_s']:.3f} s)")
    print(f"load {machine.fmt_load(load1)} (1/5/15 min) after")
    ok = ours_err <= OUR_REL_TOL
    print(f"ours vs numpy: max rel err {ours_err:.3e} "
          f"{'<=' if ok else '>'} {OUR_REL_TOL:g}: {'ok' if ok else 'FAILED'}")
    ratio = ours["wall_s"] / spu["wall_s"]
    met = ratio <= RATIO_TARGET
    print(f"ratio ours/SPU (wall): {ratio:.3f} (target <= {RATIO_TARGET:g}: "
          f"{'met' if met else 'missed'})")
    if args.end_to_end:
        ok = end_to_end(args, parts, columns, want, spu) and ok
    return 0 if ok else 1


def end_to_end(args: argparse.Namespace, parts: list[np.ndarray], columns: list[str],
               want: dict[str, np.ndarray], spu: dict[str, Any]) -> bool:
    """The same statistics through one daemon per party; its ratio to SPU's run above."""
    from appliance.bench.stats_daemons import run_end_to_end

    print()
    print(f"end to end: {args.parties} daemons (dev trust root, mTLS on loopback), CSV data "
          "sets registered, one stats job submitted at the first")
    res = run_end_to_end(parts, columns, ",".join(STATS), args.timeout_s)
    if "error" in res:
        print(f"end to end FAILED: {res['error']}")
        return False
    got = {k: [res["stats"][k][c] for c in columns] for k in STATS}
    err = max_rel_err(got, want)
    print(f"set-up (provision, start, enrol) {res['setup_s']:.1f} s; registration "
          f"{', '.join(f'{s:.2f}' for s in res['register_s'])} s (each party, at once)")
    print(f"job, submit to done at each party: {', '.join(f'{s:.3f}' for s in res['job_s'])} s;"
          f" daemon CPU {', '.join(f'{s:.2f}' for s in res['job_cpu_s'])} s; load "
          f"{machine.fmt_load(res['load_job_before'])} before, "
          f"{machine.fmt_load(res['load_after'])} after")
    ok = err <= OUR_REL_TOL
    print(f"end to end vs numpy: max rel err {err:.3e}: {'ok' if ok else 'FAILED'}")
    ratio = res["wall_s"] / spu["wall_s"]
    print(f"ratio end to end/SPU (wall): {ratio:.3f} (target <= {RATIO_TARGET:g}: "
          f"{'met' if ratio <= RATIO_TARGET else 'missed'})")
    return ok


if __name__ == "__main__":
    sys.exit(main())
