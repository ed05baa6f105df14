"""One party of SecretFlow's two-party PSI (``spu.psi.psi_execute``): the engine of the
``secretflow`` PSI provider (``secretflow.py``) and the reference of the PSI benchmark.

    build/reference-venv/bin/python appliance/operators/psi/spu_engine.py --role 0|1 \
        --self HOST:PORT --peer HOST:PORT --input A.csv --id-column id --output OUT.csv \
        --protocol ecdh|kkrt|rr22 [--receiver 0|1] [--no-broadcast] [--keys-unique] \
        [--link-id ID] [--link-timeout-s 120]

Run by the engine venv's interpreter (``make reference-venv``), never the appliance's: spu
0.9.5 needs numpy<2 and jax<=0.4.34, the appliance venv has numpy 2. So this file imports only
the standard library and spu, and nothing from ``appliance`` (it is run as a plain script).

Each party gets a link description with both addresses: it listens on ``--self`` and connects
to ``--peer``. The two need not be the same pair at both sides, so the appliance puts its relay
in between: the peer address an engine dials is a local port of its own node, which carries
the bytes over the job's attested session. ``--receiver`` (default 0) learns the intersection;
unless ``--no-broadcast`` it is sent to the other party too, so both write it.
The last stdout line is one JSON object: wall_s (link set-up + PSI), psi_s (inside
psi_execute), link_s, cpu_s (user + sys of the whole process, all threads), peak_rss_kb,
intersection_size, input_count, and bytes_sent / bytes_recv. spu 0.9.5's Python link exposes
no traffic counters, so those are read from the kernel instead: just before the link closes,
``ss -tinp`` lists this process's TCP connections to or from either party port, and their
tcp_info bytes_sent / bytes_received are summed (TCP payload: spu's messages with brpc's
framing, no TCP/IP headers). Without ``ss`` the two fields are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the engine scripts share their link set-up (a plain module beside the operator packages)
sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: never shadows
from spu_link import brpc_link

PROTOCOLS = {"ecdh": "PROTOCOL_ECDH", "kkrt": "PROTOCOL_KKRT", "rr22": "PROTOCOL_RR22"}
PARTIES = ("alice", "bob")  # rank 0, rank 1


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_SS_ADDR = re.compile(r":(\d+)\s+\S+:(\d+)\s+users:.*\bpid=(\d+),")
_SS_BYTES = re.compile(r"\bbytes_(sent|received):(\d+)")


def _link_bytes(ports: tuple[int, int]) -> dict[str, int] | None:
    """This process's TCP payload bytes on connections touching either party port."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        out = subprocess.run([ss, "-tinpH", "state", "established"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    pid, sent, recv, mine = os.getpid(), 0, 0, False
    # ss prints a connection's addresses on one line and its tcp_info on the next, indented.
    for line in out.splitlines():
        if not line[:1].isspace():
            m = _SS_ADDR.search(line)
            mine = bool(m) and int(m.group(3)) == pid and (
                int(m.group(1)) in ports or int(m.group(2)) in ports)
            continue
        if mine:
            for kind, n in _SS_BYTES.findall(line):
                if kind == "sent":
                    sent += int(n)
                else:
                    recv += int(n)
    return {"bytes_sent": sent, "bytes_recv": recv}


