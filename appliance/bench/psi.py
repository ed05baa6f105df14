"""PSI benchmark: SecretFlow's PSI (``spu.psi``) as the reference, and our engine beside it.

    python -m appliance.bench psi [--size 100000] [--overlap 0.5] [--protocols ecdh,rr22,kkrt]
        [--seed 13] [--timeout-s 600] [--link-timeout-s S] [--retries 1] [--keys-unique]
        [--no-native] [--end-to-end] [--json]

Generates two CSV files (header ``id``) of N distinct random 11-digit, phone-number-like ids
each, sharing round(N * overlap) of them (seeded, so every run sees the same sets), and for each
protocol runs SecretFlow's two parties at the same time as two processes of the reference venv
(``build/reference-venv``, ``make reference-venv``; separate because spu 0.9.5 needs numpy<2
and the appliance venv has numpy 2), linked over 127.0.0.1. Each party writes its intersection
file; both files are compared as sets with the known intersection. The table gives per party
the time inside ``psi_execute``, the process's CPU time (all threads) and peak RSS, and load
average before and after: both parties share this machine's cores with whatever else runs,
so CPU time says more than wall time when the load is high.

``run_native`` is the hook for our engine (``appliance.operators.psi``): if that module has
``run_local_pair(a_ids, b_ids, reveal="both")``, it runs on the same sets and its row gets the
ratio to SecretFlow's ECDH (target <= 1.0); otherwise the bench says it is not available.

``--end-to-end`` also runs the same sets through two real daemons (``psi_daemons``: data sets
registered, a psi job over the mTLS channel, output data sets written) and gives its ratio to
the in-process native row and to SecretFlow's ECDH.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from appliance.bench import machine
from appliance.operators.engine_runner import listen_ports
from appliance.operators.psi.secretflow import remove_traces

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_VENV = ROOT / "build" / "reference-venv"
REFERENCE_SCRIPT = ROOT / "appliance" / "operators" / "psi" / "spu_engine.py"
PROTOCOLS = ("ecdh", "rr22", "kkrt")
ID_COLUMN = "id"
RATIO_TARGET = 1.0  # pec ECDH wall / SecretFlow ECDH wall, issue 13


# -- data --------------------------------------------------------------------------------------


def make_sets(n: int, overlap: float, seed: int) -> tuple[list[str], list[str], set[str]]:
    """Two lists of n distinct ids each, sharing round(n * overlap); shuffled so the common ids
    are spread through both files rather than in a block."""
    k = round(n * overlap)
    rng = random.Random(seed)
    # 13000000000..19999999999: 11 digits starting 13-19, like a mainland mobile number.
    # sample() over a range draws distinct values without building the range.
    pool = [str(13_000_000_000 + x) for x in rng.sample(range(7_000_000_000), 2 * n - k)]
    common, a_only, b_only = pool[:k], pool[k:n], pool[n:]
    a, b = common + a_only, common + b_only
    rng.shuffle(a)
    rng.shuffle(b)
    return a, b, set(common)


#: above this many ids per side the sets are made and checked with NumPy and Arrow (a Python
#: set of 10^8 strings would not fit in memory); the in-process native row is then left out
NUMPY_SETS_ABOVE = 10_000_000


def make_sets_numpy(n: int, overlap: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``make_sets`` for large n: 11-digit ids 13000000000.., distinct by construction
    (i * 2654435761 mod 7*10^9 is a bijection: the multiplier is prime to 2, 5 and 7), each
    side shuffled; the expected intersection sorted."""
    k = round(n * overlap)
    i = np.arange(2 * n - k, dtype=np.int64)
    pool = 13_000_000_000 + (i * 2_654_435_761) % 7_000_000_000
    rng = np.random.default_rng(seed)
    a = rng.permutation(pool[:n])
    b = rng.permutation(np.concatenate([pool[:k], pool[n:]]))
    return a, b, np.sort(pool[:k])


