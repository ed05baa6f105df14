"""`attest`, `verify-attestation` and `audit verify` as the CLI runs them."""

import argparse
import json
import os
import sqlite3

import pytest

from appliance.ledger import Ledger
from appliance.trust import TrustRoot, provision
from appliance.trust.cli import register
from appliance.trust.layout import TrustLayout


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
    assert code == 0 and json.loads(out) == {"ok": True, "first_bad": None, "reason": None}
    code, out, _ = run(["audit", "verify", "--state-dir", str(state)], capsys)
    assert code == 0 and "5 records" in out

    with sqlite3.connect(layout.db_path) as db:
        db.execute("UPDATE audit_ledger SET object = 'key:x' WHERE seq = 3")
    code, out, _ = run(["audit", "verify", "--state-dir", str(state), "--json"], capsys)
    result = json.loads(out)
    assert code == 1 and result["ok"] is False and result["first_bad"] == 3


def test_audit_verify_without_trust_root(tmp_path, capsys):
    code, _, err = run(["audit", "verify", "--state-dir", str(tmp_path), "--json"], capsys)
    assert code == 2 and "no trust root" in err


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
