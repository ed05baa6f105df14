"""The audit trail: every administrative act goes through ``record()``.

Two trails, one entry point:

- the **signed ledger** (``appliance.ledger``, table ``audit_ledger``): hash-chained and each
  record signed by the HSM key; where records go whenever the trust root's keys are unlocked;
- the **unsigned trail** (the store's ``events`` table): hash-chained but unsigned, so it finds
  an edited, deleted or reordered record only against someone who cannot recompute hashes.
  Records go here while no signer exists: before the daemon runs (``init``), while the keys
  are locked (the trust root opened degraded), or on a node with no trust root provisioned.

When the daemon next starts with the keys unlocked, ``carry_pending()`` signs every unsigned
record not yet carried into the ledger, each with its place in the unsigned trail
(``details.unsigned_trail``), so the signed ledger ends up holding every act.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from appliance.ledger import Ledger, LedgerError
from appliance.store import Store, utc_now

log = logging.getLogger("pec.audit")

_GENESIS = "0" * 64
CARRIED_KEY = "unsigned_trail"


class AuditError(RuntimeError):
    """The audit trail is not available or a record is malformed."""


@dataclass
class _Trail:
    store: Store
    ledger: Ledger | None
    public_pem: str | None
    carried: int | None = None  # the last unsigned record signed into the ledger, once known


_bound: _Trail | None = None
_bind_lock = threading.Lock()


def bind(store: Store | None, ledger: Ledger | None = None,
         public_pem: str | None = None) -> None:
    """Send records to ``store`` (None unbinds, e.g. when the daemon stops).

    ``ledger``: the signed ledger (with its signer while the keys are unlocked, read-only
    otherwise) and ``public_pem`` the key that verifies it; None on a node without a trust
    root, where the unsigned trail is all there is.
    """
    global _bound
    with _bind_lock:
        _bound = None if store is None else _Trail(store, ledger, public_pem)


def _trail() -> _Trail:
    trail = _bound
    if trail is None:
        raise AuditError("the audit trail is not open (no store bound)")
    return trail


def _store() -> Store:
    return _trail().store


def signing() -> bool:
    """Whether records are signed now (False: they go to the unsigned trail)."""
    trail = _bound
    return trail is not None and trail.ledger is not None and trail.ledger.signer is not None


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
    trail = _trail()
    if trail.ledger is not None and trail.ledger.signer is not None:
        try:
            return trail.ledger.append(actor, action, object, details).to_json()
        except LedgerError as exc:
            raise AuditError(str(exc)) from exc
        except Exception as exc:  # the HSM failed to sign: keep the record, unsigned
            log.error("signing audit record %s failed (%s); kept in the unsigned trail",
                      action, exc)
    return _record_unsigned(trail.store, actor, action, object, details)


def _record_unsigned(store: Store, actor: str, action: str, object: str,
                     details: dict[str, Any]) -> dict:
    try:
        details_json = json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit record details must be JSON: {exc}") from exc
    with store.transaction() as db:
        last = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq = (last["seq"] if last else 0) + 1
        prev_hash = last["hash"] if last and last["hash"] else _GENESIS
        rec = {"seq": seq, "time": utc_now(), "actor": actor, "action": action,
               "object": object, "details": json.loads(details_json)}
        rec["prev_hash"] = prev_hash
        rec["hash"] = _digest(prev_hash, rec)
        db.execute(
            "INSERT INTO events (seq, time, actor, action, object, details, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, rec["time"], actor, action, object, details_json, prev_hash, rec["hash"]),
        )
    rec["signature"] = None
    return rec


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["details"] = json.loads(out["details"])
    out["signature"] = None
    return out


def records(
    *, offset: int = 0, limit: int = 50, actor: str | None = None, action: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """A page of records, newest first, and the total that match the filter: the signed
    ledger's where the node has one, else the unsigned trail's."""
    trail = _trail()
    if trail.ledger is not None:
        try:
            page, total = trail.ledger.list(offset=offset, limit=limit, actor=actor,
                                            action=action, newest_first=True)
        except LedgerError as exc:
            raise AuditError(str(exc)) from exc
        return [r.to_json() for r in page], total
    rows, total = trail.store.page("events", {"actor": actor or None, "action": action or None},
                                   order_by="seq DESC", limit=limit, offset=offset)
    return [_row(r) for r in rows], total


def _carried_up_to(trail: _Trail) -> int:
    """The last unsigned record already signed into the ledger (0: none). Read from the
    ledger itself, so that a carry cut short by a crash resumes where it stopped; once per
    binding, as it scans the ledger."""
    if trail.carried is None:
        row = trail.store.query(
            "SELECT MAX(json_extract(details, '$.unsigned_trail.seq')) FROM audit_ledger"
        )[0]
        trail.carried = int(row[0] or 0)
    return trail.carried


def pending() -> int:
    """Unsigned records not yet carried into the signed ledger (0 without a ledger)."""
    trail = _trail()
    if trail.ledger is None:
        return 0
    return trail.store.query("SELECT COUNT(*) FROM events WHERE seq > ?",
                             (_carried_up_to(trail),))[0][0]


def carry_pending() -> int:
    """Sign the unsigned records not yet in the ledger into it, oldest first; returns how
    many. A no-op while the keys are locked."""
    trail = _trail()
    if not signing():
        return 0
    assert trail.ledger is not None
    start = _carried_up_to(trail)
    rows = [_row(r) for r in trail.store.query(
        "SELECT * FROM events WHERE seq > ? ORDER BY seq", (start,))]
    if not rows:
        return 0
    chain = verify_unsigned()
    trail.ledger.append("system", "audit.carry", "audit:unsigned_trail", {
        "from_seq": rows[0]["seq"], "to_seq": rows[-1]["seq"], "unsigned_trail_ok": chain["ok"],
        "reason": chain["reason"]})
    for rec in rows:
        details = {**rec["details"], CARRIED_KEY: {"seq": rec["seq"], "time": rec["time"],
                                                   "hash": rec["hash"]}}
        trail.ledger.append(rec["actor"], rec["action"], rec["object"], details)
        trail.carried = rec["seq"]
    return len(rows)


def verify_unsigned() -> dict[str, Any]:
    """Walk the unsigned trail's chain: {"ok", "first_bad", "reason"}."""
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


def verify() -> dict[str, Any]:
    """{"ok", "first_bad", "reason"}: the signed ledger (chain and signatures) where the node
    has one, then the unsigned trail's chain; a failure of the latter says so in the reason."""
    trail = _trail()
    if trail.ledger is not None and trail.public_pem is not None:
        try:
            result = trail.ledger.verify(trail.public_pem).to_json()
        except LedgerError as exc:
            raise AuditError(str(exc)) from exc
        if not result["ok"]:
            return result
    unsigned = verify_unsigned()
    if not unsigned["ok"] and trail.ledger is not None:
        unsigned["reason"] = f"unsigned trail: {unsigned['reason']}"
    return unsigned
