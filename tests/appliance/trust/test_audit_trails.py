"""The audit trail's two tables: the signed ledger (real SoftHSM2 key) and the unsigned trail
that keeps records while no signer exists, then gets signed in."""

import sqlite3

import pytest

from appliance.state.store import Store
from appliance.trust import audit
from appliance.trust.ledger import Ledger
from hsm import SOFTHSM2_MODULE, Keystore, create_softhsm_token


@pytest.fixture
def keystore(tmp_path):
    conf = create_softhsm_token(tmp_path / "hsm", "pec", "so-pin-0000", "user-pin-0000")
    ks = Keystore.open(SOFTHSM2_MODULE, "pec", "user-pin-0000", config=conf, create_keys=True)
    yield ks
    ks.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "pec.db")
    yield s
    audit.bind(None)
    s.close()


def test_unsigned_records_are_signed_in_when_a_signer_comes(store, keystore, tmp_path):
    audit.bind(store)  # as during init: no trust root open
    audit.record("cli", "node.init", "node:x")
    audit.record("cli", "user.create", "user:admin", {"role": "admin"})
    with Ledger(tmp_path / "pec.db") as locked:  # keys locked: the ledger is read-only
        audit.bind(store, locked, keystore.public_key_pem())
        assert not audit.signing()
        rec = audit.record("admin", "panel.login", "session")
        assert rec["signature"] is None
        assert audit.pending() == 3 and audit.carry_pending() == 0
        assert audit.records()[1] == 0  # nothing signed yet
    with Ledger(tmp_path / "pec.db", signer=keystore) as ledger:
        audit.bind(store, ledger, keystore.public_key_pem())
        assert audit.carry_pending() == 3
        assert audit.pending() == 0 and audit.carry_pending() == 0  # carried once only
        records, total = audit.records(limit=10)
        assert total == 4 and [r["action"] for r in reversed(records)] == [
            "audit.carry", "node.init", "user.create", "panel.login"]
        assert records[0]["details"]["unsigned_trail"]["seq"] == 3
        assert records[-1]["details"] == {"from_seq": 1, "to_seq": 3,
                                          "unsigned_trail_ok": True, "reason": None}
        assert all(r["signature"] for r in records)
        signed = audit.record("admin", "panel.logout", "session")
        assert signed["seq"] == 5 and signed["signature"]
        result = audit.verify()
        assert (result["ok"], result["first_bad"], result["reason"]) == (True, None, None)
        assert result["signed"]["head"] == {"seq": 5, "hash": signed["hash"]}
        assert result["unsigned"]["records"] == 3 and result["unsigned"]["pending"] == 0
        # a fresh binding (the next daemon start) finds the carried position in the ledger
        audit.bind(store, ledger, keystore.public_key_pem())
        assert audit.pending() == 0


def test_a_tampered_unsigned_trail_is_reported(store, keystore, tmp_path):
    audit.bind(store)
    for i in range(3):
        audit.record("cli", "thing.do", f"thing:{i}")
    with sqlite3.connect(tmp_path / "pec.db") as db:
        db.execute("UPDATE events SET actor='mallory' WHERE seq=2")
    with Ledger(tmp_path / "pec.db", signer=keystore) as ledger:
        audit.bind(store, ledger, keystore.public_key_pem())
        result = audit.verify()
        assert result["ok"] is False and result["first_bad"] == 2
        assert result["reason"].startswith("unsigned trail: record 2 was altered")
        assert result["signed"]["ok"] is True and result["unsigned"]["first_bad"] == 2
        # found when bound: nothing is carried onto the broken trail until acknowledged
        assert "unsigned trail BROKEN at record 2" in audit.problems()[0]
        assert audit.carry_pending() == 0
        audit.acknowledge_break("unix:root", "test: edited on purpose")
        carry = audit.records(action="audit.carry")[0][0]
        assert carry["details"]["unsigned_trail_ok"] is False
        assert "record 2" in carry["details"]["reason"]


