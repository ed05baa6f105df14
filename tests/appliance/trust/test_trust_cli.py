"""`attest`, `verify-attestation` and `audit verify` as the CLI runs them."""

import argparse
import json
import os
import shutil
import sqlite3

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.state.store import Store
from appliance.trust import TrustRoot, audit, provision
from appliance.trust.anchor import fingerprint_pem
from appliance.trust.cli import register
from appliance.trust.layout import TrustLayout
from appliance.trust.ledger import Ledger, record_hash


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="pec-appliance")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def state(tmp_path):
    provision(tmp_path / "state")
    return tmp_path / "state"


def test_attest_then_verify_offline(state, tmp_path, capsys):
    nonce = os.urandom(16).hex()
    code, out, _ = run(["attest", "--nonce", nonce, "--state-dir", str(state)], capsys)
    assert code == 0
    bundle = json.loads(out)
    assert bundle["nonce"] == nonce
    (tmp_path / "bundle.json").write_text(out)
    golden = str(TrustLayout(state).golden_pcrs)
    code, out, _ = run(["verify-attestation", str(tmp_path / "bundle.json"), "--policy", golden,
                        "--nonce", nonce], capsys)
    assert code == 0 and json.loads(out)["ok"] is True

    bundle["pcrs"]["14"] = "11" * 32
    (tmp_path / "bad.json").write_text(json.dumps(bundle))
    code, out, _ = run(["verify-attestation", str(tmp_path / "bad.json"), "--policy", golden],
                       capsys)
    assert code == 1 and json.loads(out)["ok"] is False


