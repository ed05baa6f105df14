"""The signed audit ledger against a real SoftHSM2 signing key."""

import sqlite3
import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.trust.ledger import (
    GENESIS_HASH,
    Head,
    Ledger,
    LedgerError,
    LedgerReadOnly,
    record_hash,
)
from hsm import SOFTHSM2_MODULE, Keystore, create_softhsm_token


@pytest.fixture(scope="module")
def keystore(tmp_path_factory):
    # The ledger only signs; one token serves the whole module.
    conf = create_softhsm_token(tmp_path_factory.mktemp("hsm"), "pec", "so-pin-0000",
                                "user-pin-0000")
    ks = Keystore.open(SOFTHSM2_MODULE, "pec", "user-pin-0000", config=conf, create_keys=True)
    yield ks
    ks.close()


@pytest.fixture
def ledger(tmp_path, keystore):
    with Ledger(tmp_path / "pec.db", signer=keystore) as led:
        yield led


@pytest.fixture
def filled(ledger):
    for i in range(1, 7):
        ledger.append(f"user{i % 2}", "job.create" if i % 3 else "login", f"job:{i}", {"i": i})
    return ledger


class OtherKey:
    """A signer holding some other P-256 key: what an attacker without the HSM has."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def public_key_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _db(led):
    return sqlite3.connect(led.db_path, isolation_level=None)


def test_append_chains_and_signs(ledger, keystore):
    a = ledger.append("admin", "login", "session", {"remote": "127.0.0.1"})
    b = ledger.append("admin", "profile.override", "profile", {"profile": "jumbo"})
    assert (a.seq, b.seq) == (1, 2)
    assert a.prev_hash == GENESIS_HASH and b.prev_hash == a.hash
    assert b.hash == record_hash(2, b.time, "admin", "profile.override", "profile",
                                 '{"profile":"jumbo"}', a.hash)
    assert keystore.verify(bytes.fromhex(b.hash), b.signature)
    assert b.time.endswith("Z") and "T" in b.time
    assert ledger.verify(keystore.public_key_pem()).ok


def test_list_filter_and_paging(filled):
    records, total = filled.list(offset=0, limit=2)
    assert total == 6 and [r.seq for r in records] == [1, 2]
    records, total = filled.list(offset=2, limit=2, newest_first=True)
    assert [r.seq for r in records] == [4, 3]
    records, total = filled.list(actor="user1")
    assert total == 3 and all(r.actor == "user1" for r in records)
    records, total = filled.list(action="login")
    assert [r.seq for r in records] == [3, 6]
    assert filled.head().seq == 6
    assert set(records[0].to_json()) == {"seq", "time", "actor", "action", "object", "details",
                                         "prev_hash", "hash", "signature"}


def test_verify_all_good(filled, keystore):
    result = filled.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad, result.reason, result.records) == (True, None, None, 6)


def test_empty_ledger_verifies(ledger, keystore):
    assert ledger.verify(keystore.public_key_pem()).ok


def test_edited_record(filled, keystore):
    with _db(filled) as db:
        db.execute("UPDATE audit_ledger SET details = '{\"i\":99}' WHERE seq = 4")
    result = filled.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad) == (False, 4)
    assert "changed" in result.reason


def test_edited_actor(filled, keystore):
    with _db(filled) as db:
        db.execute("UPDATE audit_ledger SET actor = 'someone' WHERE seq = 2")
    assert filled.verify(keystore.public_key_pem()).first_bad == 2


def test_deleted_record(filled, keystore):
    with _db(filled) as db:
        db.execute("DELETE FROM audit_ledger WHERE seq = 3")
    result = filled.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad) == (False, 3)
    assert "missing" in result.reason


def test_deleted_and_renumbered(filled, keystore):
    with _db(filled) as db:
        db.execute("DELETE FROM audit_ledger WHERE seq = 3")
        db.execute("UPDATE audit_ledger SET seq = seq - 1 WHERE seq > 3")
    assert filled.verify(keystore.public_key_pem()).first_bad == 3


def test_reordered_records(filled, keystore):
    with _db(filled) as db:
        db.execute("UPDATE audit_ledger SET seq = -1 WHERE seq = 2")
        db.execute("UPDATE audit_ledger SET seq = 2 WHERE seq = 5")
        db.execute("UPDATE audit_ledger SET seq = 5 WHERE seq = -1")
    result = filled.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad) == (False, 2)


def test_rewritten_and_resigned_with_another_key(filled, keystore):
    # The attacker edits record 4 and rebuilds the chain from there, signing with their key.
    attacker = OtherKey()
    with _db(filled) as db:
        rows = db.execute("SELECT * FROM audit_ledger WHERE seq >= 4 ORDER BY seq").fetchall()
        prev = db.execute("SELECT hash FROM audit_ledger WHERE seq = 3").fetchone()[0]
        for seq, time, actor, action, obj, details, _, _, _ in rows:
            if seq == 4:
                details = '{"i":-4}'
            digest = record_hash(seq, time, actor, action, obj, details, prev)
            db.execute("UPDATE audit_ledger SET details=?, prev_hash=?, hash=?, signature=? "
                       "WHERE seq=?", (details, prev, digest,
                                       attacker.sign(bytes.fromhex(digest)), seq))
            prev = digest
    result = filled.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad) == (False, 4)
    assert "not signed by the appliance key" in result.reason
    # Against the attacker's key the rewritten tail holds, but the untouched head does not.
    assert filled.verify(attacker.public_key_pem()).first_bad == 1


def test_verify_with_wrong_public_key(filled):
    assert filled.verify(OtherKey().public_key_pem()).first_bad == 1


def test_concurrent_appends_keep_one_chain(ledger, keystore):
    def writer(n):
        for i in range(10):
            ledger.append(f"w{n}", "tick", str(i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = ledger.verify(keystore.public_key_pem())
    assert result.ok and result.records == 40


def test_two_connections_share_the_chain(tmp_path, ledger, keystore):
    ledger.append("a", "one")
    with Ledger(ledger.db_path, signer=keystore) as second:
        second.append("b", "two")
    ledger.append("a", "three")
    result = ledger.verify(keystore.public_key_pem())
    assert result.ok and result.records == 3


def test_read_only_without_signer(filled, keystore):
    with Ledger(filled.db_path) as ro:
        assert ro.verify(keystore.public_key_pem()).ok
        with pytest.raises(LedgerReadOnly, match="HSM locked"):
            ro.append("admin", "login")


@pytest.mark.parametrize("args,match", [
    (("", "login"), "must not be empty"),
    (("admin", ""), "must not be empty"),
    ((1, "login"), "actor must be a string"),
    (("admin", "login", "o", ["list"]), "details must be a JSON object"),
    (("admin", "login", "o", {"x": float("nan")}), "JSON-serialisable"),
    (("admin", "login", "o", {"x": object()}), "JSON-serialisable"),
    (("a" * 2000, "login"), "longer than"),
])
def test_bad_input(ledger, keystore, args, match):
    with pytest.raises(LedgerError, match=match):
        ledger.append(*args)
    assert ledger.list()[1] == 0  # nothing half-written


def test_failed_signature_writes_nothing(tmp_path):
    class Broken(OtherKey):
        def sign(self, data):
            raise RuntimeError("token removed")

    with Ledger(tmp_path / "x.db", signer=Broken()) as led:
        with pytest.raises(RuntimeError):
            led.append("a", "b")
        assert led.list()[1] == 0


def test_bad_paging_and_key(ledger):
    with pytest.raises(LedgerError):
        ledger.list(limit=0)
    with pytest.raises(LedgerError):
        ledger.list(offset=-1)
    with pytest.raises(LedgerError, match="PEM"):
        ledger.verify("nonsense")


def test_duplicate_keys_are_refused_naming_the_record(ledger, keystore):
    """json.loads keeps the last of two equal keys, so a hash over re-parsed JSON let a row
    say two things; the hash now covers the stored bytes and verify refuses such rows."""
    ledger.append("admin", "login", "session", {"remote": "127.0.0.1"})
    ledger.append("admin", "logout", "session", {})
    with _db(ledger) as db:
        db.execute("""UPDATE audit_ledger SET details = '{"remote":"10.6.6.6","remote":"127.0.0.1"}'
                   WHERE seq = 1""")
    result = ledger.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad) == (False, 1)
    assert "record 1" in result.reason and "duplicate key 'remote'" in result.reason


@pytest.mark.parametrize("stored", ['{"i": 4}', '{ "i":4}', '{"i":4}\n'])
def test_non_canonical_details_are_refused(filled, keystore, stored):
    with _db(filled) as db:
        db.execute("UPDATE audit_ledger SET details = ? WHERE seq = 4", (stored,))
    result = filled.verify(keystore.public_key_pem())
    assert (result.ok, result.first_bad) == (False, 4)
    assert "not canonical JSON" in result.reason


def test_hash_is_over_the_stored_bytes_and_matches_earlier_records(ledger):
    import hashlib
    import json

    rec = ledger.append("ädmin", "login", "session", {"b": [1, "é"], "a": {"y": 1, "x": None}})
    stored = '{"a":{"x":null,"y":1},"b":[1,"é"]}'
    assert ledger.list()[0][0].details == {"a": {"x": None, "y": 1}, "b": [1, "é"]}
    message = f'[1,"{rec.time}","ädmin","login","session",{stored},"{GENESIS_HASH}"]'
    assert rec.hash == hashlib.sha256(message.encode()).hexdigest()
    # what the earlier versions hashed (the canonical re-serialisation): identical bytes, so
    # their ledgers keep verifying
    earlier = json.dumps([1, rec.time, "ädmin", "login", "session", json.loads(stored),
                          GENESIS_HASH], sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False)
    assert earlier == message


def test_verify_reports_the_head_and_an_expected_head(filled, keystore):
    pem = keystore.public_key_pem()
    result = filled.verify(pem)
    head = filled.head()
    assert result.head == Head(6, head.hash) and result.to_json()["head"] == {
        "seq": 6, "hash": head.hash}
    assert filled.verify(pem, expect_head=Head.parse(str(result.head))).ok
    with _db(filled) as db:
        db.execute("DELETE FROM audit_ledger WHERE seq >= 5")
    assert filled.verify(pem).ok  # a shorter chain is valid on its own
    cut = filled.verify(pem, expect_head=result.head)
    assert (cut.ok, cut.first_bad) == (False, 6) and "cut from the end" in cut.reason
    other = filled.verify(pem, expect_head=Head(3, "ab" * 32))
    assert (other.ok, other.first_bad) == (False, 3) and "rewritten" in other.reason
    with pytest.raises(ValueError, match="SEQ:HASH"):
        Head.parse("6")
