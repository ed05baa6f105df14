"""PSI end to end through two real daemons, for ``python -m appliance.bench psi --end-to-end``.

Two temporary state directories (dev trust root: SoftHSM2 + swtpm; node ids bench-a and
bench-b; interconnect on free 127.0.0.1 ports), one ``python -m appliance.cli serve`` per
directory, the development profile override, cards exchanged and approved both ways, the two
generated CSVs registered as data sets (grade L2), and one ``psi`` job with reveal=both
submitted from bench-a and polled to the end on both sides. So the time includes what the
in-process row leaves out: the data set scan and read, the mTLS channel between the daemons
and the output data set written and registered on each side.

Self-contained on purpose: the bench ships with the appliance and must not import tests/.
Every wait is bounded; both daemons are stopped (SIGTERM, then SIGKILL) and the temporary
directories removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from appliance.bench import machine
from appliance.bench.psi import rows_match
from appliance.client import DaemonClient, DaemonError
from appliance.federation.channel.linkshaper import LinkShaper
from appliance.provision import init_state_dir
from appliance.state.statedir import StateDir

ROOT = Path(__file__).resolve().parents[2]
NODES = ("bench-a", "bench-b")
DATASET = "bench_ids"
READY_PREFIX = "pec-noded ready:"
TERMINAL = {"done", "failed", "cancelled", "interrupted"}
# The initiator's progress messages (federation/mpjobs.py, operators/psi/protocol.py), first
# seen while polling: where the time between submit and done goes. The step from "rows
# written" to "done" is the output data set's registration and the ledger record.
PHASES = (("attesting peers", "attest"), ("creating the job", "create at peer"),
          ("waiting for", "approval"), ("opening the job's sessions", "sessions"),
          ("read ", "ids read"), ("peer points", "exchange"), ("exchanged", "exchanged"),
          ("intersection of", "rows written"))


def _free_port() -> int:
    # Port 0's pick; the daemon binds it a second later. A collision fails the start with a
    # clear error rather than a wrong figure, which is acceptable for a bench.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(proc: psutil.Process) -> float:
    """User + system CPU of the daemon process (all its threads: jobs run in-process) and of
    the children it has reaped (a plugged-in engine's processes)."""
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def _peak_rss_kb(pid: int) -> int | None:
    # VmHWM is the kernel's high-water mark of the resident set, what ru_maxrss gives for us.
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _reset_peak(pid: int) -> bool:
    """Start the process's VmHWM afresh (Linux: 5 to clear_refs); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _swtpm_pids(state_dir: Path) -> list[int]:
    """swtpm processes serving this state directory's TPM (the daemon starts them; a SIGKILL
    of the daemon can leave one behind). Matched on our own temp path only."""
    tpm_dir = f"dir={state_dir.absolute() / 'tpm'}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (p / "cmdline").read_bytes().split(b"\0")
            if argv and os.path.basename(argv[0]) == b"swtpm" and tpm_dir in argv:
                found.append(int(p.name))
    return found


class BenchNode:
    """One daemon on its own temporary state directory."""

    def __init__(self, base: Path, node_id: str, password: str,
                 wan: tuple[float, float] | None = None) -> None:
        self.node_id = node_id
        self.state = base / f"{node_id}-state"
        listen = _free_port()
        fed = {"organisation": f"PSI bench {node_id}",
               "interconnect_listen": f"127.0.0.1:{listen}"}
        self.shaper: LinkShaper | None = None
        if wan is not None:
            # peers dial this node through a relay with the WAN's delay and rate (both
            # directions of each connection), so every byte of the job crosses "the WAN"
            self.shaper = LinkShaper(("127.0.0.1", listen), delay_s=wan[0], rate_bps=wan[1])
            fed["interconnect_endpoint"] = f"127.0.0.1:{self.shaper.start()}"
        t0 = time.perf_counter()
        init_state_dir(StateDir(self.state), root="/", admin_password=password, trust="dev",
                       node_id=node_id, federation=fed)
        self.provision_s = time.perf_counter() - t0
        self.proc: subprocess.Popen[str] | None = None
        self.ps: psutil.Process | None = None
        self.stderr_path = base / f"{node_id}.stderr"
        self.api = DaemonClient(self.state, timeout=30)

    def start(self, timeout_s: float = 120.0) -> None:
        with self.stderr_path.open("w") as err:
            # stderr to a file: a pipe nobody drains would block a chatty daemon
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appliance.cli", "serve", "--state-dir", str(self.state)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        got: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)  # readline has no timeout of its own
        if not got or not got[0].startswith(READY_PREFIX):
            tail = self.stderr_path.read_text(errors="replace").splitlines()[-10:]
            raise RuntimeError(f"{self.node_id} not ready after {timeout_s:.0f} s: stdout "
                               f"{got!r}, stderr tail {tail!r}")
        # keep reading stdout after the ready line: a full pipe would stall the daemon
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)
        self.api.put("/v1/profile/override", {"profile": "development"})

    def stop(self) -> None:
        if self.shaper is not None:
            self.shaper.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
        for pid in _swtpm_pids(self.state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def cpu_s(self) -> float:
        assert self.ps is not None
        return _cpu_s(self.ps)

    def wait_job(self, job_id: int, timeout_s: float, poll_s: float = 0.05,
                 phases: dict[str, float] | None = None) -> tuple[dict, float]:
        """The job once terminal, and when (perf_counter) this poll first saw it so; with
        ``phases``, the perf_counter at which each of PHASES' messages was first seen."""
        deadline = time.perf_counter() + timeout_s
        while True:
            job = self.api.get(f"/v1/jobs/{job_id}")
            now = time.perf_counter()
            if phases is not None:
                msg = str(job.get("message") or "")
                for prefix, name in PHASES:
                    if msg.startswith(prefix) or (name == "exchange" and prefix in msg):
                        phases.setdefault(name, now)
            if job["state"] in TERMINAL:
                return job, now
            if now > deadline:
                raise RuntimeError(f"{self.node_id}: job {job_id} still {job['state']} after "
                                   f"{timeout_s:.0f} s ({job.get('message')})")
            time.sleep(poll_s)