def write_csv_numpy(path: Path, ids: np.ndarray) -> None:
    pacsv.write_csv(pa.table({ID_COLUMN: pa.array(ids).cast(pa.string())}), path,
                    pacsv.WriteOptions(quoting_style="none"))


def rows_match(path: Path, expected: set[str] | np.ndarray, column: str = ID_COLUMN
               ) -> tuple[int, bool]:
    """How many rows a result file has, and whether its ids are exactly ``expected``."""
    if isinstance(expected, np.ndarray):
        got = np.sort(pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={column: pa.int64()}, include_columns=[column])
        ).column(column).to_numpy())
        return len(got), bool(np.array_equal(got, expected))
    ids = read_ids(path, column)
    return len(ids), len(ids) == len(expected) and set(ids) == expected


def write_csv(path: Path, ids: Iterable[str]) -> None:
    with path.open("w", newline="") as f:
        f.write(ID_COLUMN + "\n")
        f.writelines(i + "\n" for i in ids)


def read_ids(path: Path, column: str = ID_COLUMN) -> list[str]:
    # spu quotes the header ("id"); the csv module undoes that for header and values alike.
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return []
        col = header.index(column)
        return [row[col] for row in reader if row]


# -- the reference engine ----------------------------------------------------------------------


def reference_python(venv: Path = REFERENCE_VENV, library: str = "libpsi") -> Path | None:
    """The reference venv's interpreter if spu (with its ``library``: libpsi for PSI,
    libspu for the SPU simulator) is installed in it, else None, having said how to build
    it."""
    py = venv / "bin" / "python"
    if not py.exists() or not list(venv.glob(f"lib/python3*/site-packages/spu/{library}*.so")):
        print(f"reference venv missing: {venv} has no python with spu installed.\n"
              "Build it with `make reference-venv`, or by hand:\n"
              "  python3 -m venv build/reference-venv && PIP_CONSTRAINT="
              "scripts/reference_engines.txt build/reference-venv/bin/pip install spu==0.9.5",
              file=sys.stderr)
        return None
    return py




def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # Each party runs in its own session (start_new_session), so its group id is its pid; this
    # also ends the `sort` processes spu starts for its CSV pre-processing.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _last_json(text: str) -> dict[str, Any] | None:
    # spu logs to stdout too (and after our line: its temp-dir clean-up), so take the last line
    # that is a JSON object with the fields the party script prints.
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and "wall_s" in obj:
                    return obj
    return None


def _why(stderr: str, stdout: str, lines: int = 8) -> str:
    """The useful end of a failed party's output: spu's C++ stack frames ("#5 psi::...") and
    blank lines say little, its Python exception and [error] log lines say what went wrong."""
    err = [x for x in stderr.splitlines() if x.strip() and not x.lstrip().startswith("#")]
    logged = [x for x in stdout.splitlines() if "[error]" in x or "[critical]" in x]
    return "\n".join((logged[-3:] + err[-lines:]) or stdout.splitlines()[-lines:])


def link_timeout_for(size: int, timeout_s: float) -> float:
    """How long a party's link waits for any one message.

    spu 0.9.5 can stall while both parties start (each waits in AbstractPsiParty::Init for a
    message that never comes; spu_engine.py's round trip on the fresh link avoided it in
    our runs) and aborts only when this runs out, so it is kept short: 30 s plus 30 s per
    million ids covers the longest gap between two messages of a healthy run here (a few
    seconds at 10^6) with room for a loaded machine.
    """
    return min(timeout_s, 30.0 + 30.0 * size / 1e6)


