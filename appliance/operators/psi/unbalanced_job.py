"""``psi`` with ``mode=unbalanced`` over a job session: guest = client (small set), host =
server (large set). See ``unbalanced`` for the protocol and docs/psi.md for who learns what.

Messages: the host opens with a JSON handshake (protocol, group, output width, its row count,
its data set fingerprint, key version and key public value, the table's size in bytes); the
guest answers with its own (its row count, whether it needs the table). A guest without the
table in its cache gets it as byte messages, then sends its blinded queries as byte messages
(``batch_size`` points each) and the host answers each with a byte message of the same size.
The guest ends with its intersection size, which the host records.

What the node must give (attributes of the ``PartyContext``, set by the daemon, never job
parameters): ``state_dir`` (the host keeps its tables under ``psi-oprf/``, the guest its cache
under ``psi-oprf-cache/``) and, on the host, ``secrets`` (an object with
``store_secret``/``load_secret``: the trust root, which seals the OPRF key with the KEK).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.psi import protocol, unbalanced
from appliance.operators.psi.unbalanced import (
    OUTPUT_BYTES,
    Client,
    OprfKey,
    Server,
    ServerTable,
    TableCache,
)

HELLO = {"protocol": "ecdh-oprf-psi", "version": 1, "group": "ristretto255",
         "hash_to_group": "sha512-from_hash", "output_bytes": OUTPUT_BYTES}
DEFAULT_BATCH = 1 << 16
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,96}")


def parse(params: dict[str, Any]) -> int:
    """The batch size; refuses what this mode does not take."""
    unknown = set(params) - {"mode", "reveal", "batch_size", "dataset", "peer_dataset", "provider",
                             "protocol"}
    if unknown:
        raise OperatorError(f"psi: mode=unbalanced does not take {', '.join(sorted(unknown))}")
    if params.get("reveal", "initiator") != "initiator":
        # the server only answers blinded points: it cannot learn rows, and the client learns
        # membership of its own queries, which is reveal=initiator
        raise OperatorError(f"psi: mode=unbalanced is reveal=initiator only (got "
                            f"reveal={params.get('reveal')!r})")
    batch = params.get("batch_size", DEFAULT_BATCH)
    if isinstance(batch, str) and batch.isdigit():
        batch = int(batch)
    if isinstance(batch, bool) or not isinstance(batch, int) or not (
            1 <= batch <= unbalanced.MAX_QUERY):
        raise OperatorError(f"psi: batch_size must be an integer 1..{unbalanced.MAX_QUERY} "
                            f"(got {batch!r})")
    return batch


def run(ctx: PartyContext) -> dict[str, Any]:
    batch = parse(ctx.params)
    peer, session = protocol._peer_session(ctx)
    state = getattr(ctx, "state_dir", None)
    if state is None:
        raise OperatorError("psi mode=unbalanced needs this node's state directory (tables "
                            "and cache)")
    id_column, ids = protocol._read_ids(ctx)
    ctx.progress(2, f"read {len(ids)} ids")
    if ctx.role == "host":
        result = _host(ctx, peer, session, ids, Path(state), batch)
    else:
        result = _guest(ctx, peer, session, id_column, ids, Path(state))
    ctx.progress(100, f"intersection of {result['intersection_size']}")
    return result


def _key_name(ctx: PartyContext) -> str:
    name = getattr(ctx.dataset, "name", None)
    if not isinstance(name, str) or not name:
        raise OperatorError("psi mode=unbalanced needs the data set's name (its OPRF key is "
                            "kept per data set)")
    # a name the secret store cannot take is hashed: stable, and still one key per data set
    return name if _SAFE.fullmatch(name) else "h" + hashlib.sha256(name.encode()).hexdigest()[:40]


def _host(ctx: PartyContext, peer: str, session: Any, ids: pa.Array, state: Path,
          batch: int) -> dict[str, Any]:
    secrets = getattr(ctx, "secrets", None)
    if secrets is None or not hasattr(secrets, "store_secret"):
        raise OperatorError("psi mode=unbalanced needs this node's secret store for its key")
    assert ctx.dataset is not None
    key = OprfKey.load_or_create(secrets, _key_name(ctx))
    ctx.progress(5, "building or finding the OPRF table")
    table = ServerTable.build(ids, key, state / "psi-oprf", fingerprint=ctx.dataset.fingerprint)
    ctx.progress(40, f"table of {table.count} ids ({'built' if table.built else 'reused'})")
    size = table.path.stat().st_size
    session.send({**HELLO, "role": "host", "rows": table.count,
                  "fingerprint": table.fingerprint, "key_version": table.key_version,
                  "key_public": table.key_public.hex(), "table_bytes": size})
    hello = _check_hello(peer, session.recv(timeout=ctx.timeout), "guest")
    m = hello["rows"]
    if hello.get("need_table") is True:
        for chunk in table.chunks():
            session.send_bytes(chunk)
    server = Server(key, max_batch=batch)
    while server.queries_answered < m:
        msg = session.recv(timeout=ctx.timeout)
        if not isinstance(msg, bytes | bytearray):
            raise OperatorError(f"party {peer} sent a control message where queries were due")
        if len(msg) < 32:  # an empty batch answers nothing and could keep this loop going
            raise OperatorError(f"party {peer} sent an empty or short query batch")
        if len(msg) // 32 > m - server.queries_answered:
            raise OperatorError(f"party {peer} sent more than the {m} queries it announced")
        try:
            session.send_bytes(server.answer(msg))
        except OperatorError as exc:
            raise OperatorError(f"party {peer}: {exc}") from None
        ctx.progress(40 + 55 * server.queries_answered / max(1, m),
                     f"{server.queries_answered} of {m} queries answered")
    told = protocol._size_from(peer, session.recv(timeout=ctx.timeout), m, table.count)
    return {"provider": "pec", "protocol": "ecdh-oprf-ristretto255", "mode": "unbalanced",
            "reveal": "initiator", "own_rows": table.count, "peer_rows": m, "learned": "size",
            "intersection_size": told, "table_built": table.built,
            "table_seconds": round(table.seconds, 3), "key_version": key.version}


def _guest(ctx: PartyContext, peer: str, session: Any, id_column: str, ids: pa.Array,
           state: Path) -> dict[str, Any]:
    out_dir = getattr(ctx, "output_dir", None)
    if out_dir is None:
        raise OperatorError("psi needs this node's output directory to write the intersection")
    hello = _check_hello(peer, session.recv(timeout=ctx.timeout), "host")
    fp, version = hello["fingerprint"], hello["key_version"]
    public = bytes.fromhex(hello["key_public"])
    cache = TableCache(state / "psi-oprf-cache")
    table = cache.get(fp, version, public)
    session.send({**HELLO, "role": "guest", "rows": len(ids), "need_table": table is None})
    downloaded = table is None
    if table is None:
        table = cache.receive(_download(ctx, peer, session, hello["table_bytes"]), fp, version,
                              public, hello["rows"])
    ctx.progress(40, f"table of {table.count} ids ({'downloaded' if downloaded else 'cached'})")

    def ask(blinded: bytes) -> bytes:
        session.send_bytes(blinded)
        msg = session.recv(timeout=ctx.timeout)
        if not isinstance(msg, bytes | bytearray):
            raise OperatorError(f"party {peer} sent a control message where answers were due")
        return bytes(msg)

    mask = Client(max_batch=parse(ctx.params)).mask(ids, table, ask)
    size = int(mask.sum())
    rows = np.flatnonzero(mask)
    result = protocol._write_rows(Path(out_dir), ctx, pa.table(
        {id_column: ids.take(pa.array(rows, pa.int64()))}))
    session.send({"intersection_size": size})
    return {"provider": "pec", "protocol": "ecdh-oprf-ristretto255", "mode": "unbalanced",
            "reveal": "initiator", "own_rows": len(ids), "peer_rows": table.count,
            "learned": "rows", "intersection_size": size, "table_downloaded": downloaded,
            **result}


def _download(ctx: PartyContext, peer: str, session: Any, total: int) -> Iterator[bytes]:
    got = 0
    while got < total:
        msg = session.recv(timeout=ctx.timeout)
        if not isinstance(msg, bytes | bytearray) or got + len(msg) > total:
            raise OperatorError(f"party {peer} sent something other than the {total}-byte "
                                "table it announced")
        got += len(msg)
        ctx.progress(5 + 35 * got / max(1, total), f"table {got} of {total} bytes")
        yield bytes(msg)


def _check_hello(peer: str, msg: Any, role: str) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise OperatorError(f"party {peer} did not open with an unbalanced psi handshake")
    for key, want in HELLO.items():
        if msg.get(key) != want:
            raise OperatorError(f"party {peer} runs {key}={msg.get(key)!r}, this node {want!r}")
    if msg.get("role") != role:
        raise OperatorError(f"party {peer} claims role {msg.get('role')!r}; the job made it "
                            f"the {role}")
    rows = msg.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise OperatorError(f"party {peer} announced an impossible row count {rows!r}")
    if role == "host":
        ok = (isinstance(msg.get("fingerprint"), str)
              and re.fullmatch(r"[0-9a-f]{64}", msg["fingerprint"])
              and isinstance(msg.get("key_version"), int) and msg["key_version"] >= 1
              and isinstance(msg.get("key_public"), str)
              and re.fullmatch(r"[0-9a-f]{64}", msg["key_public"])
              and isinstance(msg.get("table_bytes"), int)
              and msg["table_bytes"] == unbalanced.TABLE_HEADER_BYTES + 12 * rows)
        if not ok:
            raise OperatorError(f"party {peer} announced its table impossibly")
    return msg
