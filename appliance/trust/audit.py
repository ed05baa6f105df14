"""The audit trail: every administrative act goes through ``record()``.

Two trails, one entry point:

- the **signed ledger** (``appliance.trust.ledger``, table ``audit_ledger``): hash-chained and each
  record signed by the HSM key; where records go whenever the trust root's keys are unlocked;
- the **unsigned trail** (the store's ``events`` table): hash-chained but unsigned, so it finds
  an edited, deleted or reordered record only against someone who cannot recompute hashes.
  Records go here while no signer exists: before the daemon runs (``init``), while the keys
  are locked (the trust root opened degraded), or on a node with no trust root provisioned.

When the daemon next starts with the keys unlocked, ``carry_pending()`` signs every unsigned
record not yet carried into the ledger, each with its place in the unsigned trail
(``details.unsigned_trail``), so the signed ledger ends up holding every act.

Both trails store ``details`` as canonical JSON (sorted keys, no whitespace, UTF-8) and hash
exactly those bytes. Binding checks both chains: a break is logged, reported by
``problems()`` (the daemon's status), and, until an administrator acknowledges it
(``acknowledge_break``), nothing but the daemon's own bookkeeping is appended, and that marked
with the break it follows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError
from appliance.state.store import Store, utc_now
from appliance.trust.ledger import (
    EMPTY_HEAD,
    Head,
    Ledger,
    LedgerError,
    NonCanonical,
    canonical_details,
    parse_stored,
)

log = logging.getLogger("pec.audit")

_GENESIS = "0" * 64
CARRIED_KEY = "unsigned_trail"
SIGNED, UNSIGNED = "signed ledger", "unsigned trail"
ACK_ACTION = "audit.break_acknowledged"
SYSTEM = "system"  # the daemon's own bookkeeping (jobs ending, recovery, carrying)


class AuditError(ApplianceError, RuntimeError):
    """The audit trail is not available or a record is malformed."""


class AuditBroken(AuditError):
    """A trail's chain is broken and no administrator has acknowledged it yet."""

    # the request conflicts with the trail's state until an administrator acknowledges
    status = 409


@dataclass
class _Trail:
    store: Store
    ledger: Ledger | None
    public_pem: str | None
    carried: int | None = None  # the last unsigned record signed into the ledger, once known
    broken: dict[str, Any] | None = None  # the first break found at bind time
    acknowledged: dict[str, Any] | None = None  # the record that acknowledged it


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
    trail = None if store is None else _Trail(store, ledger, public_pem)
    if trail is not None:
        _check_at_bind(trail)
    with _bind_lock:
        _bound = trail


def _check_at_bind(trail: _Trail) -> None:
    """Walk both chains once (the daemon binds at start); remember and log a break, and
    whether an administrator acknowledged it in an earlier run."""
    # without a key (none recorded) only the unsigned trail can be judged here
    result = check(trail.store, trail.ledger if trail.public_pem else None, trail.public_pem)
    for name in ("signed", "unsigned"):
        part = result[name]
        if part is None or part["ok"]:
            continue
        trail.broken = {"trail": part["trail"], "first_bad": part["first_bad"],
                        "reason": part["reason"]}
        trail.acknowledged = _find_ack(trail, trail.broken)
        log.error("audit %s is BROKEN: %s%s", part["trail"], part["reason"],
                  "" if trail.acknowledged is None else
                  f" (acknowledged by {trail.acknowledged['actor']})")
        return


def _find_ack(trail: _Trail, broken: dict[str, Any]) -> dict[str, Any] | None:
    tables = ["events"] + (["audit_ledger"] if trail.ledger is not None else [])
    for table in tables:
        rows = trail.store.query(
            f"SELECT seq, actor, details FROM {table} WHERE action = ? "
            "ORDER BY seq DESC", (ACK_ACTION,))
        for row in rows:
            try:
                details = json.loads(row["details"])
            except ValueError:
                continue
            if (details.get("trail"), details.get("first_bad")) == (
                    broken["trail"], broken["first_bad"]):
                return {"table": table, "seq": row["seq"], "actor": row["actor"]}
    return None


def problems() -> list[str]:
    """Degraded reasons for the daemon's status: a broken chain, acknowledged or not."""
    trail = _bound
    if trail is None or trail.broken is None:
        return []
    b = trail.broken
    if trail.acknowledged is None:
        return [f"audit {b['trail']} BROKEN at record {b['first_bad']}: {b['reason']}; "
                "changes are refused until an administrator runs `pec-appliance audit "
                "acknowledge-break --reason TEXT`"]
    return [f"audit {b['trail']} BROKEN at record {b['first_bad']}: {b['reason']} "
            f"(acknowledged by {trail.acknowledged['actor']}; verification keeps failing)"]