def run_reference(py: Path, protocol: str, a_csv: Path, b_csv: Path, work: Path,
                  expected: set[str] | np.ndarray, timeout_s: float, keys_unique: bool,
                  link_timeout_s: float = 120.0) -> dict[str, Any]:
    """Both SecretFlow parties at once; their results, checked against the known set."""
    port0, port1 = listen_ports(2)
    work.mkdir(exist_ok=True)
    tmp = work / f"tmp-{protocol}"
    tmp.mkdir()
    # spu's own scratch files (sorted inputs, disk caches) follow TMPDIR: keep them in `work`.
    env = {**os.environ, "TMPDIR": str(tmp)}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[tuple[Path, Path]] = []
    outputs: list[Path] = []
    load_before = machine.load()
    t0 = time.perf_counter()
    try:
        for role, inp in enumerate((a_csv, b_csv)):
            out = work / f"out-{protocol}-{role}.csv"
            so = work / f"party{role}-{protocol}.stdout"
            se = work / f"party{role}-{protocol}.stderr"
            own, peer = (port0, port1) if role == 0 else (port1, port0)
            cmd = [str(py), str(REFERENCE_SCRIPT), "--role", str(role),
                   "--self", f"127.0.0.1:{own}", "--peer", f"127.0.0.1:{peer}",
                   "--input", str(inp), "--id-column", ID_COLUMN,
                   "--output", str(out), "--protocol", protocol,
                   "--link-timeout-s", str(min(link_timeout_s, timeout_s)), "--ready-dir", str(tmp)]
            if keys_unique:
                cmd.append("--keys-unique")
            with so.open("wb") as fo, se.open("wb") as fe:
                procs.append(subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, cwd=work,
                                              start_new_session=True))
            logs.append((so, se))
            outputs.append(out)
        deadline = t0 + timeout_s
        timed_out = False
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                timed_out = True
                break
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p)
    elapsed = time.perf_counter() - t0
    row: dict[str, Any] = {"engine": "secretflow", "protocol": protocol,
                           "elapsed_s": round(elapsed, 3), "load_before": load_before,
                           "load_after": machine.load(), "parties": [], "correct": False}
    errors: list[str] = []
    if timed_out:
        errors.append(f"timed out after {timeout_s:.0f} s")
    for role, (p, (so, se), out) in enumerate(zip(procs, logs, outputs, strict=True)):
        stdout = so.read_text(errors="replace")
        remove_traces(so)  # spu's trace file in /tmp, which its stdout names
        res = _last_json(stdout)
        if p.returncode != 0 or res is None:
            errors.append(f"party {role} exited {p.returncode}:\n"
                          + _why(se.read_text(errors="replace"), stdout))
            row["parties"].append(None)
            continue
        rows, same = rows_match(out, expected) if out.exists() else (0, len(expected) == 0)
        res["output_rows"] = rows
        # Exact: the same set, no row twice, and spu's own count agreeing.
        res["correct"] = same and res.get("intersection_size") == len(expected)
        row["parties"].append(res)
    row["correct"] = not errors and all(r and r["correct"] for r in row["parties"])
    if errors:
        row["error"] = "\n".join(errors)
    shutil.rmtree(tmp, ignore_errors=True)
    return row


# -- our engine: the hook ----------------------------------------------------------------------

# The native ECDH-PSI engine (appliance/operators/psi/) runs both parties in this process
# through run_local_pair(a_ids, b_ids, reveal="both") -> {"wall_s", "cpu_s", "intersection"};
# its row gets the ratio to SecretFlow's ECDH. Where it cannot load, the bench says so.
def run_native(a_csv: Path, b_csv: Path) -> dict[str, Any] | None:
    """Our engine on the same two files, or None when it is not there yet."""
    try:
        import importlib

        mod = importlib.import_module("appliance.operators.psi")
    except Exception as e:  # a half-written engine must not break the bench
        print(f"native engine: not available (import appliance.operators.psi: "
              f"{type(e).__name__}: {e})")
        return None
    fn = getattr(mod, "run_local_pair", None)
    if not callable(fn):
        print("native engine: not available (appliance.operators.psi has no run_local_pair)")
        return None
    a_ids, b_ids = read_ids(a_csv), read_ids(b_csv)
    load_before = machine.load()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    try:
        result = fn(a_ids, b_ids, reveal="both")
    except Exception as e:  # a failed row; the reference rows stand
        result = {"error": f"{type(e).__name__}: {e}", "intersection": None}
    wall = time.perf_counter() - t0
    if not isinstance(result, Mapping):
        result = {"error": f"run_local_pair returned {type(result).__name__}, not a dict",
                  "intersection": None}
    if "error" in result:
        print(f"native engine: run_local_pair failed: {result['error']}", file=sys.stderr)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    # Prefer the engine's own figures; fall back to this process's (the pair runs in it).
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return {"engine": "pec", "protocol": "ecdh",
            "wall_s": float(result.get("wall_s", wall)),
            "cpu_s": float(result.get("cpu_s", cpu)),
            "peak_rss_kb": r1.ru_maxrss,  # the bench process's peak, which includes the sets
            "intersection": result.get("intersection"),
            **({"error": str(result["error"])} if "error" in result else {}),
            "load_before": load_before, "load_after": machine.load()}


