"""One run of a plugged-in engine at this party: its process, its relays, its end.

Every party of the job starts its engine process at once. The engine listens on 127.0.0.1 and
reaches each other party through an ``EngineRelay`` over that party's job session, so it may
have any number of peers. While the engine imports its libraries and builds its link, this
node writes the engine's input (``prepare``, in a thread); then it tells the engine "go" on
its stdin. One thread per session reads what the peer sends: relay frames go to the relay,
control messages to this thread. A party whose engine has ended says ``engine_done``; a
party whose engine failed says ``engine_failed`` with the reason, and every other party stops
its engine and fails too. The run ends when this engine and every peer's have ended: the
sessions then carry the operator's own messages again.

The engine's command line gets ``--rank R --addresses A0,A1,..`` (this party's listen address
at its own rank, a relay port at each other's) from ``command(addresses)``, and prints one JSON
object as its last stdout line.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.engine_relay import EngineRelay, is_relay_frame


class PeerEngineFailed(OperatorError):
    """A peer said its engine failed (so it needs no word back)."""


def _ephemeral_range() -> tuple[int, int]:
    with contextlib.suppress(OSError, ValueError):
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    return 32768, 60999


def listen_ports(count: int) -> list[int]:
    """Ports for engines to listen on, below the kernel's ephemeral range.

    Not port 0's choice: that comes from the ephemeral range, and between our probe and the
    engine's bind another socket (a relay's listener, an engine's client side) may take it.
    Below the range only an explicit bind can, so probing with bind is enough."""
    lo, _ = _ephemeral_range()
    rng = random.Random()
    ports: list[int] = []
    for _ in range(1000):
        port = rng.randrange(max(1024, lo - 12000), lo)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise OperatorError("no free port for the engine below the kernel's ephemeral range")


def scratch_dir(ctx: PartyContext, prefix: str) -> Path:
    """A fresh directory for an engine's files (input, output, its own scratch), beside the
    job's output on the node's data disk; the caller removes it when the job ends."""
    root = Path(ctx.output_dir) if ctx.output_dir is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def run_engine(ctx: PartyContext, order: list[str], command: Callable[[list[str]], list[str]],
               work: Path, timeout: float, label: str,
               prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run this party's engine; its JSON report plus the link's figures.

    ``order`` lists every party's node id in rank order (this node's included). ``timeout``
    bounds the wait for any one message of the engines; the whole run gets four times that.
    """
    rank = order.index(ctx.node_id)
    (engine_port,) = listen_ports(1)
    proc: subprocess.Popen[bytes] | None = None

    def alive() -> bool:
        return proc is not None and proc.poll() is None

    relays: dict[str, EngineRelay] = {}
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    readers: list[threading.Thread] = []
    stopping = threading.Event()
    prepared: list[BaseException | None] = []
    writer: threading.Thread | None = None
    so, se = work / "engine.stdout", work / "engine.stderr"
    t0 = time.monotonic()
    try:
        for peer in order:
            if peer != ctx.node_id:
                # connection ids: a party opens ids = its rank modulo the number of parties
                relays[peer] = EngineRelay(ctx.sessions[peer], peer, opener=rank,
                                           parties=len(order), engine_port=engine_port,
                                           connect_timeout=timeout, engine_alive=alive)
        addresses = [f"127.0.0.1:{engine_port}" if p == ctx.node_id
                     else f"127.0.0.1:{relays[p].port}" for p in order]
        with so.open("wb") as fo, se.open("wb") as fe:
            # TMPDIR: the engine's scratch files stay in the job's own directory
            proc = subprocess.Popen(command(addresses), stdin=subprocess.PIPE, stdout=fo,
                                    stderr=fe, cwd=work, start_new_session=True,
                                    env={**os.environ, "TMPDIR": str(work)})
        for peer, relay in relays.items():
            t = threading.Thread(target=_read_session, name=f"engine-from-{peer}",
                                 args=(ctx, peer, relay, inbox, stopping), daemon=True)
            t.start()
            readers.append(t)

        def write_input() -> None:
            try:
                if prepare is not None:
                    prepare()
                prepared.append(None)
            except BaseException as exc:  # handed to the job's thread
                prepared.append(exc)

        writer = threading.Thread(target=write_input, name="engine-input", daemon=True)
        writer.start()
        report = _wait(ctx, proc, relays, inbox, prepared, so, se, t0, timeout, label)
    except BaseException as exc:
        if proc is not None:
            stop(proc)
        if isinstance(exc, OperatorError) and not isinstance(exc, PeerEngineFailed):
            for peer in relays:  # the others stop their engines at once
                with contextlib.suppress(Exception):
                    ctx.sessions[peer].send({"engine_failed": str(exc)[:300]})
        raise
    finally:
        stopping.set()
        for relay in relays.values():
            relay.close()
        for t in readers:
            t.join(timeout=2)
        if writer is not None:
            writer.join()
    report["engine_s"] = round(time.monotonic() - t0, 3)
    report["link_bytes_sent"] = sum(r.bytes_sent for r in relays.values())
    report["link_bytes_received"] = sum(r.bytes_received for r in relays.values())
    report["link_messages"] = [sum(r.frames_sent for r in relays.values()),
                               sum(r.frames_received for r in relays.values())]
    return report


