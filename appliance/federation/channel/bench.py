"""Channel benchmark: throughput and round-trip latency between two processes.

    python -m appliance.federation.channel.bench [--size-mib 256] [--chunk-kib 1024]
        [--pings 1000] [--no-wan] [--json]

Each side is a real process with its own key and self-signed certificate, pinning the other's:
the server (``serve``) in one process, the client (``client``) in another, the orchestrator
only starts them and reads their JSON result lines. Beside wall time it prints each process's
CPU time and the load average, and what one core does with AES-256-GCM (``openssl speed`` and
``cryptography``'s AESGCM), measured in the same run, with the ratio the target is set on.

WAN mode, first choice (root, ``ip netns`` and the kernel's ``sch_netem``): two network
namespaces joined by a veth pair with 192.0.2.1/24 and 192.0.2.2/24 (documentation range, never
routed outside the namespaces), ``tc netem delay 10ms rate 100mbit`` on both ends; always
removed. Where netem is unavailable, the same pair runs on loopback through a userspace link
emulator (``linkshaper.LinkShaper``: 10 ms one way, 100 Mbit/s per direction), and the result is
labelled as such with the reason netem was not used.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.bench import machine

MiB = 1024 * 1024
_MOD = "appliance.federation.channel.bench"
# The emulated WAN link, the same figures for netem and the userspace emulator.
WAN_DELAY_MS = 10  # one way, each direction: RTT + 20 ms
WAN_RATE_MBIT = 100  # per direction
RATIO_TARGET = 0.50  # loopback throughput / one core's openssl AES-256-GCM
NETEM_LABEL = f"netem delay {WAN_DELAY_MS}ms rate {WAN_RATE_MBIT}mbit on both veth ends"


def _cpu() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write("RESULT " + json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the two sides -----------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Server side: echo JSON pings, count byte messages; stops after --lifetime seconds."""
    from .session import ChannelOptions
    from .transport import ChannelServer

    d = Path(args.dir)
    opts = ChannelOptions(peer_timeout=args.peer_timeout, heartbeat_interval=args.heartbeat)
    server = ChannelServer(
        args.listen,
        (d / f"{args.me}.key").read_bytes(),
        (d / f"{args.me}.crt").read_bytes(),
        [(d / f"{args.peer}.crt").read_bytes()],
        options=opts,
    )
    port = server.start()
    _emit({"ready": True, "port": port, "pid": os.getpid()})
    deadline = time.monotonic() + args.lifetime
    try:
        while time.monotonic() < deadline:
            try:
                session = server.accept(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                continue
            _serve_session(session, deadline)
    finally:
        server.stop(0.5)
    return 0


def _serve_session(session: Any, deadline: float) -> None:
    from .errors import ChannelError, RecvTimeout

    while time.monotonic() < deadline:
        try:
            msg = session.recv(timeout=1.0)
        except RecvTimeout:
            continue
        except ChannelError:
            return
        if isinstance(msg, dict) and msg.get("op") == "ping":
            session.send(msg)
        elif isinstance(msg, dict) and msg.get("op") == "bulk":
            cpu0 = _cpu()
            n = 0
            digest = hashlib.sha256() if msg.get("hash") else None
            for chunk in session.recv_chunks(timeout=30):
                n += len(chunk)
                if digest is not None:
                    digest.update(chunk)
            cpu1 = _cpu()
            session.send(
                {
                    "op": "bulk-done",
                    "bytes": n,
                    "sha256": digest.hexdigest() if digest else None,
                    "cpu_s": cpu1["user_s"] + cpu1["sys_s"] - cpu0["user_s"] - cpu0["sys_s"],
                }
            )
        elif isinstance(msg, dict) and msg.get("op") == "echo-bytes":
            session.send_bytes(session.recv(timeout=30))


def client(args: argparse.Namespace) -> int:
    """Client side: RTT of small messages, then one large byte message; prints RESULT."""
    from .transport import connect

    d = Path(args.dir)
    ch = connect(
        args.endpoint,
        (d / f"{args.me}.key").read_bytes(),
        (d / f"{args.me}.crt").read_bytes(),
        (d / f"{args.peer}.crt").read_bytes(),
        timeout=10,
    )
    try:
        s = ch.open_session("bench", "bench")
        for i in range(min(20, args.pings)):  # warm up the connection and the threads
            s.send({"op": "ping", "i": i})
            s.recv(timeout=10)
        rtts = []
        t_end = time.monotonic() + args.max_seconds / 3
        for i in range(args.pings):
            if time.monotonic() > t_end:
                break
            t0 = time.perf_counter()
            s.send({"op": "ping", "i": i})
            s.recv(timeout=10)
            rtts.append(time.perf_counter() - t0)
        size, chunk = args.size_mib * MiB, args.chunk_kib * 1024
        buf = os.urandom(chunk)
        sent = 0
        t_stop = time.monotonic() + args.max_seconds

        def chunks() -> Any:
            nonlocal sent
            while sent < size and time.monotonic() < t_stop:
                n = min(chunk, size - sent)
                sent += n
                yield buf if n == chunk else buf[:n]

        cpu0 = _cpu()
        t0 = time.perf_counter()
        s.send({"op": "bulk"})
        s.send_bytes(chunks())
        done = s.recv(timeout=60)
        wall = time.perf_counter() - t0
        cpu1 = _cpu()
        s.close()
        rtts.sort()
        _emit(
            {
                "pings": len(rtts),
                "rtt_median_ms": statistics.median(rtts) * 1e3,
                "rtt_p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))] * 1e3,
                "bytes": done["bytes"],
                "bytes_sent": sent,
                "wall_s": wall,
                "mb_per_s": done["bytes"] / wall / 1e6,
                "client_cpu_s": cpu1["user_s"] + cpu1["sys_s"] - cpu0["user_s"] - cpu0["sys_s"],
                "server_cpu_s": done["cpu_s"],
            }
        )
    finally:
        ch.close()
    return 0


# -- orchestration -----------------------------------------------------------------------------


def _make_identities(d: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from .identity import generate_key, make_node_certificate

    for name in ("bench-a", "bench-b"):
        key = generate_key()
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (d / f"{name}.crt").write_bytes(make_node_certificate(key, name))


def _read_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"no result from {proc.args} (exit {proc.poll()})")


def _run_pair(
    d: Path,
    listen: str,
    connect_host: str,
    args: argparse.Namespace,
    size_mib: int,
    pings: int,
    ns: tuple[list[str], list[str]] = ([], []),
    relay: Callable[[int], contextlib.AbstractContextManager[int]] | None = None,
) -> dict[str, Any]:
    """Start the server, then the client against it, or against ``relay(server_port)``'s port."""
    py = [sys.executable, "-m", _MOD]
    env = dict(os.environ, GRPC_VERBOSITY="ERROR")
    common = ["--dir", str(d)]
    lifetime = str(args.max_seconds * 2 + 30)
    srv = subprocess.Popen(
        [*ns[0], *py, "serve", *common, "--me", "bench-b", "--peer", "bench-a",
         "--listen", listen, "--lifetime", lifetime],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        ready = _read_result(srv, 30)
        via = relay(ready["port"]) if relay else contextlib.nullcontext(ready["port"])
        with via as port:
            cli = subprocess.Popen(
                [*ns[1], *py, "client", *common, "--me", "bench-a", "--peer", "bench-b",
                 "--endpoint", f"{connect_host}:{port}", "--size-mib", str(size_mib),
                 "--chunk-kib", str(args.chunk_kib), "--pings", str(pings),
                 "--max-seconds", str(args.max_seconds)],
                stdout=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            try:
                return _read_result(cli, args.max_seconds * 2 + 60)
            finally:
                _stop(cli)
    finally:
        _stop(srv)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def aes_openssl() -> float | None:
    """One core's AES-256-GCM in MB/s (10^6) from openssl speed, 16 KiB blocks; None if absent."""
    exe = shutil.which("openssl")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "speed", "-elapsed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "2"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        m = re.match(r"^\s*(aes-256-gcm|AES-256-GCM)\s+([\d.]+)k\s*$", line)
        if m:
            return float(m.group(2)) * 1000 / 1e6
    return None


def aes_cryptography(seconds: float = 1.0) -> float:
    """One core's AES-256-GCM in MB/s over 1 MiB buffers through cryptography's AESGCM."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    buf = os.urandom(MiB)
    n = 0
    t0 = time.perf_counter()
    for i in range(100000):  # bounded in count and in time
        aead.encrypt(i.to_bytes(12, "big"), buf, None)
        n += len(buf)
        if time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0) / 1e6


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=15)


@contextlib.contextmanager
def netns_pair() -> Any:
    """Two namespaces joined by a shaped veth pair; torn down whatever happens."""
    tag = f"{os.getpid() % 100000}"
    a, b = f"pecbench-a{tag}", f"pecbench-b{tag}"
    va, vb = f"pecva{tag}", f"pecvb{tag}"
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        _sh("ip", "link", "set", va, "netns", a)
        _sh("ip", "link", "set", vb, "netns", b)
        for ns, dev, addr in ((a, va, "192.0.2.1/24"), (b, vb, "192.0.2.2/24")):
            _sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                "netem", "delay", f"{WAN_DELAY_MS}ms", "rate", f"{WAN_RATE_MBIT}mbit")  # fmt: skip
        yield (["ip", "netns", "exec", a], ["ip", "netns", "exec", b])
    finally:
        for ns in (a, b):  # deleting a namespace deletes its end of the veth, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load0 = os.getloadavg()
    report: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": machine.cpu_model(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "loadavg_before": load0,
    }
    report["aes_openssl_mb_s"] = aes_openssl()
    report["aes_cryptography_mb_s"] = aes_cryptography()
    with tempfile.TemporaryDirectory(prefix="pec-chan-bench-") as tmp:
        d = Path(tmp)
        _make_identities(d)
        lo = _run_pair(d, "127.0.0.1:0", "127.0.0.1", args, args.size_mib, args.pings)
        report["loopback"] = lo
        aes = report["aes_openssl_mb_s"] or report["aes_cryptography_mb_s"]
        report["ratio_to_one_core_aes"] = lo["mb_per_s"] / aes
        report["ratio_target"] = RATIO_TARGET
        report["ratio_target_met"] = report["ratio_to_one_core_aes"] >= RATIO_TARGET
        if args.wan:
            report["wan"] = _wan(d, args)
    report["loadavg_after"] = os.getloadavg()
    return report


def _wan(d: Path, args: argparse.Namespace) -> dict[str, Any]:
    """netem first; where it cannot be set up, the userspace emulator, labelled with why."""
    reason = "--wan-link userspace"
    if args.wan_link != "userspace":
        if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
            reason = "needs root, ip and tc"
        else:
            try:
                with netns_pair() as ns:
                    r = _run_pair(d, "192.0.2.1:0", "192.0.2.1", args, args.wan_size_mib, 50, ns)
                return {**r, "link": NETEM_LABEL, "emulator": "netem"}
            except subprocess.CalledProcessError as e:
                # Only the namespace and qdisc set-up runs _sh; the pair itself never raises this.
                err = (e.stderr or b"").decode(errors="replace").strip()
                reason = f"{' '.join(map(str, e.cmd))} failed: {err}"
        if args.wan_link == "netem":
            return {"skipped": reason}
    return _wan_userspace(d, args, reason)


def _wan_userspace(d: Path, args: argparse.Namespace, reason: str) -> dict[str, Any]:
    from .linkshaper import LinkShaper

    shapers: list[LinkShaper] = []

    @contextlib.contextmanager
    def relay(server_port: int) -> Any:
        with LinkShaper(
            ("127.0.0.1", server_port), delay_s=WAN_DELAY_MS / 1e3, rate_bps=WAN_RATE_MBIT * 1e6
        ) as shaper:
            shapers.append(shaper)
            yield shaper.port

    # The relay runs in this (orchestrating) process, which otherwise only waits on two pipes:
    # its CPU time over the run is the emulator's cost, taken from the same two cores.
    cpu0 = _cpu()
    r = _run_pair(d, "127.0.0.1:0", "127.0.0.1", args, args.wan_size_mib, 50, relay=relay)
    cpu1 = _cpu()
    s = shapers[0]
    return {
        **r,
        "link": f"userspace link emulator (netem unavailable: {reason})",
        "emulator": "userspace",
        "netem_unavailable": reason,
        "emulated_delay_ms_one_way": WAN_DELAY_MS,
        "emulated_rate_mbit_per_direction": WAN_RATE_MBIT,
        "relay_cpu_s": cpu1["user_s"] + cpu1["sys_s"] - cpu0["user_s"] - cpu0["sys_s"],
        "relay_peak_queued_bytes": s.peak_queued,
        "relay_connections": s.connections,
    }


def _print(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m['nproc']} CPU(s), {m['cpu']}, Python {m['python']}, {m['kernel']}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in report['loadavg_before'])}")
    o, c = report["aes_openssl_mb_s"], report["aes_cryptography_mb_s"]
    print(f"AES-256-GCM one core: openssl speed {o:.0f} MB/s" if o else "openssl: not available")
    print(f"AES-256-GCM one core: cryptography AESGCM 1 MiB buffers {c:.0f} MB/s")
    for name in ("loopback", "wan"):
        r = report.get(name)
        if r is None:
            continue
        if "skipped" in r:
            print(f"{name}: skipped ({r['skipped']})")
            continue
        if "link" in r:
            print(f"{name} link: {r['link']}")
        label = "wan (emulated, userspace)" if r.get("emulator") == "userspace" else name
        print(
            f"{label}: {r['bytes'] / MiB:.0f} MiB in {r['wall_s']:.2f} s wall = "
            f"{r['mb_per_s']:.1f} MB/s; CPU client {r['client_cpu_s']:.2f} s, "
            f"server {r['server_cpu_s']:.2f} s; RTT median {r['rtt_median_ms']:.3f} ms, "
            f"p99 {r['rtt_p99_ms']:.3f} ms ({r['pings']} pings)"
        )
        if "relay_cpu_s" in r:
            print(f"{label}: relay CPU {r['relay_cpu_s']:.2f} s in the orchestrating process")
    ratio = report["ratio_to_one_core_aes"]
    verdict = "met" if ratio >= RATIO_TARGET else f"MISSED by {RATIO_TARGET - ratio:.2f}"
    print(f"loopback / one-core AES-GCM = {ratio:.2f} (target >= {RATIO_TARGET:.2f}: {verdict})")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in report['loadavg_after'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m " + _MOD, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--wan-size-mib", type=int, default=32)
    p.add_argument("--chunk-kib", type=int, default=1024)
    p.add_argument("--pings", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--no-wan", dest="wan", action="store_false")
    p.add_argument(
        "--wan-link",
        choices=("auto", "netem", "userspace"),
        default="auto",
        help="auto: netem, else the userspace link emulator; netem: skip without netem",
    )
    p.add_argument("--json", action="store_true")
    s = sub.add_parser("serve")
    c = sub.add_parser("client")
    for q in (s, c):
        q.add_argument("--dir", required=True)
        q.add_argument("--me", required=True)
        q.add_argument("--peer", required=True)
    s.add_argument("--listen", default="127.0.0.1:0")
    s.add_argument("--lifetime", type=float, default=300.0)
    s.add_argument("--peer-timeout", type=float, default=8.0)
    s.add_argument("--heartbeat", type=float, default=2.0)
    c.add_argument("--endpoint", required=True)
    c.add_argument("--size-mib", type=int, default=256)
    c.add_argument("--chunk-kib", type=int, default=1024)
    c.add_argument("--pings", type=int, default=1000)
    c.add_argument("--max-seconds", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return serve(args)
    if args.cmd == "client":
        return client(args)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