def _as_id_set(values: Iterable[Any]) -> set[str]:
    return {v.decode() if isinstance(v, bytes | bytearray) else str(v) for v in values}


def check_native(res: dict[str, Any], expected: set[str]) -> bool:
    inter = res.get("intersection")
    if inter is None:
        return False
    # reveal=both may come back as one set or as one per side: each must be the known set.
    if isinstance(inter, Mapping):
        return bool(inter) and all(_as_id_set(v) == expected for v in inter.values())
    return _as_id_set(inter) == expected
# <<< NATIVE ENGINE HOOK <<<


# -- report ------------------------------------------------------------------------------------


def _pair(values: list[Any], fmt: str) -> str:
    return " / ".join("-" if v is None else format(v, fmt) for v in values)


def ref_wall(row: dict[str, Any]) -> float | None:
    """The run's time: the slower party's psi_execute (both must finish for a result)."""
    parties = row["parties"]
    if not parties or any(p is None for p in parties):
        return None
    return max(p["psi_s"] for p in parties)


def _traffic(ps: list[dict[str, Any] | None], size: int) -> tuple[str, str]:
    """Both directions' total in MB, and that total per id of one set (total / N)."""
    sent = [p.get("bytes_sent") if p else None for p in ps]
    if not sent or any(v is None for v in sent):
        return "-", "-"
    total = sum(sent)  # type: ignore[arg-type]
    return f"{total / 1e6:.1f}", (f"{total / size:.0f}" if size else "-")


def retried(row: dict[str, Any]) -> str:
    return f" (try {row['attempts']})" if row.get("attempts", 1) > 1 else ""