def refusing() -> str | None:
    """Why changes are refused now (an unacknowledged break), or None."""
    trail = _bound
    if trail is None or trail.broken is None or trail.acknowledged is not None:
        return None
    b = trail.broken
    return (f"the audit {b['trail']} is broken at record {b['first_bad']} ({b['reason']}); "
            "no change is made until an administrator acknowledges the break: "
            "pec-appliance audit acknowledge-break --reason TEXT")


def acknowledge_break(actor: str, reason: str) -> dict[str, Any]:
    """Append the record that acknowledges the current break, naming who and why; appends are
    accepted again afterwards (verification still reports the break)."""
    trail = _trail()
    if trail.broken is None:
        raise AuditError("no audit trail is broken: nothing to acknowledge")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
        raise AuditError("field 'reason' must say, in 1..1000 characters, why the break is "
                         "accepted (what happened, who checked)")
    if trail.acknowledged is not None:
        raise AuditError(f"the break is already acknowledged by {trail.acknowledged['actor']}")
    rec = _append(trail, actor, ACK_ACTION, f"audit:{trail.broken['trail'].replace(' ', '_')}",
                  {**trail.broken, "note": reason.strip()})
    trail.acknowledged = {"table": "audit_ledger" if rec["signature"] else "events",
                          "seq": rec["seq"], "actor": actor}
    log.warning("audit break at %s record %s acknowledged by %s: %s", trail.broken["trail"],
                trail.broken["first_bad"], actor, reason.strip())
    carry_pending()  # records that waited for the acknowledgement are signed in now
    return rec


def local_actor() -> str:
    """This process's Unix user as an actor, for acts done on the state directory directly
    (the daemon stopped): the name the daemon would give the same user on its socket."""
    import pwd

    try:
        return f"unix:{pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"unix:uid {os.geteuid()}"


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


