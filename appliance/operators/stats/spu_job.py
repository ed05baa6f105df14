"""One SPU run of the stats operator among the job's parties (``spu_engine.py`` at each).

SPU computes among two parties (CHEETAH: semi-honest, no dealer) or three (ABY3: replicated
secret sharing, honest majority). A job of four or five parties picks three of them to
compute, the initiator always among them, and the rest *provide*: each runs the engine once
to secret-share its input with SPU's ``Io`` (no link, no computing) and sends each share to
its computing party over the job session; the shares alone tell a computing party nothing.
The first computing party then sends the result to each providing party that is a receiver,
and a bare "done" to the others. docs/stats.md says who learns what.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from appliance.operators import engines
from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.engine_runner import run_engine, scratch_dir

ENGINE_SCRIPT = Path(__file__).resolve().with_name("spu_engine.py")
PROTOCOLS = {2: "CHEETAH", 3: "ABY3"}
MAX_SHARE_FILE = 1 << 30  # a providing party's shares for one computing party


def computing_parties(parties: dict[str, str]) -> list[str]:
    """The parties that run SPU, in rank order: every party of a job of two or three;
    otherwise the initiator and the first two others by node id."""
    order = sorted(parties)
    if len(order) <= 3:
        return order
    guests = [p for p in order if parties[p] == "guest"][:1]
    return sorted(guests + [p for p in order if p not in guests][:3 - len(guests)])


def run(ctx: PartyContext, layout: str, arrays: dict[str, np.ndarray],
        request: dict[str, Any], receivers: list[str], label: str) -> dict[str, Any]:
    """This party's part of an SPU run; the engine's report, whose ``results`` (the opened
    outputs, name -> nested lists) are set at a receiver only."""
    engine = engines.secretflow(ctx.node_id)
    computing = computing_parties(ctx.parties)
    work = scratch_dir(ctx, ".spu-stats-")
    try:
        if ctx.node_id in computing:
            return _compute(ctx, engine, layout, arrays, request, receivers, label,
                            computing, work)
        return _provide(ctx, engine, layout, arrays, receivers, computing, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timeout(ctx: PartyContext, arrays: dict[str, np.ndarray]) -> float:
    # each engine waits this long for any one message (its barriers included): generous, as
    # an oblivious sort among three engines on a loaded machine can hold a party a minute or
    # more (a 60 s wait failed once in CI); a peer that is gone ends the job sooner through
    # its session
    return max(ctx.timeout, 600.0 + 120.0 * len(arrays["values"]) / 1e5)


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _compute(ctx: PartyContext, engine: engines.Engine, layout: str,
             arrays: dict[str, np.ndarray], request: dict[str, Any], receivers: list[str],
             label: str, computing: list[str], work: Path) -> dict[str, Any]:
    order = sorted(ctx.parties)
    providers = [p for p in order if p not in computing]
    timeout = _timeout(ctx, arrays)
    inp = work / "input.npz"
    sources = [f"rank:{computing.index(p)}" if p in computing else f"file:{work}/from-{g}.npz"
               for g, p in enumerate(order)]

    def prepare() -> None:
        _save(inp, arrays)
        for p in providers:  # each providing party's shares for this computing party
            blob = _provided(ctx, p, timeout)
            (work / f"from-{order.index(p)}.npz").write_bytes(blob)

    def command(addresses: list[str]) -> list[str]:
        return [str(engine.python), str(ENGINE_SCRIPT), "--rank",
                str(computing.index(ctx.node_id)), "--addresses", ",".join(addresses),
                "--layout", layout, "--input", str(inp), "--sources", ",".join(sources),
                "--request", json.dumps(request),
                "--receivers", ",".join(str(computing.index(r)) for r in receivers
                                        if r in computing),
                "--link-id", "stats-" + hashlib.sha256(ctx.job_id.encode()).hexdigest()[:16],
                "--link-timeout-s", f"{timeout:.0f}", "--wait-for-go"]

    try:
        doc = run_engine(ctx, computing, command, work, timeout,
                         f"SPU engine ({PROTOCOLS[len(computing)]})", prepare=prepare)
    except BaseException as exc:
        for p in providers:  # they wait for the first computing party's word
            with contextlib.suppress(Exception):
                ctx.sessions[p].send({"t": "stats/spu_failed", "error": str(exc)[:300]})
        raise
    if ctx.node_id == computing[0]:
        for p in providers:
            ctx.sessions[p].send({"t": "stats/spu_done", "rows": doc.get("rows"),
                                  "results": doc.get("results") if p in receivers else None})
    doc["engine"] = f"spu {engine.version}"
    doc["computing"] = computing
    return doc


def _provided(ctx: PartyContext, peer: str, timeout: float) -> bytes:
    """A providing party's share file, checked to be what the engine reads (an .npz)."""
    try:
        msg = ctx.sessions[peer].recv(timeout=timeout)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(f"party {peer} did not send its shares: {exc}") from exc
    if isinstance(msg, dict) and msg.get("t") == "stats/spu_failed":
        raise OperatorError(f"party {peer} could not share its input: "
                            f"{str(msg.get('error'))[:300]}")
    if not isinstance(msg, bytes | bytearray) or len(msg) > MAX_SHARE_FILE:
        raise OperatorError(f"party {peer} sent a malformed stats/shares message")
    blob = bytes(msg)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            names = set(z.namelist())
    except zipfile.BadZipFile:
        raise OperatorError(f"party {peer} sent a malformed stats/shares message "
                            "(not an .npz)") from None
    if not names <= {f"{a}{s}.npy" for a in ("keys", "values", "noise")
                     for s in ("", "_shape")} or "values_shape.npy" not in names:
        raise OperatorError(f"party {peer} sent a malformed stats/shares message "
                            f"(arrays {sorted(names)})")
    return blob