def format_table(rows: list[dict[str, Any]], native: dict[str, Any] | None,
                 size: int) -> str:
    head = (f"{'engine / protocol':<24} {'wall s':>7} {'psi s p0 / p1':>15} "
            f"{'link s':>6} {'CPU s p0 / p1':>15} {'peak RSS MiB p0 / p1':>21} "
            f"{'MB':>7} {'B/id':>5} {'|I|':>8} {'correct':>7}  load before -> after")
    lines = [head, "-" * len(head)]
    for row in rows:
        ps = row["parties"]
        get = lambda k, ps=ps: [p[k] if p else None for p in ps]  # noqa: E731
        wall = ref_wall(row)
        rss = [None if v is None else v / 1024 for v in get("peak_rss_kb")]
        link = [v for v in get("link_s") if v is not None]
        inter = next((p["intersection_size"] for p in ps if p), None)
        mb, per_id = _traffic(ps, size)
        lines.append(
            f"{'secretflow ' + row['protocol'] + retried(row):<24} "
            f"{'-' if wall is None else f'{wall:.2f}':>7} {_pair(get('psi_s'), '.2f'):>15} "
            f"{(f'{max(link):.2f}' if link else '-'):>6} {_pair(get('cpu_s'), '.2f'):>15} "
            f"{_pair(rss, '.0f'):>21} {mb:>7} {per_id:>5} {'-' if inter is None else inter:>8} "
            f"{'yes' if row['correct'] else 'NO':>7}  "
            f"{machine.fmt_load(row['load_before'])} -> {machine.fmt_load(row['load_after'])}")
    if native is not None:
        lines.append(
            f"{'pec ecdh':<24} {native['wall_s']:>7.2f} {'(one process)':>15} {'-':>6} "
            f"{native['cpu_s']:>15.2f} {native['peak_rss_kb'] / 1024:>21.0f} "
            f"{'-':>7} {'-':>5} {native.get('intersection_size', '-'):>8} "
            f"{'yes' if native['correct'] else 'NO':>7}  "
            f"{machine.fmt_load(native['load_before'])} -> "
            f"{machine.fmt_load(native['load_after'])}")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m appliance.bench psi",
                                description="PSI: SecretFlow (spu.psi) and the native engine")
    p.add_argument("--size", type=int, default=100_000, help="ids per party (default 100000)")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="fraction of each party's ids in the intersection (default 0.5)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="comma-separated, of ecdh, rr22, kkrt (default all)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--timeout-s", type=float, default=600.0,
                   help="limit for each protocol's two-party run (default 600)")
    p.add_argument("--keys-unique", action="store_true",
                   help="tell spu the ids are unique (skips its duplicate handling)")
    p.add_argument("--link-timeout-s", type=float, default=None,
                   help="each party's wait for one message (default 30 s + 30 s per 10^6 ids)")
    p.add_argument("--retries", type=int, default=1,
                   help="rerun a protocol whose parties crashed or timed out (default 1)")
    p.add_argument("--no-native", action="store_true", help="skip the native engine's row")
    p.add_argument("--end-to-end", action="store_true",
                   help="also run a psi job through two real daemons (temporary state dirs)")
    p.add_argument("--end-to-end-secretflow", metavar="PROTOCOL", default=None,
                   choices=sorted(PROTOCOLS),
                   help="with --end-to-end: also a job with provider secretflow and this "
                        "protocol, compared with the bare spu run of the same protocol")
    p.add_argument("--wan", action="store_true",
                   help="with --end-to-end: the daemons talk over a 100 Mbit/s, 10 ms one-way "
                        "link (the channel benchmark's userspace link emulator)")
    p.add_argument("--reference-venv", type=Path, default=REFERENCE_VENV)
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args(argv)
    args.protocols = [x.strip() for x in args.protocols.split(",") if x.strip()]
    bad = [x for x in args.protocols if x not in PROTOCOLS]
    if bad:
        p.error(f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}")
    if args.size < 0 or not 0.0 <= args.overlap <= 1.0:
        p.error("--size must be >= 0 and --overlap within [0, 1]")
    if args.link_timeout_s is None:
        args.link_timeout_s = link_timeout_for(args.size, args.timeout_s)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    py = reference_python(args.reference_venv)
    if py is None:
        return 2
    host = machine.describe()
    print(f"machine: {host['nproc']} CPUs ({host['cpu_model']}), "
          f"Linux {host['kernel']}; load {machine.fmt_load(machine.load())} (1/5/15 min)")
    print(f"sets: {args.size} ids per party, overlap {args.overlap} "
          f"(|I| = {round(args.size * args.overlap)}), seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="pec-psi-bench-") as d:
        work = Path(d)
        t0 = time.perf_counter()
        a_csv, b_csv = work / "a.csv", work / "b.csv"
        expected: set[str] | np.ndarray
        if args.size > NUMPY_SETS_ABOVE:
            a_np, b_np, expected = make_sets_numpy(args.size, args.overlap, args.seed)
            write_csv_numpy(a_csv, a_np)
            write_csv_numpy(b_csv, b_np)
            del a_np, b_np
            if not args.no_native:
                print(f"above {NUMPY_SETS_ABOVE} ids the in-process native row is left out "
                      "(it holds both sets as Python strings)")
                args.no_native = True
        else:
            a_ids, b_ids, expected = make_sets(args.size, args.overlap, args.seed)
            write_csv(a_csv, a_ids)
            write_csv(b_csv, b_ids)
            del a_ids, b_ids
        print(f"generated in {time.perf_counter() - t0:.1f} s")
        rows = []
        for protocol in args.protocols:
            for attempt in range(1 + args.retries):
                row = run_reference(py, protocol, a_csv, b_csv, work / f"try{attempt}",
                                    expected, args.timeout_s, args.keys_unique,
                                    args.link_timeout_s)
                row["attempts"] = attempt + 1
                if "error" in row:
                    print(f"secretflow {protocol} (attempt {attempt + 1}): FAILED\n"
                          f"{row['error']}", file=sys.stderr)
                # Retry only a run that produced no result (spu 0.9.5 can stall and abort
                # while the two parties start); a wrong intersection is never retried.
                if "error" not in row or any(p is not None for p in row["parties"]):
                    break
            rows.append(row)
        native = None if args.no_native else run_native(a_csv, b_csv)
        if native is not None:
            native["correct"] = check_native(native, expected)
            inter = native.pop("intersection", None)
            if isinstance(inter, Mapping) and inter:
                inter = next(iter(inter.values()))  # the sides agree when correct
            if inter is not None:
                native["intersection_size"] = len(_as_id_set(inter))
        e2e: list[dict[str, Any]] = []
        if args.end_to_end:
            # imported here: psutil and the daemon's modules are only needed for this row
            from appliance.bench import psi_daemons

            wan = (0.010, 100e6) if args.wan else None
            e2e.append(psi_daemons.run_end_to_end(a_csv, b_csv, expected, args.timeout_s,
                                                  wan))
            if args.end_to_end_secretflow:
                e2e.append(psi_daemons.run_end_to_end(
                    a_csv, b_csv, expected, args.timeout_s, wan, "secretflow",
                    args.end_to_end_secretflow))
    print()
    print(format_table(rows, native, args.size))
    print("wall s: the slower party's time inside psi_execute (CSV read, sort, protocol, "
          "output written); link s: the slower party's link set-up (brpc, after both parties "
          "have imported spu; outside wall s); CPU s: each party process's user+sys over link "
          "set-up and PSI, all threads, not the Python/spu import; peak RSS: each process's "
          "ru_maxrss.")
    print("MB: TCP payload both ways (each party's tcp_info bytes_sent from `ss`, summed; "
          "spu's link has no counters); B/id: that total / N.")
    ecdh = next((r for r in rows if r["protocol"] == "ecdh"), None)
    ratio = None
    if native is not None and not native["correct"]:
        print("ratio pec ecdh / secretflow ecdh: not computed (native result failed or wrong)")
    elif native is not None and ecdh is not None and ref_wall(ecdh):
        ratio = native["wall_s"] / ref_wall(ecdh)  # type: ignore[operator]
        verdict = "meets" if ratio <= RATIO_TARGET else "MISSES"
        print(f"ratio pec ecdh / secretflow ecdh (wall): {ratio:.2f} "
              f"({verdict} target <= {RATIO_TARGET})")
    if e2e:
        from appliance.bench import psi_daemons

        ecdh_wall = ref_wall(ecdh) if ecdh is not None else None
        native_wall = native["wall_s"] if native is not None and native["correct"] else None
        for res in e2e:
            same = next((r for r in rows if r["protocol"] == res["protocol"]), None)
            print(psi_daemons.format_report(res, native_wall, ecdh_wall,
                                            ref_wall(same) if same is not None else None))
    print(f"load average at end: {machine.fmt_load(machine.load())}")
    if args.json:
        print(json.dumps({"machine": host, "size": args.size, "overlap": args.overlap,
                          "seed": args.seed, "reference": rows, "native": native,
                          "ratio": ratio, "end_to_end": e2e}))
    ok = (all(r["correct"] for r in rows) and (native is None or native["correct"])
          and all(r["correct"] for r in e2e))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
