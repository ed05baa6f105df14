"""Private set intersection, provider ``secretflow``: SecretFlow's PSI engine plugged in.

The appliance does what it does for every job (peers, attestation, data sets, grade policy,
ledger, the output data set); SecretFlow's ``spu.psi.psi_execute`` (protocols RR22, KKRT,
ECDH) does the intersection, one engine process per party, run from its own venv
(``engines.secretflow``) by ``spu_engine.py``. The engines' link rides the job's session
(``engine_relay``), so it is the nodes' pinned mTLS channel, attested for this job.

What the engine is given: not the ids, but ``key = hex(SHA-256(DOMAIN || id))[:32]`` (a
128-bit hash, the width RR22 and KKRT hash items to anyway) and the row's position. So any id
(non-UTF-8 bytes, commas, quotes, newlines, 1 MB) reaches it as a plain CSV field, and both
parties' outputs, ordered by key, line up row for row for a join. The parties compare a digest
of the keys they found, so an engine that disagrees with itself fails the job, never returns a
wrong intersection.

Who learns what is spu's protocol's (docs/psi.md "Provider secretflow"): semi-honest; with
``reveal=both`` both parties learn the intersection, with ``reveal=initiator`` only the guest
(spu's receiver) does and tells the host its size. spu has no cardinality-only mode: that
reveal is refused (provider ``pec`` has it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from appliance.operators import engines
from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.engine_runner import run_engine, scratch_dir
from appliance.operators.psi import ecdh_engine
from appliance.operators.psi.protocol import (
    Params,
    _check_provider_params,
    _open_join,
    _peer_session,
    _read_ids,
    _role_and_rows,
    _size_from,
    _write_rows,
)

PROTOCOLS = ("rr22", "kkrt", "ecdh")
DOMAIN = b"pec-psi/secretflow-key/sha256/v1\x00"
KEY_HEX = 32  # 128 bits
ENGINE_SCRIPT = Path(__file__).resolve().with_name("spu_engine.py")
HELLO = {"psi": "secretflow", "version": 1, "key": "sha256-128/v1"}
_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()
_TRACE_RE = re.compile(r"Trace has been written to (\S+\.trace)")


def link_timeout(rows: int, floor: float) -> float:
    """How long an engine waits for any one message: 30 s plus 30 s per million ids (the
    longest quiet gap of a healthy run here is a few seconds at 10^6), never under the job's
    own message timeout."""
    return max(floor, 30.0 + 30.0 * rows / 1e6)


def run(ctx: PartyContext, p: Params, protocol: str) -> dict[str, Any]:
    if protocol not in PROTOCOLS:
        raise OperatorError(f"psi: provider secretflow runs protocol {', '.join(PROTOCOLS)} "
                            f"(got {protocol!r})")
    _check_provider_params("secretflow", p)
    if ctx.params.get("mode", "balanced") != "balanced":
        raise OperatorError("psi: provider secretflow runs mode=balanced only (spu's unbalanced "
                            "PSI is not plugged in); use provider=pec for mode=unbalanced")
    if p.reveal == "cardinality":
        raise OperatorError("psi: provider secretflow has no reveal=cardinality (spu's PSI "
                            "always shows its receiver the rows); use provider=pec")
    peer, session = _peer_session(ctx)
    engine = engines.secretflow(ctx.node_id)
    me_learns = p.reveal == "both" or ctx.role == "guest"
    if me_learns and ctx.output_dir is None:
        raise OperatorError("psi needs this node's output directory to write the intersection")
    id_column, ids = _read_ids(ctx)
    n = len(ids)
    payload = tuple(c for c in p.payload(ctx.role) if c != id_column)
    join_rows = _open_join(ctx, id_column, payload) if p.join is not None else None
    ctx.progress(2, f"read {n} ids")
    try:
        hello = {**HELLO, "protocol": protocol, "engine": f"spu {engine.version}",
                 "reveal": p.reveal, "role": ctx.role, "rows": n, "join": p.join is not None}
        session.send(hello)
        m = _check_hello(peer, session.recv(timeout=ctx.timeout), hello, ctx.parties[peer])
        work = scratch_dir(ctx, ".secretflow-")
        try:
            if n and m:
                found, digest, report = _run_engine(ctx, engine, work, ids, protocol,
                                                    p.reveal, n, m)
            else:  # an empty side: nothing to run, the intersection is empty
                found, digest, report = np.empty(0, np.int64), _EMPTY_DIGEST, {}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result: dict[str, Any] = {
            "provider": "secretflow", "protocol": protocol, "engine": f"spu {engine.version}",
            "reveal": p.reveal, "own_rows": n, "peer_rows": m,
            **{k: v for k, v in report.items() if k != "intersection_size"}}
        if me_learns:
            size = len(found)
            session.send({"intersection_size": size, "keys_sha256": digest})
            if p.reveal == "both":  # checked before anything is written
                told = session.recv(timeout=ctx.timeout)
                theirs = _size_from(peer, told, n, m)
                if theirs != size or told.get("keys_sha256") != digest:
                    raise OperatorError(f"party {peer} found {theirs} rows in the intersection, "
                                        f"this node {size} (or other ones): the parties' "
                                        "results disagree")
            assert ctx.output_dir is not None
            if join_rows is not None:
                table = join_rows.take(ids, found)  # key order: the same at both parties
                result.update(_write_rows(Path(ctx.output_dir), ctx, table))
                result.update(learned="rows", columns=table.column_names, order="aligned")
            else:
                table = pa.table({id_column: ids.take(pa.array(np.sort(found), pa.int64()))})
                result.update(_write_rows(Path(ctx.output_dir), ctx, table))
                result["learned"] = "rows"
        else:
            size = _size_from(peer, session.recv(timeout=ctx.timeout), n, m)
            result["learned"] = "size"
    finally:
        if join_rows is not None:
            join_rows.close()
    result["intersection_size"] = size
    ctx.progress(100, f"intersection of {size}")
    return result


def _check_hello(peer: str, msg: Any, mine: dict[str, Any], peer_role: str) -> int:
    if not isinstance(msg, dict) or msg.get("psi") != "secretflow":
        raise OperatorError(f"party {peer} does not run psi with provider secretflow "
                            f"(its handshake: {str(msg)[:200]})")
    for field in ("version", "key", "protocol", "engine", "reveal", "join"):
        if msg.get(field) != mine[field]:
            raise OperatorError(f"party {peer} runs {field}={msg.get(field)!r}, this node "
                                f"{mine[field]!r}")
    return _role_and_rows(peer, msg, peer_role)


def engine_keys(ids: pa.Array) -> pa.Array:
    """The 128-bit hex key of every id (string array), in C on all cores."""
    digest = ecdh_engine.hash_to_point(ids, DOMAIN)[:, :KEY_HEX // 2]
    lut = np.frombuffer(b"0123456789abcdef", np.uint8)
    text = np.empty((len(digest), KEY_HEX), np.uint8)
    text[:, 0::2] = lut[digest >> 4]
    text[:, 1::2] = lut[digest & 15]
    return pa.array(text.view(f"S{KEY_HEX}").reshape(-1)).cast(pa.string())


#: ids hashed and written per step: the input file is streamed, so a party's memory for it
#: stays near 100 MB whatever the set's size
INPUT_CHUNK = 1 << 20


def write_input(path: Path, ids: pa.Array) -> None:
    """The engine's input CSV: ``key`` (see ``engine_keys``) and ``row``, chunk by chunk."""
    schema = pa.schema([("key", pa.string()), ("row", pa.int64())])
    with pacsv.CSVWriter(path, schema,
                         write_options=pacsv.WriteOptions(quoting_style="none")) as w:
        for start in range(0, len(ids), INPUT_CHUNK):
            part = ids.slice(start, INPUT_CHUNK)
            rows = np.arange(start, start + len(part), dtype=np.int64)
            w.write_table(pa.table([engine_keys(part), pa.array(rows)], schema=schema))