def _start_line(ready_dir: str, role: int, timeout_s: float) -> None:
    """Wait until the peer has imported spu too.

    If one party builds its link while the other is still importing (0.3-0.7 s, more under
    load), its first connect is refused and brpc tries that peer again only after about 3 s:
    link set-up measured 3 s instead of 0.2 s in about a third of the runs. A file each side
    writes and polls for lines the two up to a few ms.
    """
    Path(ready_dir, f"ready{role}").touch()
    peer = Path(ready_dir, f"ready{1 - role}")
    deadline = time.monotonic() + timeout_s
    while not peer.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"peer not ready after {timeout_s:.0f} s")
        time.sleep(0.002)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one party of spu.psi two-party PSI")
    p.add_argument("--role", type=int, choices=(0, 1), required=True)
    p.add_argument("--self", dest="own", required=True, help="HOST:PORT this party listens on")
    p.add_argument("--peer", required=True, help="HOST:PORT this party dials for the other")
    p.add_argument("--link-id", default=None,
                   help="the link's name, the same at both parties (default from the ports)")
    p.add_argument("--receiver", type=int, choices=(0, 1), default=0,
                   help="the party that learns the intersection")
    p.add_argument("--no-broadcast", action="store_true",
                   help="only the receiver learns the intersection (the other writes nothing)")
    p.add_argument("--input", required=True, help="CSV with a header row")
    p.add_argument("--id-column", default="id")
    p.add_argument("--output", required=True, help="CSV written by spu (the intersection)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="ecdh")
    p.add_argument("--keys-unique", action="store_true",
                   help="tell spu the ids are unique (skips its duplicate handling)")
    p.add_argument("--ready-dir", default=None,
                   help="start-line between the parties: each writes ready<role> here after its "
                        "imports and waits for the other's before building the link")
    p.add_argument("--wait-for-go", action="store_true",
                   help="after the link is up, wait for a line 'go' on stdin (the input file "
                        "is complete) before the PSI")
    p.add_argument("--link-timeout-s", type=float, default=120.0,
                   help="how long to wait for the peer to connect and for each message")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here, not at module top, so `--help` works without spu and the import's cost
    # (jax is pulled in by spu's package __init__) stays outside the timed section.
    t_import = time.perf_counter()
    from spu import psi
    import_s = time.perf_counter() - t_import
    if args.ready_dir:
        _start_line(args.ready_dir, args.role, args.link_timeout_s)

    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    addresses = [args.own, args.peer] if args.role == 0 else [args.peer, args.own]
    link_id = args.link_id or "psi-" + "-".join(a.rsplit(":", 1)[-1] for a in addresses)
    lctx = brpc_link(list(PARTIES), addresses, args.role, link_id, args.link_timeout_s)
    # A round trip on the fresh link before psi_execute. Without it, a few runs in a hundred
    # stalled under load: both parties waited in AbstractPsiParty::Init for a message that
    # never came, until recv_timeout_ms, then aborted (SIGABRT). Measured with two pairs at
    # once on 2 CPUs, 200 runs each: 9 stalls without the round trip, 0 with it (and 0 / 0 in
    # 120 runs each alone). Counted in link_s, not psi_s.
    lctx.barrier()
    lctx.all_gather("ready")
    link_s = time.perf_counter() - t0
    if args.wait_for_go:
        # the node starts the engine (imports, link) while it still writes the input file
        line = sys.stdin.readline().strip()
        if line != "go":
            raise SystemExit(f"stopped before the input was ready ({line or 'stdin closed'})")
        lctx.barrier()  # the peer's input is ready too
        cpu0 = _cpu_s()
        t0 = time.perf_counter() - link_s  # wall_s: link set-up and PSI, not the wait

    proto = psi.PsiProtocolConfig(
        protocol=psi.parse_protocol(PROTOCOLS[args.protocol]),
        receiver_rank=args.receiver,
        broadcast_result=not args.no_broadcast,  # both parties learn the intersection
        ecdh_params=psi.EcdhParams(curve=psi.parse_curve_type("CURVE_25519")),
    )
    config = psi.PsiExecuteConfig(
        protocol_conf=proto,
        # spu resolves relative paths against its own working assumptions; absolute is safe.
        input_params=psi.InputParams(path=os.path.abspath(args.input),
                                     selected_keys=[args.id_column],
                                     keys_unique=args.keys_unique),
        output_params=psi.OutputParams(path=os.path.abspath(args.output)),
        join_conf=psi.ResultJoinConfig(),
    )
    t1 = time.perf_counter()
    report = psi.psi_execute(config, lctx)
    psi_s = time.perf_counter() - t1
    wall_s = time.perf_counter() - t0
    cpu_s = _cpu_s() - cpu0
    # Read before stop_link: the counters live with the sockets. After the timings are taken,
    # so the `ss` call costs them nothing.
    traffic = _link_bytes(tuple(int(a.rsplit(":", 1)[1]) for a in (args.own, args.peer)))
    lctx.stop_link()
    return {
        "role": args.role,
        "protocol": args.protocol,
        "wall_s": round(wall_s, 4),
        "psi_s": round(psi_s, 4),
        "link_s": round(link_s, 4),
        "import_s": round(import_s, 4),
        "cpu_s": round(cpu_s, 4),
        # ru_maxrss is the process's lifetime peak in KiB on Linux (includes the interpreter
        # and spu/jax imports, about as much as any deployment of this engine pays).
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "intersection_size": report.intersection_count,
        "input_count": report.original_count,
        **(traffic or {}),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if args.wait_for_go:
        # run by a node, which needs only the report and the output file (closed by now):
        # leave without spu's teardown (brpc, the trace file), a tenth of a second or more
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
