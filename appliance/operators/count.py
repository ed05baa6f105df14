"""The proof operator: every party counts its data set's rows and tells the others, signed.

It proves the multi-party runtime end to end (roles, sessions, data sets, signatures, ledger)
with a protocol whose every message is checked: a statement must name this job and its sender,
carry the sender's node-key signature, and a plausible count. What each party learns: the other
parties' row counts, nothing else (counts are grade-policy "aggregate" outputs).
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.operators.base import (
    ROLES,
    Operator,
    OperatorError,
    PartyContext,
    canonical,
    register,
)


def _statement(ctx: PartyContext, rows: int) -> dict[str, Any]:
    return {"operator": "count", "job_id": ctx.job_id, "node_id": ctx.node_id, "rows": rows,
            "dataset_fingerprint": ctx.dataset.fingerprint if ctx.dataset else None}


def _check(ctx: PartyContext, peer: str, msg: Any) -> dict[str, Any]:
    if not isinstance(msg, dict) or set(msg) != {"statement", "signature"}:
        raise OperatorError(f"party {peer} sent a malformed count message")
    stmt, sig = msg["statement"], msg["signature"]
    if not isinstance(stmt, dict) or not isinstance(sig, str):
        raise OperatorError(f"party {peer} sent a malformed count message")
    if stmt.get("job_id") != ctx.job_id or stmt.get("node_id") != peer:
        raise OperatorError(f"party {peer} sent a statement for job {stmt.get('job_id')!r} "
                            f"from {stmt.get('node_id')!r}: not this job or not its sender")
    rows = stmt.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise OperatorError(f"party {peer} sent an impossible row count {rows!r}")
    pem = ctx.peer_keys.get(peer)
    if pem is None:
        raise OperatorError(f"no pinned node key for party {peer}")
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise OperatorError(f"party {peer}'s pinned node key is not an EC key")
    try:
        key.verify(bytes.fromhex(sig), canonical(stmt), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise OperatorError(f"party {peer}'s count statement is not signed by its pinned "
                            "node key") from None
    return stmt


def run(ctx: PartyContext) -> dict[str, Any]:
    if ctx.dataset is None:
        raise OperatorError("count needs a data set on every party")
    if ctx.sign is None:
        raise OperatorError("count needs the node's signing key")
    rows = 0
    for batch in ctx.dataset.batches():
        rows += batch.num_rows
        ctx.progress(10, f"counted {rows} rows")
    stmt = _statement(ctx, rows)
    message = {"statement": stmt, "signature": ctx.sign(canonical(stmt)).hex()}
    for session in ctx.sessions.values():
        session.send(message)
    ctx.progress(50, "sent the signed count")
    peers: dict[str, Any] = {}
    for i, (peer, session) in enumerate(sorted(ctx.sessions.items()), 1):
        peers[peer] = _check(ctx, peer, session.recv(timeout=ctx.timeout))
        ctx.progress(50 + 50 * i / len(ctx.sessions), f"received {peer}'s count")
    return {
        "own_rows": rows,
        "peer_rows": {p: s["rows"] for p, s in peers.items()},
        "total_rows": rows + sum(s["rows"] for s in peers.values()),
        "peer_statements": peers,
    }


COUNT = register(Operator(
    name="count", provider="pec", version="1.0", roles=ROLES,
    description="each party counts its data set's rows; parties exchange signed counts",
    params={"dataset": "this party's data set"}, inputs=("dataset",),
    outputs=("own_rows", "peer_rows", "total_rows"), run=run, family="count",
))