def _run_engine(ctx: PartyContext, engine: engines.Engine, work: Path,
                ids: pa.Array, protocol: str, reveal: str, n: int,
                m: int) -> tuple[np.ndarray, str, dict[str, Any]]:
    """One engine run: this party's rows found (in key order), the SHA-256 of their keys in
    that order (for the cross-check) and the engine's figures."""
    inp, out = work / "input.csv", work / "output.csv"
    order = [n_ for n_, r in sorted(ctx.parties.items(), key=lambda kv: kv[1] != "guest")]
    rank = order.index(ctx.node_id)  # the guest is rank 0, spu's receiver

    def command(addresses: list[str]) -> list[str]:
        cmd = [str(engine.python), str(ENGINE_SCRIPT), "--role", str(rank),
               "--self", addresses[rank], "--peer", addresses[1 - rank],
               "--link-id", "psi-" + hashlib.sha256(ctx.job_id.encode()).hexdigest()[:16],
               "--input", str(inp), "--id-column", "key", "--output", str(out),
               "--protocol", protocol, "--receiver", "0", "--keys-unique", "--wait-for-go",
               "--link-timeout-s", f"{timeout:.0f}"]
        return cmd + (["--no-broadcast"] if reveal != "both" else [])

    timeout = link_timeout(max(n, m), ctx.timeout)
    try:
        doc = run_engine(ctx, order, command, work, timeout, "secretflow engine",
                         prepare=lambda: write_input(inp, ids))
    finally:
        remove_traces(work / "engine.stdout", work / "engine.stderr")
    report = {f"engine_{k}": doc.get(k) for k in ("import_s", "link_s", "psi_s", "cpu_s",
                                                  "peak_rss_kb")}
    # the runner's own figures: the engine process's wall time and the relayed traffic
    report.update({k: doc[k] for k in ("engine_s", "link_bytes_sent", "link_bytes_received",
                                       "link_messages") if k in doc})
    if not (ctx.role == "guest" or reveal == "both"):
        return np.empty(0, np.int64), _EMPTY_DIGEST, report
    found, digest = _read_output(out, n)
    if doc.get("intersection_size") not in (None, len(found)):
        raise OperatorError(f"psi: the engine reported {doc['intersection_size']} rows but "
                            f"wrote {len(found)}")
    return found, digest, report


