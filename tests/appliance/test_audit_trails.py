"""The audit trail's two tables: the signed ledger (real SoftHSM2 key) and the unsigned trail
that keeps records while no signer exists, then gets signed in."""

import sqlite3

import pytest

from appliance import audit
from appliance.ledger import Ledger
from appliance.store import Store
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
        assert audit.verify() == {"ok": True, "first_bad": None, "reason": None}
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
        audit.carry_pending()
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