def _digest(prev_hash: str, seq: int, time: str, actor: str, action: str, obj: str,
            details_json: str) -> str:
    """SHA-256 over ``[prev_hash, seq, time, actor, action, object, details]`` with the stored
    details bytes spliced in as they are (see ``appliance.trust.ledger.record_hash``)."""
    def enc(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    message = (f"[{enc(prev_hash)},{enc(seq)},{enc(time)},{enc(actor)},{enc(action)},"
               f"{enc(obj)},{details_json}]")
    return hashlib.sha256(message.encode()).hexdigest()


def _legacy_details(value: Any) -> str:
    # Earlier versions stored json.dumps(details) and hashed the canonical re-serialisation;
    # such a row is accepted only in exactly that form, and hashed as they hashed it.
    return json.dumps(value, allow_nan=False)


def record(actor: str, action: str, object: str, details: dict[str, Any] | None = None) -> dict:
    """Append one record and return it as served by ``/v1/audit``."""
    for name, value in (("actor", actor), ("action", action), ("object", object)):
        if not isinstance(value, str) or not value.strip():
            raise AuditError(f"audit record needs a non-empty string {name}")
    details = {} if details is None else details
    if not isinstance(details, dict):
        raise AuditError("audit record details must be an object")
    trail = _trail()
    if trail.broken is not None and trail.acknowledged is None:
        if actor != SYSTEM:
            raise AuditBroken(refusing() or "the audit trail is broken")
        # the daemon's own bookkeeping (a job ending) goes on, marked with the break it
        # follows, so the record is neither lost nor silently chained on
        details = {**details, "chain_break_unacknowledged": dict(trail.broken)}
    return _append(trail, actor, action, object, details)


def _append(trail: _Trail, actor: str, action: str, object: str,
            details: dict[str, Any]) -> dict[str, Any]:
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
        details_json = canonical_details(details)
    except LedgerError as exc:
        raise AuditError(f"audit record details must be JSON: {exc}") from exc
    with store.transaction() as db:
        last = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq = (last["seq"] if last else 0) + 1
        prev_hash = last["hash"] if last and last["hash"] else _GENESIS
        rec = {"seq": seq, "time": utc_now(), "actor": actor, "action": action,
               "object": object, "details": json.loads(details_json)}
        rec["prev_hash"] = prev_hash
        rec["hash"] = _digest(prev_hash, seq, rec["time"], actor, action, object, details_json)
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
        trail.carried = _carried_in(trail.store)
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
    if not signing() or refusing() is not None:
        return 0  # a broken chain is extended only once an administrator acknowledged it
    assert trail.ledger is not None
    start = _carried_up_to(trail)
    rows = [_row(r) for r in trail.store.query(
        "SELECT * FROM events WHERE seq > ? ORDER BY seq", (start,))]
    if not rows:
        return 0
    chain = verify_unsigned(trail.store)
    trail.ledger.append(SYSTEM, "audit.carry", "audit:unsigned_trail", {
        "from_seq": rows[0]["seq"], "to_seq": rows[-1]["seq"], "unsigned_trail_ok": chain["ok"],
        "reason": chain["reason"]})
    for rec in rows:
        details = {**rec["details"], CARRIED_KEY: {"seq": rec["seq"], "time": rec["time"],
                                                   "hash": rec["hash"]}}
        trail.ledger.append(rec["actor"], rec["action"], rec["object"], details)
        trail.carried = rec["seq"]
    return len(rows)


def verify_unsigned(store: Store | None = None) -> dict[str, Any]:
    """Walk the unsigned trail's chain: {"trail", "ok", "first_bad", "reason", "records",
    "head"}."""
    rows = (store or _store()).query("SELECT * FROM events ORDER BY seq")

    def bad(at: int, reason: str) -> dict[str, Any]:
        return {"trail": UNSIGNED, "ok": False, "first_bad": at, "reason": reason,
                "records": len(rows), "head": head.to_json() if head.seq else None}

    prev_hash, expected_seq, head = _GENESIS, 1, EMPTY_HEAD
    for row in rows:
        seq = row["seq"]
        if seq != expected_seq:
            return bad(expected_seq, f"record {expected_seq} is missing (next is {seq})")
        if row["prev_hash"] != prev_hash:
            return bad(seq, f"record {seq} does not follow the previous record")
        text = row["details"]
        try:
            value = parse_stored(text, legacy=_legacy_details)
        except NonCanonical as exc:
            return bad(seq, f"record {seq} has details that are not canonical JSON: {exc}")
        if text != canonical_details(value):
            text = canonical_details(value)  # a legacy row: hashed as its writer hashed it
        try:
            digest = _digest(prev_hash, seq, row["time"], row["actor"], row["action"],
                             row["object"], text)
        except (TypeError, ValueError):
            return bad(seq, f"record {seq} has malformed fields")
        if row["hash"] != digest:
            return bad(seq, f"record {seq} was altered (hash mismatch)")
        prev_hash, expected_seq, head = digest, expected_seq + 1, Head(seq, digest)
    return {"trail": UNSIGNED, "ok": True, "first_bad": None, "reason": None,
            "records": len(rows), "head": head.to_json() if head.seq else None}


def check(store: Store, ledger: Ledger | None, key: Any = None,
          expect_head: Head | None = None) -> dict[str, Any]:
    """Verify both trails of ``store``'s database.

    ``key``: a ``LedgerKey`` (``appliance.trust.anchor``) or a bare PEM (trusted as given);
    ``expect_head``: a signed-ledger head kept from earlier (attestation bundle, node card).
    Returns {"ok", "first_bad", "reason", "signed", "unsigned"}: ``signed`` is None on a node
    without a ledger; ``reason`` names the trail that failed first.
    """
    signed = None
    if ledger is not None:
        pem = getattr(key, "pem", key)
        key_json = key.to_json() if hasattr(key, "to_json") else {
            "source": "given", "fingerprint": None, "anchored": False, "problem": None,
            "note": None}
        problem = getattr(key, "problem", None)
        if pem is None and problem is None:
            problem = "no key to verify the signed ledger with"
        if problem is None:
            try:
                signed = ledger.verify(pem, expect_head=expect_head).to_json()
            except LedgerError as exc:
                raise AuditError(str(exc)) from exc
        else:
            signed = {"ok": False, "first_bad": None, "reason": problem, "records": None,
                      "head": None}
        signed = {"trail": SIGNED, **signed, "key": key_json}
    unsigned = verify_unsigned(store)
    if ledger is not None:
        unsigned["pending"] = store.query(
            "SELECT COUNT(*) FROM events WHERE seq > ?", (_carried_in(store),))[0][0]
    first = next((t for t in (signed, unsigned) if t is not None and not t["ok"]), None)
    return {"ok": first is None,
            "first_bad": None if first is None else first["first_bad"],
            "reason": None if first is None else f"{first['trail']}: {first['reason']}",
            "signed": signed, "unsigned": unsigned}


def _carried_in(store: Store) -> int:
    return int(store.query(
        "SELECT MAX(json_extract(details, '$.unsigned_trail.seq')) FROM audit_ledger")[0][0]
        or 0)


def verify(key: Any = None, expect_head: Head | None = None) -> dict[str, Any]:
    """``check`` over the bound trail; ``key`` defaults to the key it was bound with."""
    trail = _trail()
    return check(trail.store, trail.ledger, key if key is not None else trail.public_pem,
                 expect_head)