def _read_output(out: Path, n: int) -> tuple[np.ndarray, str]:
    """The rows the engine found, ordered by key (the same order at both parties), and the
    SHA-256 of their keys in that order."""
    if not out.exists():
        raise OperatorError("psi: the secretflow engine wrote no output")
    table = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(
        column_types={"key": pa.string(), "row": pa.int64()}, include_columns=["key", "row"]))
    table = table.take(pc.sort_indices(table, [("key", "ascending")]))
    rows = table.column("row").to_numpy()
    keys = table.column("key").combine_chunks()
    if len(keys) and pc.any(pc.not_equal(pc.utf8_length(keys), KEY_HEX)).as_py():
        raise OperatorError("psi: the secretflow engine's output has a malformed key")
    # fixed-width keys: their bytes in order are the data buffer's, offset to offset
    data = keys.buffers()[2]
    digest = hashlib.sha256(memoryview(data)[keys.offset * KEY_HEX:
                                             (keys.offset + len(keys)) * KEY_HEX]
                            if len(keys) else b"").hexdigest()
    if len(rows) and (rows.min() < 0 or rows.max() >= n or len(np.unique(rows)) != len(rows)):
        raise OperatorError("psi: the secretflow engine's output names rows this node does not "
                            "have, or one twice")
    return rows.astype(np.int64), digest


def remove_traces(*logs: Path) -> None:
    """spu's PSI writes a trace file to /tmp whatever TMPDIR says, and logs its name in
    these logs: it is this run's, remove it (the operator and the benchmark alike)."""
    for log in logs:
        with contextlib.suppress(OSError):
            for trace in _TRACE_RE.findall(log.read_text(errors="replace")):
                if Path(trace).name.startswith("psi_"):
                    with contextlib.suppress(OSError):
                        os.unlink(trace)