def enrol(a: BenchNode, b: BenchNode) -> None:
    """Each pins the other's card (attesting it), then accepts its jobs without asking."""
    b.api.post("/v1/peers", {"name": a.node_id, "card": a.api.get("/v1/federation/card")})
    a.api.post("/v1/peers", {"name": b.node_id, "card": b.api.get("/v1/federation/card")})
    a.api.post(f"/v1/peers/{b.node_id}/approve", {"accept": True})
    b.api.post(f"/v1/peers/{a.node_id}/approve", {"accept": True})


def start_nodes(nodes: list[BenchNode], base: Path, count: int, password: str) -> None:
    """``count`` daemons bench-a, bench-b, ... appended to ``nodes`` as each is made (so the
    caller stops the made ones whatever fails), started, and enrolled pairwise."""
    for g in range(count):
        nodes.append(BenchNode(base, f"bench-{chr(97 + g)}", password))
    for n in nodes:
        n.start()
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            enrol(a, b)


def register_all(pairs: list[tuple[BenchNode, Path]], dataset: str, timeout_s: float
                 ) -> list[float]:
    """Each node registers its file as ``dataset`` (grade L2), all at once; the seconds each
    took. Registration scans the whole file (row count, fingerprint): long at 10^6 and
    beyond, so the client waits up to ``timeout_s`` rather than its default 30 s."""
    took: dict[str, float] = {}
    failed: list[BaseException] = []

    def register(n: BenchNode, path: Path) -> None:
        try:
            n.api.timeout = timeout_s
            t = time.perf_counter()
            n.api.post("/v1/datasets", {"name": dataset, "path": str(path),
                                        "id_column": "id", "grade": "L2"})
            took[n.node_id] = round(time.perf_counter() - t, 3)
            n.api.timeout = 30
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    threads = [threading.Thread(target=register, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    return [took[n.node_id] for n, _ in pairs]


def run_end_to_end(a_csv: Path, b_csv: Path, expected: set[str] | np.ndarray,
                   timeout_s: float = 600.0,
                   wan: tuple[float, float] | None = None,
                   provider: str = "pec", protocol: str = "ecdh") -> dict[str, Any]:
    """Both daemons, one psi job (reveal=both) with ``provider`` and ``protocol``; timings,
    per-daemon CPU (an engine's processes included) and peak RSS, and the intersection on
    both sides checked against ``expected``. ``wan``: (one-way delay s, rate bit/s) of a
    userspace link in front of each daemon's interconnect."""
    base = Path(tempfile.mkdtemp(prefix="pec-psi-e2e-"))
    password = secrets.token_urlsafe(18)  # nobody logs in; it only has to pass the check
    nodes: list[BenchNode] = []
    res: dict[str, Any] = {"engine": f"{provider} {protocol} e2e", "provider": provider,
                           "protocol": protocol, "load_before": machine.load(),
                           "correct": False}
    try:
        t0 = time.perf_counter()
        nodes = [BenchNode(base, n, password, wan) for n in NODES]
        if wan is not None:
            res["wan"] = {"delay_ms": wan[0] * 1e3, "rate_mbit": wan[1] / 1e6,
                          "link": "userspace relay (linkshaper)"}
        for n in nodes:
            n.start()
        a, b = nodes
        res["setup_s"] = round(time.perf_counter() - t0, 2)  # provision + start, both
        enrol(a, b)
        cpu0 = [n.cpu_s() for n in nodes]
        # both at once, as two organisations would: at 10^8 each takes minutes
        res["register_s"] = register_all(list(zip(nodes, (a_csv, b_csv), strict=True)),
                                         DATASET, timeout_s)
        cpu1 = [n.cpu_s() for n in nodes]
        # the peak since start includes the registration; the job's own is counted from here
        res["registration_peak_rss_kb"] = [_peak_rss_kb(n.ps.pid) if n.ps else None
                                           for n in nodes]
        res["job_peak_measured"] = all(_reset_peak(n.ps.pid) for n in nodes if n.ps)
        load_job = machine.load()
        t_submit = time.perf_counter()
        job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
            "peers": [b.node_id], "dataset": DATASET, "peer_dataset": DATASET,
            "reveal": "both", "provider": provider, "protocol": protocol}})
        seen: dict[str, float] = {}
        a_job, a_end = a.wait_job(job["id"], timeout_s, phases=seen)
        res["phases_a"] = {k: round(v - t_submit, 2) for k, v in
                           sorted(seen.items(), key=lambda kv: kv[1])}
        # b's side appears once bench-a's request reached it; the newest psi job is this one
        b_jobs = b.api.get("/v1/jobs", kind="psi")["jobs"]
        if not b_jobs:
            raise RuntimeError(f"bench-b has no psi job; bench-a's ended {a_job['state']}: "
                               f"{a_job.get('error')}")
        b_job, b_end = b.wait_job(b_jobs[0]["id"], max(1.0, timeout_s - (a_end - t_submit)))
        cpu2 = [n.cpu_s() for n in nodes]
        res["job_s"] = [round(a_end - t_submit, 3), round(b_end - t_submit, 3)]
        res["wall_s"] = max(res["job_s"])
        res["register_cpu_s"] = [round(y - x, 2) for x, y in zip(cpu0, cpu1, strict=True)]
        res["job_cpu_s"] = [round(y - x, 2) for x, y in zip(cpu1, cpu2, strict=True)]
        res["peak_rss_kb"] = [_peak_rss_kb(n.ps.pid) if n.ps else None for n in nodes]
        if provider == "secretflow" and a_job["state"] == "done":
            # the engine is a process of its own: its figures, from each side's result
            outs = [j["result"]["outputs"] for j in (a_job, b_job) if j.get("result")]
            res["engine_s"] = [o.get("engine_s") for o in outs]
            res["engine_peak_rss_kb"] = [o.get("engine_peak_rss_kb") for o in outs]
        res["load_job_before"] = load_job
        errors = [f"{n.node_id}: job {j['state']}: {j.get('error')}"
                  for n, j in ((a, a_job), (b, b_job)) if j["state"] != "done"]
        if errors:
            res["error"] = "; ".join(errors)
            return res
        sides = []
        for n, j in ((a, a_job), (b, b_job)):
            out = j["result"]["outputs"]
            rows, same = rows_match(Path(out["rows_file"]), expected)
            kept = n.api.get(f"/v1/datasets/{out['dataset']}")  # the output data set
            sides.append({"node": n.node_id, "intersection_size": out["intersection_size"],
                          "rows": rows, "dataset": out["dataset"],
                          "dataset_rows": kept["row_count"],
                          "correct": (same and out["intersection_size"] == len(expected)
                                      and kept["row_count"] == len(expected))})
        res["sides"] = sides
        res["intersection_size"] = sides[0]["intersection_size"]
        res["correct"] = all(s["correct"] for s in sides)
        return res
    except (DaemonError, RuntimeError, OSError, psutil.Error) as e:
        res["error"] = f"{type(e).__name__}: {e}"
        return res
    finally:
        for n in nodes:
            with contextlib.suppress(Exception):  # stop the other daemon whatever this one did
                n.stop()
        res["load_after"] = machine.load()
        shutil.rmtree(base, ignore_errors=True)