def test_a_signing_failure_keeps_the_record_unsigned(store, keystore, tmp_path):
    with Ledger(tmp_path / "pec.db", signer=keystore) as ledger:
        audit.bind(store, ledger, keystore.public_key_pem())
        audit.record("admin", "settings.change", "settings", {"a": 1})
        keystore.close()  # the HSM session is gone: signing raises
        kept = audit.record("admin", "settings.change", "settings", {"a": 2})
        assert kept["signature"] is None and kept["details"] == {"a": 2}
        assert audit.pending() == 1
        assert audit.records()[1] == 1
    with pytest.raises(audit.AuditError, match="details"):
        audit.bind(store)
        audit.record("admin", "x.y", "z", {"bad": object()})


def test_unsigned_trail_hashes_stored_bytes_and_keeps_legacy_rows(store, tmp_path):
    import hashlib
    import json

    audit.bind(store)
    # a row as the earlier code wrote it: json.dumps(details) stored, canonical form hashed
    details = {"z": 1, "a": "x"}
    canonical = json.dumps(["0" * 64, 1, "t", "cli", "node.init", "node:x", details],
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    with store.transaction() as db:
        db.execute("INSERT INTO events (seq, time, actor, action, object, details, prev_hash, "
                   "hash) VALUES (1, 't', 'cli', 'node.init', 'node:x', ?, ?, ?)",
                   (json.dumps(details), "0" * 64, hashlib.sha256(canonical.encode()).hexdigest()))
    audit.record("cli", "user.create", "user:admin", {"role": "admin", "b": 2})
    assert store.query("SELECT details FROM events WHERE seq=2")[0][0] == '{"b":2,"role":"admin"}'
    assert audit.verify()["ok"] is True
    with store.transaction() as db:
        db.execute("""UPDATE events SET details='{"b":2,"role":"auditor","role":"admin"}'
                   WHERE seq=2""")
    result = audit.verify()
    assert (result["ok"], result["first_bad"]) == (False, 2)
    assert "duplicate key 'role'" in result["reason"]


def test_a_break_found_at_bind_refuses_changes_until_acknowledged(store, keystore, tmp_path):
    with Ledger(tmp_path / "pec.db", signer=keystore) as ledger:
        audit.bind(store, ledger, keystore.public_key_pem())
        for i in range(3):
            audit.record("unix:root", "settings.change", "settings", {"n": i})
        assert audit.problems() == [] and audit.refusing() is None
        with sqlite3.connect(tmp_path / "pec.db") as db:
            db.execute("UPDATE audit_ledger SET details='{\"n\":9}' WHERE seq=2")
        audit.bind(store, ledger, keystore.public_key_pem())  # the next daemon start
        assert "signed ledger BROKEN at record 2" in audit.problems()[0]
        assert "acknowledge-break" in audit.refusing()
        with pytest.raises(audit.AuditBroken, match="broken at record 2"):
            audit.record("unix:root", "user.create", "user:eve", {})
        # the daemon's own bookkeeping goes on, marked with the break it follows
        marked = audit.record("system", "job.done", "job:1", {})
        assert marked["details"]["chain_break_unacknowledged"]["first_bad"] == 2
        with pytest.raises(audit.AuditError, match="why the break is accepted"):
            audit.acknowledge_break("unix:root", " ")
        ack = audit.acknowledge_break("unix:root", "restored record 2 from backup: no")
        assert ack["action"] == "audit.break_acknowledged" and ack["signature"]
        assert ack["details"]["first_bad"] == 2 and audit.refusing() is None
        assert "acknowledged by unix:root" in audit.problems()[0]
        assert audit.record("unix:root", "user.create", "user:eve", {})["seq"] == 6
        assert audit.verify()["ok"] is False  # verification keeps reporting the break
        audit.bind(store, ledger, keystore.public_key_pem())  # and a restart remembers the ack
        assert audit.refusing() is None and "acknowledged" in audit.problems()[0]