def _read_session(ctx: PartyContext, peer: str, relay: EngineRelay,
                  inbox: queue.Queue[tuple[str, Any]], stopping: threading.Event) -> None:
    """A peer's messages while the engines run: relay frames to its relay, the rest to the
    job's thread; it ends after the peer's last one (engine_done or engine_failed)."""
    session = ctx.sessions[peer]
    while not stopping.is_set():
        try:
            msg = session.recv(timeout=0.25)
        except TimeoutError:
            continue
        except BaseException as exc:  # the session is gone: the job's thread says so
            inbox.put((peer, exc))
            return
        if is_relay_frame(msg):
            try:
                relay.handle(bytes(msg))
            except BaseException as exc:
                inbox.put((peer, exc))
                return
            continue
        inbox.put((peer, msg))
        if isinstance(msg, dict) and ("engine_done" in msg or "engine_failed" in msg):
            return


def _wait(ctx: PartyContext, proc: subprocess.Popen[bytes], relays: dict[str, EngineRelay],
          inbox: queue.Queue[tuple[str, Any]], prepared: list[BaseException | None],
          so: Path, se: Path, t0: float, timeout: float, label: str) -> dict[str, Any]:
    go_sent = False
    report: dict[str, Any] | None = None
    done: set[str] = set()
    limit = 4 * timeout + 60
    while report is None or len(done) < len(relays):
        if not go_sent and prepared:
            if prepared[0] is not None:
                raise OperatorError(f"the engine's input could not be written: {prepared[0]}")
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # an ended engine: seen below
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            go_sent = True
            ctx.progress(10, f"{label} running")
        for peer, relay in relays.items():
            if relay.error is not None:
                raise OperatorError(f"the engine link to party {peer} failed: {relay.error}")
        if report is None and proc.poll() is not None:
            report = _report(proc.returncode, so, se, label)
            for peer, relay in relays.items():
                relay.drain(timeout=10)  # the link's last frames before the word "done"
                ctx.sessions[peer].send({"engine_done": True})
            ctx.progress(80, f"{label} finished")
            continue
        try:
            peer, msg = inbox.get(timeout=0.05)
        except queue.Empty:
            if time.monotonic() - t0 > limit:
                raise OperatorError(f"the engines did not finish within {limit:.0f} s") from None
            continue
        if isinstance(msg, BaseException):
            # as the session raised it: a lost peer, a local cancel, a malformed frame
            raise msg
        if isinstance(msg, dict) and msg.get("engine_done") is True:
            done.add(peer)
        elif isinstance(msg, dict) and "engine_failed" in msg:
            raise PeerEngineFailed(f"party {peer}'s engine failed: "
                                   f"{str(msg['engine_failed'])[:300]}")
        else:
            raise OperatorError(f"party {peer} sent {str(msg)[:100]!r} while the engines ran")
    return report


def _report(rc: int, so: Path, se: Path, label: str) -> dict[str, Any]:
    stdout = so.read_text(errors="replace")
    if rc != 0:
        err = [ln.strip() for ln in se.read_text(errors="replace").splitlines() if ln.strip()]
        # spu logs "[error]" lines and a C++ exception's what(), whose text (an enforce that
        # failed) is on the line after "what:"; the last of them says why
        said = [i for i, ln in enumerate(err)
                if "[error]" in ln or "Error" in ln or "what()" in ln or "Enforce" in ln]
        at = said[-1] if said else len(err) - 1
        why = " ".join(err[at:at + 2]) if err and err[at].endswith("what:") else (
            err[at] if err else "no output")
        why = why[-300:]
        raise OperatorError(f"the {label} exited with code {rc}: {why}")
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    return doc
    raise OperatorError(f"the {label} ended without its report")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the engine's process group, SIGKILL after 5 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
