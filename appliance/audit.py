"""The audit trail: every administrative act goes through ``record()``.

Records are kept in the store's ``events`` table, hash-chained (each hash covers the previous
one), so ``verify()`` finds an edited, deleted or reordered record. ``record()`` is the single
entry point so the trail can move to the signed ledger without touching its callers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from appliance.store import Store, utc_now

_GENESIS = "0" * 64
_bound: Store | None = None
_bind_lock = threading.Lock()


class AuditError(RuntimeError):
    """The audit trail is not available or a record is malformed."""


def bind(store: Store | None) -> None:
    """Send records to ``store`` (None unbinds, e.g. when the daemon stops)."""
    global _bound
    with _bind_lock:
        _bound = store


def _store() -> Store:
    if _bound is None:
        raise AuditError("the audit trail is not open (no store bound)")
    return _bound


def _digest(prev_hash: str, rec: dict[str, Any]) -> str:
    canonical = json.dumps(
        [prev_hash, rec["seq"], rec["time"], rec["actor"], rec["action"], rec["object"],
         rec["details"]],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(actor: str, action: str, object: str, details: dict[str, Any] | None = None) -> dict:
    """Append one record and return it as served by ``/v1/audit``."""
    for name, value in (("actor", actor), ("action", action), ("object", object)):
        if not isinstance(value, str) or not value.strip():
            raise AuditError(f"audit record needs a non-empty string {name}")
    details = {} if details is None else details
    if not isinstance(details, dict):
        raise AuditError("audit record details must be an object")
    with _store().transaction() as db:
        last = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq = (last["seq"] if last else 0) + 1
        prev_hash = last["hash"] if last and last["hash"] else _GENESIS
        rec = {"seq": seq, "time": utc_now(), "actor": actor, "action": action,
               "object": object, "details": details}
        rec["prev_hash"] = prev_hash
        rec["hash"] = _digest(prev_hash, rec)
        db.execute(
            "INSERT INTO events (seq, time, actor, action, object, details, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, rec["time"], actor, action, object, json.dumps(details), prev_hash,
             rec["hash"]),
        )
    return rec


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["details"] = json.loads(out["details"])
    return out


def records(
    *, offset: int = 0, limit: int = 50, actor: str | None = None, action: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """A page of records, newest first, and the total that match the filter."""
    where, args = [], []
    if actor:
        where.append("actor = ?")
        args.append(actor)
    if action:
        where.append("action = ?")
        args.append(action)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    store = _store()
    total = store.query(f"SELECT COUNT(*) FROM events {clause}", args)[0][0]
    rows = store.query(
        f"SELECT * FROM events {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    )
    return [_row(r) for r in rows], total


def verify() -> dict[str, Any]:
    """Walk the chain: {"ok", "first_bad", "reason"}."""
    prev_hash, expected_seq = _GENESIS, 1
    for row in _store().query("SELECT * FROM events ORDER BY seq"):
        rec = _row(row)
        if rec["seq"] != expected_seq:
            return {"ok": False, "first_bad": expected_seq,
                    "reason": f"record {expected_seq} is missing (next is {rec['seq']})"}
        if rec["prev_hash"] != prev_hash:
            return {"ok": False, "first_bad": rec["seq"],
                    "reason": f"record {rec['seq']} does not follow the previous record"}
        if rec["hash"] != _digest(prev_hash, rec):
            return {"ok": False, "first_bad": rec["seq"],
                    "reason": f"record {rec['seq']} was altered (hash mismatch)"}
        prev_hash, expected_seq = rec["hash"], expected_seq + 1
    return {"ok": True, "first_bad": None, "reason": None}