def _provide(ctx: PartyContext, engine: engines.Engine, layout: str,
             arrays: dict[str, np.ndarray], receivers: list[str], computing: list[str],
             work: Path) -> dict[str, Any]:
    timeout = _timeout(ctx, arrays)
    try:
        inp = work / "input.npz"
        _save(inp, arrays)
        cmd = [str(engine.python), str(ENGINE_SCRIPT), "--share-only", "--layout", layout,
               "--world", str(len(computing)), "--input", str(inp), "--out",
               str(work / "share-")]
        try:
            done = subprocess.run(cmd, cwd=work, capture_output=True, timeout=timeout,
                                  env={**os.environ, "TMPDIR": str(work)})
        except subprocess.TimeoutExpired:
            raise OperatorError(f"the SPU engine did not share this party's input within "
                                f"{timeout:.0f} s") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise OperatorError(f"the SPU engine could not share this party's input: "
                                f"{tail[0][-300:] if tail else done.returncode}")
        for j, p in enumerate(computing):
            ctx.sessions[p].send_bytes((work / f"share-{j}.npz").read_bytes())
    except BaseException as exc:
        for p in computing:
            with contextlib.suppress(Exception):
                ctx.sessions[p].send({"t": "stats/spu_failed", "error": str(exc)[:300]})
        raise
    first = computing[0]
    try:
        msg = ctx.sessions[first].recv(timeout=4 * timeout + 60)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(f"party {first} did not send the SPU result: {exc}") from exc
    if isinstance(msg, dict) and msg.get("t") == "stats/spu_failed":
        raise OperatorError(f"party {first}'s SPU engine failed: {str(msg.get('error'))[:300]}")
    if (not isinstance(msg, dict) or set(msg) != {"t", "rows", "results"}
            or msg["t"] != "stats/spu_done"
            or not isinstance(msg["rows"], list)
            or not (msg["results"] is None or isinstance(msg["results"], dict))):
        raise OperatorError(f"party {first} sent a malformed stats/spu_done message")
    if (msg["results"] is not None) != (ctx.node_id in receivers):
        raise OperatorError(f"party {first} sent a malformed stats/spu_done message "
                            "(results to a party that receives none, or none to a receiver)")
    return {"protocol": PROTOCOLS[len(computing)], "engine": f"spu {engine.version}",
            "computing": computing, "provided": True, "rows": msg["rows"],
            "results": msg["results"]}