def test_verify_attestation_bad_files(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{not json")
    code, _, err = run(["verify-attestation", str(tmp_path / "x.json"), "--policy",
                        str(tmp_path / "x.json")], capsys)
    assert code == 2 and "not JSON" in err
    code, _, err = run(["verify-attestation", str(tmp_path / "none.json"), "--policy",
                        str(tmp_path / "x.json")], capsys)
    assert code == 2 and "cannot read" in err


def test_attest_bad_nonce(state, capsys):
    code, _, err = run(["attest", "--nonce", "xyz", "--state-dir", str(state)], capsys)
    assert code == 2 and "hex" in err


def test_attest_unprovisioned(tmp_path, capsys):
    code, _, err = run(["attest", "--nonce", "00" * 16, "--state-dir", str(tmp_path)], capsys)
    assert code == 2 and "not provisioned" in err


def test_audit_verify(state, capsys):
    layout = TrustLayout(state)
    with TrustRoot.open(state) as root, Ledger(layout.db_path, signer=root.signer) as led:
        for i in range(5):
            led.append("admin", "key.create", f"key:{i}", {"bits": 2048})
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and (result["ok"], result["first_bad"], result["reason"]) == (
        True, None, None)
    code, out, _ = run(["audit", "verify", "--state-dir", str(state)], capsys)
    assert code == 0 and "signed ledger OK: 5 records" in out

    with sqlite3.connect(layout.db_path) as db:
        db.execute("UPDATE audit_ledger SET object = 'key:x' WHERE seq = 3")
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--json"], capsys)
    result = json.loads(out)
    assert code == 1 and result["ok"] is False and result["first_bad"] == 3


def test_audit_verify_without_trust_root(tmp_path, capsys):
    code, _, err = run(["audit", "verify", "--state-dir", str(tmp_path), "--json"], capsys)
    assert code == 2 and "no database" in err
    store = Store(tmp_path / "pec.db")
    audit.bind(store)
    audit.record("cli", "node.init", "node:x")
    audit.bind(None)
    store.close()
    code, out, _ = run(["audit", "verify", "--state-dir", str(tmp_path)], capsys)
    assert code == 0 and "signed ledger: none" in out and "unsigned trail OK: 1 records" in out


def test_audit_verify_without_database(state, capsys):
    code, _, err = run(["audit", "verify", "--state-dir", str(state)], capsys)
    assert code == 2 and "no database" in err


def test_wired_into_pec_appliance(state, tmp_path):
    """The real entry point runs the trust commands."""
    import subprocess
    import sys

    layout = TrustLayout(state)
    with TrustRoot.open(state) as root, Ledger(layout.db_path, signer=root.signer) as led:
        led.append("cli", "node.init")
    out = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", "verify", "--state-dir", str(state),
         "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_verify_attestation_needs_no_tpm_or_hsm_bindings(state, tmp_path, capsys):
    """On a peer without libtss2 or a PKCS#11 binding the verifier still runs."""
    import subprocess
    import sys

    nonce = os.urandom(16).hex()
    code, out, _ = run(["attest", "--nonce", nonce, "--state-dir", str(state)], capsys)
    assert code == 0
    (tmp_path / "bundle.json").write_text(out)
    script = (
        "import sys\n"
        "for name in ('pkcs11', 'tpm2_pytss', 'hsm', 'tee.tpm'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        "from appliance.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "verify-attestation", str(tmp_path / "bundle.json"),
         "--policy", str(TrustLayout(state).golden_pcrs), "--nonce", nonce],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True


def _unsigned_records(state, n):
    store = Store(TrustLayout(state).db_path)
    audit.bind(store)  # as during init: the daemon has not run, nothing signs
    for i in range(n):
        audit.record("cli", "thing.do", f"thing:{i}", {"i": i})
    audit.bind(None)
    store.close()


def test_audit_verify_checks_the_unsigned_trail_too(state, capsys):
    """Right after init every record is in the unsigned trail: an edit there must fail."""
    _unsigned_records(state, 3)
    code, out, _ = run(["audit", "verify", "--state-dir", str(state)], capsys)
    assert code == 0, out
    assert "signed ledger OK" in out and "unsigned trail OK: 3 records" in out
    with sqlite3.connect(TrustLayout(state).db_path) as db:
        db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 2")
    code, out, _ = run(["audit", "verify", "--state-dir", str(state)], capsys)
    assert code == 1 and "unsigned trail BROKEN at record 2" in out
    assert "audit ledger OK" not in out and "audit trails BROKEN" in out
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--json"], capsys)
    result = json.loads(out)
    assert code == 1 and result["ok"] is False and result["first_bad"] == 2
    assert result["signed"]["ok"] is True and result["signed"]["trail"] == "signed ledger"
    assert (result["unsigned"]["trail"], result["unsigned"]["first_bad"]) == (
        "unsigned trail", 2)
    assert result["reason"].startswith("unsigned trail: record 2")


class _OtherKey:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _resign_everything(db_path, key):
    """Rewrite record 2 and re-sign the whole chain with ``key``: all an attacker who cannot
    use the HSM key can do."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT seq, time, actor, action, object, details "
                          "FROM audit_ledger ORDER BY seq").fetchall()
        prev = "0" * 64
        for seq, time_, actor, action, obj, details in rows:
            actor = "nobody" if seq == 2 else actor
            digest = record_hash(seq, time_, actor, action, obj, details, prev)
            db.execute("UPDATE audit_ledger SET actor=?, prev_hash=?, hash=?, signature=? "
                       "WHERE seq=?", (actor, prev, digest,
                                       key.key.sign(bytes.fromhex(digest),
                                                    ec.ECDSA(hashes.SHA256())), seq))
            prev = digest


def test_audit_verify_anchors_the_key_in_the_token_not_trust_json(state, tmp_path, capsys):
    layout = TrustLayout(state)
    with TrustRoot.open(state) as root, Ledger(layout.db_path, signer=root.signer) as led:
        for i in range(4):
            led.append("admin", "key.create", f"key:{i}", {"bits": 2048})
        real_fp = root.ledger_key().fingerprint
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--expect-fingerprint",
                        real_fp], capsys)
    assert code == 0 and f"verification key: {real_fp} from HSM token 'pec'" in out
    assert "NOT anchored" not in out

    attacker = _OtherKey()
    _resign_everything(layout.db_path, attacker)
    info = json.loads(layout.trust_json.read_text())
    info["signing_public_pem"] = attacker.pem
    layout.trust_json.write_text(json.dumps(info))
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--json"], capsys)
    result = json.loads(out)
    assert code == 1 and result["ok"] is False
    reason = result["signed"]["reason"]
    assert result["signed"]["key"]["fingerprint"] == real_fp  # the token's key is used
    assert real_fp in reason and fingerprint_pem(attacker.pem) in reason  # both are named
    assert "HSM token 'pec'" in reason and "trust.json" in reason
    # an offline verifier bringing the attacker's key still meets the token's
    (tmp_path / "attacker.pem").write_text(attacker.pem)
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--pubkey",
                        str(tmp_path / "attacker.pem")], capsys)
    assert code == 1 and "differs" in out
    # and the daemon's path (POST /v1/audit/verify) anchors the same way, keys locked or not
    with TrustRoot.open(state) as root:
        assert root.degraded  # the token's key differs from trust.json: keys stay locked
        key = root.ledger_key()
        assert key.problem and real_fp in key.problem and key.fingerprint == real_fp
        store = Store(layout.db_path)
        try:
            with Ledger(layout.db_path) as led:
                verdict = audit.check(store, led, key)
        finally:
            store.close()
    assert verdict["ok"] is False and real_fp in verdict["reason"]


def test_audit_verify_with_a_pinned_key_offline(state, tmp_path, capsys):
    layout = TrustLayout(state)
    with TrustRoot.open(state) as root, Ledger(layout.db_path, signer=root.signer) as led:
        led.append("admin", "key.create", "key:1", {})
        pem = root.signer.public_key_pem()
    (tmp_path / "node.pem").write_text(pem)
    offline = tmp_path / "copy"
    offline.mkdir()
    shutil.copy(layout.db_path, offline / "pec.db")  # no token, no trust.json: only the db
    code, out, _ = run(["audit", "verify", "--state-dir", str(offline), "--pubkey",
                        str(tmp_path / "node.pem")], capsys)
    assert code == 0 and "signed ledger OK: 1 records" in out
    code, out, _ = run(["audit", "verify", "--state-dir", str(offline), "--pubkey",
                        str(tmp_path / "node.pem"), "--expect-fingerprint", "sha256:" + "0" * 64],
                       capsys)
    assert code == 1 and "is not the expected key" in out


def test_ledger_head_in_bundle_detects_truncation(state, tmp_path, capsys):
    layout = TrustLayout(state)
    with TrustRoot.open(state) as root, Ledger(layout.db_path, signer=root.signer) as led:
        for i in range(5):
            last = led.append("admin", "key.create", f"key:{i}", {})
    nonce = os.urandom(16).hex()
    code, out, _ = run(["attest", "--nonce", nonce, "--state-dir", str(state)], capsys)
    assert code == 0
    bundle = json.loads(out)
    assert bundle["ledger_head"] == {"seq": 5, "hash": last.hash}
    (tmp_path / "bundle.json").write_text(out)
    code, out, _ = run(["verify-attestation", str(tmp_path / "bundle.json"), "--policy",
                        str(layout.golden_pcrs)], capsys)
    assert code == 0 and json.loads(out)["ledger_head"] == {"seq": 5, "hash": last.hash}
    forged = {**bundle, "ledger_head": {"seq": 3, "hash": last.hash}}  # the head is signed
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    code, out, _ = run(["verify-attestation", str(tmp_path / "forged.json"), "--policy",
                        str(layout.golden_pcrs)], capsys)
    assert code == 1 and json.loads(out)["failed_check"] == "node_signature"

    with sqlite3.connect(layout.db_path) as db:
        db.execute("DELETE FROM audit_ledger WHERE seq > 3")
    head = f"{bundle['ledger_head']['seq']}:{bundle['ledger_head']['hash']}"
    code, out, _ = run(["audit", "verify", "--state-dir", str(state)], capsys)
    assert code == 0  # the limit: a shorter chain is valid without a head kept elsewhere
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--expect-head", head,
                        "--json"], capsys)
    result = json.loads(out)
    assert code == 1 and result["signed"]["first_bad"] == 5
    assert "cut from the end" in result["signed"]["reason"]
    code, _, err = run(["audit", "verify", "--state-dir", str(state), "--expect-head", "5:xy"],
                       capsys)
    assert code == 2 and "SEQ:HASH" in err
