"""Peers: the appliances this node has enrolled, what it pinned for each, and their state.

Enrolment verifies a node card (signature, certificate, attestation) and pins what the card
showed: the TLS certificate's fingerprint, the node and attestation keys, the PCR values. Every
later session re-attests against that pin; a quote that no longer matches quarantines the peer
(its jobs are refused) until an admin reinstates it from a fresh card or removes it.

States: ``active`` and ``quarantined``. Only the daemon writes here, through these functions,
and each change is an audit record naming the peer.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping
from typing import Any

from appliance.errors import ApplianceError
from appliance.federation.card import pinned_policy, verify_card
from appliance.state.store import Store, utc_now

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    name TEXT PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE,
    organisation TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    card TEXT NOT NULL,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    auto_accept INTEGER NOT NULL DEFAULT 0,
    last_verdict TEXT,
    last_attested TEXT,
    added_by TEXT NOT NULL,
    added TEXT NOT NULL
);
"""


class PeerError(ApplianceError):
    """A peer request is wrong or refused; `status` is the HTTP status the API answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Peers:
    def __init__(self, store: Store) -> None:
        self.store = store
        with store.transaction() as db:
            db.execute(_SCHEMA)

    # queries
    def list(self) -> list[dict[str, Any]]:
        return [_row(r) for r in self.store.query("SELECT * FROM peers ORDER BY name")]

    def get(self, name: str) -> dict[str, Any]:
        rows = self.store.query("SELECT * FROM peers WHERE name=?", (name,))
        if not rows:
            raise PeerError(f"no peer named {name!r}", 404)
        return _row(rows[0])

    def by_node_id(self, node_id: str) -> dict[str, Any]:
        rows = self.store.query("SELECT * FROM peers WHERE node_id=?", (node_id,))
        if not rows:
            raise PeerError(f"no enrolled peer has node id {node_id!r}", 404)
        return _row(rows[0])

    def by_fingerprint(self, sha256: str) -> dict[str, Any] | None:
        for peer in self.list():
            if peer["policy"]["certificate_sha256"] == sha256:
                return peer
        return None

    # changes
    def add(self, card: Any, name: str, actor: str, own_node_id: str,
            policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Verify `card` (against the peer's golden `policy` when the peer published one) and
        pin it as peer `name`; a refused card names the failed check."""
        if not NAME.match(name or ""):
            raise PeerError("a peer name is 1-32 characters of a-z, 0-9, '-', '_' "
                            "starting with a letter or digit")
        verdict = verify_card(card, policy)
        if not verdict["ok"]:
            raise PeerError(f"card refused: {verdict['reason']}", 422)
        if card["node_id"] == own_node_id:
            raise PeerError("this is this node's own card", 409)
        now = utc_now()
        try:
            with self.store.transaction() as db:
                db.execute(
                    "INSERT INTO peers (name, node_id, organisation, endpoint, card, policy, "
                    "state, last_verdict, last_attested, added_by, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)",
                    (name, card["node_id"], card["organisation"], card["endpoint"],
                     json.dumps(card), json.dumps(pinned_policy(card)), json.dumps(verdict),
                     now, actor, now),
                )
        except sqlite3.IntegrityError:
            other = self.store.query("SELECT name FROM peers WHERE name=? OR node_id=?",
                                     (name, card["node_id"]))
            raise PeerError(f"already enrolled as {other[0]['name']!r} (node id "
                            f"{card['node_id']!r}); remove it first", 409) from None
        return self.get(name)

    def remove(self, name: str) -> dict[str, Any]:
        peer = self.get(name)
        with self.store.transaction() as db:
            db.execute("DELETE FROM peers WHERE name=?", (name,))
        return peer

    def record_attestation(self, name: str, verdict: Mapping[str, Any]) -> dict[str, Any]:
        """Note a session's attestation verdict; a failed one quarantines the peer."""
        with self.store.transaction() as db:
            db.execute("UPDATE peers SET last_verdict=?, last_attested=? WHERE name=?",
                       (json.dumps(dict(verdict)), utc_now(), name))
            if not verdict["ok"]:
                db.execute("UPDATE peers SET state='quarantined', state_reason=? WHERE name=?",
                           (f"attestation failed: {verdict['reason']}", name))
        return self.get(name)

    def reinstate(self, name: str, card: Any) -> dict[str, Any]:
        """An admin's answer to a quarantine: pin the peer anew from a fresh card (the same node
        id, e.g. after a firmware update changed its PCRs)."""
        peer = self.get(name)
        verdict = verify_card(card)
        if not verdict["ok"]:
            raise PeerError(f"card refused: {verdict['reason']}", 422)
        if card["node_id"] != peer["node_id"]:
            raise PeerError(f"the card is for node {card['node_id']!r}, peer {name!r} is "
                            f"{peer['node_id']!r}", 409)
        with self.store.transaction() as db:
            db.execute(
                "UPDATE peers SET card=?, policy=?, endpoint=?, state='active', state_reason='', "
                "last_verdict=?, last_attested=? WHERE name=?",
                (json.dumps(card), json.dumps(pinned_policy(card)), card["endpoint"],
                 json.dumps(verdict), utc_now(), name),
            )
        return self.get(name)

    def approve(self, name: str, accept: bool = True) -> dict[str, Any]:
        """An admin's approval: jobs this peer initiates are accepted without asking again."""
        self.get(name)
        with self.store.transaction() as db:
            db.execute("UPDATE peers SET auto_accept=? WHERE name=?", (int(accept), name))
        return self.get(name)

    def require_active(self, name: str) -> dict[str, Any]:
        peer = self.get(name)
        if peer["state"] != "active":
            raise PeerError(f"peer {name!r} is {peer['state']}: {peer['state_reason']}", 409)
        return peer


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["card"] = json.loads(out["card"])
    out["policy"] = json.loads(out["policy"])
    out["last_verdict"] = json.loads(out["last_verdict"]) if out["last_verdict"] else None
    return out


def summary(peer: Mapping[str, Any]) -> dict[str, Any]:
    """What `peers list` shows: no card body, no keys."""
    verdict = peer.get("last_verdict") or {}
    return {
        "name": peer["name"], "node_id": peer["node_id"], "organisation": peer["organisation"],
        "endpoint": peer["endpoint"], "state": peer["state"],
        "auto_accept": bool(peer["auto_accept"]),
        "state_reason": peer["state_reason"], "last_attested": peer["last_attested"],
        "last_verdict": verdict.get("reason"),
        "certificate_sha256": peer["policy"]["certificate_sha256"],
    }