def _fmt(values: list[Any] | None, fmt: str) -> str:
    if not values:
        return "-"
    return " / ".join("-" if v is None else format(v, fmt) for v in values)


def format_report(res: dict[str, Any], native_wall: float | None,
                  ecdh_wall: float | None, same_protocol_wall: float | None = None) -> str:
    """The e2e row. Ratios: to the in-process native run and SecretFlow's bare ECDH (provider
    pec), or to SecretFlow's bare run of the same protocol (provider secretflow)."""
    load = machine.fmt_load(res["load_before"])
    load_end = machine.fmt_load(res.get("load_after", ()))
    lines = [f"end to end, two daemons, provider {res['provider']} {res['protocol']} "
             "(bench-a initiates, reveal=both; a / b)"
             + (f", over a {res['wan']['rate_mbit']:g} Mbit/s, {res['wan']['delay_ms']:g} ms "
                f"one-way link ({res['wan']['link']})" if res.get("wan") else "") + ":"]
    if "error" in res:
        lines.append(f"  FAILED: {res['error']}")
    rss = [None if v is None else v / 1024 for v in res.get("peak_rss_kb", [])]
    lines += [
        f"  set-up (provision + start, both) s: {res.get('setup_s', '-')}",
        f"  data set registration s:            {_fmt(res.get('register_s'), '.2f')}  "
        f"(daemon CPU s {_fmt(res.get('register_cpu_s'), '.2f')})",
        f"  job submit -> done s:               {_fmt(res.get('job_s'), '.2f')}  "
        f"(daemon CPU s {_fmt(res.get('job_cpu_s'), '.2f')})",
        f"  daemon peak RSS MiB:                {_fmt(rss, '.0f')}"
        + (" (the job's own: the peak was reset after registration, whose was "
           f"{_fmt([v and v / 1024 for v in res.get('registration_peak_rss_kb', [])], '.0f')})"
           if res.get("job_peak_measured") else " (since start, registration included)"),
        (f"  engine process wall s / peak RSS MiB: {_fmt(res.get('engine_s'), '.2f')} / "
         f"{_fmt([v and v / 1024 for v in res.get('engine_peak_rss_kb', [])], '.0f')}"
         if res.get("engine_s") else ""),
        "  bench-a's progress, first seen (s after submit): "
        + (", ".join(f"{k} {v:.2f}" for k, v in res.get("phases_a", {}).items()) or "-")
        + f", done {res['job_s'][0]:.2f}" if res.get("job_s") else "",
        f"  intersection: {res.get('intersection_size', '-')}, rows files and output data "
        f"sets {'match the known set on both sides' if res['correct'] else 'WRONG or missing'}",
        f"  load before -> after: {load} -> {load_end}",
    ]
    wall = res.get("wall_s")
    if wall and res["correct"] and res["provider"] == "secretflow":
        if same_protocol_wall:
            verdict = "meets" if wall / same_protocol_wall <= 1.2 else "MISSES"
            lines.append(f"  ratio e2e job / bare secretflow {res['protocol']}: "
                         f"{wall / same_protocol_wall:.2f} ({verdict} target <= 1.2)")
    elif wall and res["correct"]:
        if native_wall:
            lines.append(f"  ratio e2e job / in-process pec ecdh: {wall / native_wall:.2f}")
        if ecdh_wall:
            lines.append(f"  ratio e2e job / secretflow ecdh:     {wall / ecdh_wall:.2f}")
    return "\n".join(x for x in lines if x)  # the progress line is empty without a job
