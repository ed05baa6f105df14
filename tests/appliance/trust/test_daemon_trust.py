"""The real daemon with its trust root: SoftHSM2 token and swtpm under a temporary state dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.client import DaemonError
from appliance.provision import init_state_dir
from appliance.state.statedir import StateDirError, read_config
from appliance.trust import TrustRoot, audit
from appliance.trust.ledger import record_hash
from tests.appliance import fakehost
from tests.appliance.daemon_proc import (
    ADMIN_PASSWORD,
    Daemon,
    cli,
    seal_pin_to_another_boot_chain,
    swtpm_pid,
)


def _stop(d: Daemon) -> None:
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    assert swtpm_pid(d.state_dir) is None, "the daemon left its swtpm running"


def _keygen(d: Daemon, bits: int = 1024) -> dict:
    job = d.client.post("/v1/jobs", {"kind": "keygen", "params": {"bits": bits}})
    return d.wait_job(job["id"], {"done", "failed"})


def _encodings(value: int) -> list[bytes]:
    size = (value.bit_length() + 7) // 8
    return [str(value).encode(), format(value, "x").encode(), format(value, "X").encode(),
            value.to_bytes(size, "big"), value.to_bytes(size, "little")]


def test_keygen_sealed_listed_rotated_and_p_q_nowhere_on_disk(daemon):
    c = daemon.client
    status = c.get("/v1/status")
    assert status["health"]["hsm"]["ok"] is True and status["health"]["tpm"]["ok"] is True
    assert not any("trust" in r or "audit" in r for r in status["degraded_reasons"])
    metrics = c.get("/metrics")
    assert 'pec_trust_ok{part="hsm"} 1' in metrics and 'pec_trust_ok{part="tpm"} 1' in metrics
    job = _keygen(daemon)
    assert job["state"] == "done", job
    key = job["result"]
    assert set(key) == {"id", "kind", "bits", "fingerprint", "created"}
    assert key["kind"] == "paillier" and key["bits"] == 1024
    listing = c.get("/v1/keys")
    assert listing["token"] == {"label": "pec", "present": True, "mechanisms_ok": True}
    by_id = {k["id"]: k for k in listing["keys"]}
    assert by_id[key["id"]]["fingerprint"] == key["fingerprint"]
    assert {k["kind"] for k in listing["keys"]} >= {"kek", "signing", "paillier"}
    sealed = daemon.state_dir / "keys" / f"{key['id']}.sealed"
    assert sealed.read_bytes()[:4] == b"PECS"
    kek_before = {k["generation"] for k in listing["keys"] if k["kind"] == "kek"}

    tls_blob = daemon.state_dir / "keys" / "interconnect-tls.sealed"
    tls_before = tls_blob.read_bytes()
    rotated = c.post("/v1/keys/rotate-kek", {})
    # the Paillier key and the federation's TLS key, both sealed by the KEK
    assert rotated == {"ok": True, "resealed": 2}
    assert tls_blob.read_bytes() != tls_before and tls_blob.read_bytes()[:4] == b"PECS"
    kek_after = {k["generation"] for k in c.get("/v1/keys")["keys"] if k["kind"] == "kek"}
    assert kek_after == {max(kek_before) + 1}
    actions = {r["action"]: r for r in c.get("/v1/audit", limit=100)["records"]}
    assert {"job.submit", "key.generate", "key.rotate_kek", "job.done"} <= set(actions)
    assert actions["key.generate"]["details"]["fingerprint"] == key["fingerprint"]
    assert all(len(r["signature"]) > 100 for r in actions.values())
    _stop(daemon)

    # The daemon held the TPM; now the test may open the trust root to learn p and q.
    with TrustRoot.open(daemon.state_dir) as root:
        sk = root.private_key(key["id"])
    assert sk.p * sk.q == int(json.loads(
        (daemon.state_dir / "keys" / f"{key['id']}.json").read_text())["n"], 16)
    needles = _encodings(sk.p) + _encodings(sk.q)
    files = [p for p in daemon.state_dir.rglob("*") if p.is_file()]
    assert any(p.name == "pec.db" for p in files) and len(files) > 10
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"a prime of key {key['id']} is in clear in {path}"


def test_quote_and_verify_through_api_and_cli(daemon, tmp_path):
    c = daemon.client
    state = daemon.state_dir
    pcrs = c.get("/v1/attestation/pcrs")
    assert set(pcrs["pcrs"]) == {"0", "1", "2", "3", "4", "5", "7", "14"}
    assert pcrs["match"].pop("1") is None and all(pcrs["match"].values())
    nonce = os.urandom(16).hex()
    bundle = c.post("/v1/attestation/quote", {"nonce": nonce})
    assert bundle["format"] == "pec-attestation/1" and bundle["nonce"] == nonce
    golden = json.loads((state / "golden-pcrs.json").read_text())
    verdict = c.post("/v1/attestation/verify", {"bundle": bundle, "policy": golden["pcrs"]})
    assert verdict["ok"] is True, verdict
    bad_policy = {**golden["pcrs"], "14": "00" * 31 + "01"}
    verdict = c.post("/v1/attestation/verify", {"bundle": bundle, "policy": bad_policy})
    assert verdict["ok"] is False and "14" in verdict["reason"]

    # The CLI asks the running daemon (it owns the TPM) and verifies offline.
    cli_nonce = os.urandom(20).hex()
    made = cli("attest", "--nonce", cli_nonce, "--state-dir", str(state))
    assert made.returncode == 0, made.stderr
    path = tmp_path / "bundle.json"
    path.write_text(made.stdout)
    ok = cli("verify-attestation", str(path), "--policy", str(state / "golden-pcrs.json"),
             "--nonce", cli_nonce)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True, ok.stdout + ok.stderr
    stale = cli("verify-attestation", str(path), "--policy", str(state / "golden-pcrs.json"),
                "--nonce", nonce)
    assert stale.returncode == 1 and "nonce" in json.loads(stale.stdout)["reason"]
    tampered = json.loads(made.stdout)
    tampered["node_id"] = "someone-else"
    path.write_text(json.dumps(tampered))
    bad = cli("verify-attestation", str(path), "--policy", str(state / "golden-pcrs.json"))
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False

    quotes = c.get("/v1/audit", action="attestation.quote")["records"]
    me = audit.local_actor()  # the daemon names callers by their socket credentials
    assert {(r["actor"], r["details"]["nonce"]) for r in quotes} == {
        (me, nonce), (me, cli_nonce)}
    assert c.get("/v1/audit", action="attestation.verify")["total"] == 2


def test_changed_boot_chain_starts_degraded_with_keys_locked(tmp_path):
    d = Daemon(tmp_path / "state", fakehost.mini().build(tmp_path / "root"))
    d.init()
    original = seal_pin_to_another_boot_chain(d.state_dir)
    d.start()
    try:
        c = d.client
        status = c.get("/v1/status")
        assert status["degraded"] and status["health"]["hsm"]["ok"] is False
        assert status["health"]["tpm"]["ok"] is True
        reasons = " | ".join(status["degraded_reasons"])
        assert "refused to unseal the HSM PIN" in reasons and "7, 14" in reasons
        assert "audit ledger read-only" in reasons
        assert 'pec_trust_ok{part="hsm"} 0' in c.get("/metrics")
        assert c.get("/v1/keys")["token"]["present"] is False
        with pytest.raises(DaemonError, match="locked") as err:
            c.post("/v1/attestation/quote", {"nonce": "00" * 16})
        assert err.value.status == 503
        with pytest.raises(DaemonError, match="locked") as err:
            c.post("/v1/keys/rotate-kek", {})
        assert err.value.status == 503
        job = _keygen(d)
        assert job["state"] == "failed" and "locked" in job["error"]
        # Acts go on being recorded, unsigned but chained, and verified as such.
        c.post("/v1/audit/record", {"action": "panel.login",
                                    "object": "session", "details": {}})
        page = c.get("/v1/audit", limit=500)
        assert page["unsigned_pending"] >= 5  # init, provisioning, the job, the login
        assert "panel.login" not in {r["action"] for r in page["records"]}
        assert c.post("/v1/audit/verify")["ok"] is True
        _stop(d)

        # Back on the provisioned boot chain: the keys unlock and the acts are signed in.
        (d.state_dir / "hsm" / "pin.sealed").write_bytes(original)
        d.start()
        status = c.get("/v1/status")
        assert status["health"]["hsm"]["ok"] is True, status
        page = c.get("/v1/audit", limit=500)
        assert page["unsigned_pending"] == 0
        carried = [r for r in page["records"] if "unsigned_trail" in r["details"]]
        assert {"node.init", "trust.provision", "job.submit", "job.failed",
                "panel.login"} <= {r["action"] for r in carried}
        carry = c.get("/v1/audit", action="audit.carry")["records"]
        assert carry and carry[0]["details"]["unsigned_trail_ok"] is True
        assert c.post("/v1/audit/verify")["ok"] is True
        _stop(d)
        verified = cli("audit", "verify", "--state-dir", str(d.state_dir), "--json")
        assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True
    finally:
        d.stop_now()
    assert swtpm_pid(d.state_dir) is None


def _tamper_edit(db):
    db.execute("UPDATE audit_ledger SET details='{\"session_timeout_s\":86400}' WHERE seq=4")
    return 4


def _tamper_delete(db):
    db.execute("DELETE FROM audit_ledger WHERE seq=3")
    return 3


def _tamper_reorder(db):
    db.execute("UPDATE audit_ledger SET seq=-1 WHERE seq=3")
    db.execute("UPDATE audit_ledger SET seq=3 WHERE seq=4")
    db.execute("UPDATE audit_ledger SET seq=4 WHERE seq=-1")
    return 3


def _tamper_resign(db):
    # Rewrite record 3 and chain every later record onto it, signed with another key: only
    # the signatures give it away.
    key = ec.generate_private_key(ec.SECP256R1())
    rows = db.execute("SELECT seq, time, actor, action, object, details, prev_hash "
                      "FROM audit_ledger WHERE seq >= 3 ORDER BY seq").fetchall()
    prev = rows[0][6]
    for seq, time_, actor, action, obj, details, _ in rows:
        if seq == 3:
            actor = "nobody"
        digest = record_hash(seq, time_, actor, action, obj, details, prev)
        signature = key.sign(bytes.fromhex(digest), ec.ECDSA(hashes.SHA256()))
        db.execute("UPDATE audit_ledger SET actor=?, prev_hash=?, hash=?, signature=? "
                   "WHERE seq=?", (actor, prev, digest, signature, seq))
        prev = digest
    return 3


def test_ledger_tampering_is_found_by_the_cli(daemon, tmp_path):
    c = daemon.client
    for timeout in (600, 700, 800):
        c.put("/v1/settings", {"session_timeout_s": timeout})
    assert c.get("/v1/audit")["total"] >= 6
    _stop(daemon)
    state = daemon.state_dir
    good = cli("audit", "verify", "--state-dir", str(state), "--json")
    verdict = json.loads(good.stdout)
    assert good.returncode == 0 and verdict["ok"] is True, verdict
    assert verdict["signed"]["key"]["source"] == "HSM token 'pec'"
    for tamper in (_tamper_edit, _tamper_delete, _tamper_reorder, _tamper_resign):
        copy = tmp_path / tamper.__name__
        shutil.copytree(state, copy)
        with sqlite3.connect(copy / "pec.db") as db:
            expected = tamper(db)
        result = cli("audit", "verify", "--state-dir", str(copy), "--json")
        verdict = json.loads(result.stdout)
        assert result.returncode == 1 and verdict["ok"] is False, (tamper.__name__, verdict)
        assert verdict["first_bad"] == expected, (tamper.__name__, verdict)


def test_sigkill_mid_job_then_restart_with_the_trust_root(tmp_path):
    d = Daemon(tmp_path / "state", fakehost.standard().build(tmp_path / "root"))
    d.init()
    d.start()
    try:
        c = d.client
        long = c.post("/v1/jobs", {"kind": "burnin", "params": {"seconds": 120}})
        d.wait_progress(long["id"], 2)
        tpm_pid = swtpm_pid(d.state_dir)
        assert tpm_pid is not None, "the daemon runs no development TPM"
        d.kill()
        # swtpm dies with the daemon that started it, even one that could not stop it
        deadline = time.monotonic() + 10
        while swtpm_pid(d.state_dir) is not None:
            assert time.monotonic() < deadline, f"swtpm {tpm_pid} outlived the SIGKILLed daemon"
            time.sleep(0.05)
        d.start()  # a stale socket and pid file must not stop the restart
        assert c.get(f"/v1/jobs/{long['id']}")["state"] == "interrupted"
        health = c.get("/v1/status")["health"]
        assert health["hsm"]["ok"] is True and health["tpm"]["ok"] is True, health["tpm"]
        records = c.get("/v1/audit", action="job.interrupted")["records"]
        assert [r["object"] for r in records] == [f"job:{long['id']}"]
        assert records[0]["signature"]
        assert _keygen(d)["state"] == "done"
        assert c.post("/v1/audit/verify")["ok"] is True
        _stop(d)
    finally:
        d.stop_now()
    assert swtpm_pid(d.state_dir) is None


def test_hardware_mode_without_provisioning_is_degraded_and_says_why(tmp_path):
    d = Daemon(tmp_path / "state", fakehost.mini().build(tmp_path / "root"))
    pw = tmp_path / "pw"
    pw.write_text(ADMIN_PASSWORD + "\n")
    made = cli("init", "--state-dir", str(d.state_dir), "--root", str(d.root), "--trust",
               "hardware", "--admin-password-file", str(pw), "--json")
    assert made.returncode == 0, made.stderr
    trust = json.loads(made.stdout)["trust"]
    assert trust["provisioned"] is False and "--hsm-pin-file" in trust["reason"]
    assert read_config(d.state_dir / "config.toml").trust == "hardware"
    assert not (d.state_dir / "trust.json").exists()
    d.start()
    try:
        status = d.client.get("/v1/status")
        assert status["health"]["hsm"] == {"ok": None, "detail": "not provisioned"}
        assert any("trust root not provisioned" in r for r in status["degraded_reasons"])
        for path in ("/v1/keys", "/v1/attestation/pcrs"):
            with pytest.raises(DaemonError, match="not provisioned") as err:
                d.client.get(path)
            assert err.value.status == 503
        assert d.client.post("/v1/audit/verify")["ok"] is True
        records = d.client.get("/v1/audit")["records"]
        assert records and all(r["signature"] is None for r in records)
    finally:
        d.stop_now()


def test_init_provisions_a_dev_trust_root_once(tmp_path):
    from appliance.state.statedir import StateDir

    root = fakehost.mini().build(tmp_path / "root")
    first = init_state_dir(StateDir(tmp_path / "state"), root=str(root))
    assert first["trust"]["provisioned"] and first["trust"]["created"]
    assert first["trust"]["node_id"] == first["node_id"]
    again = init_state_dir(StateDir(tmp_path / "state"), root=str(root))
    assert again["trust"]["created"] is False
    assert again["trust"]["signing_fingerprint"] == first["trust"]["signing_fingerprint"]
    with pytest.raises(StateDirError, match="trust mode must be one of dev, hardware"):
        init_state_dir(StateDir(tmp_path / "other"), root=str(root), trust="cloud")
    config = tmp_path / "state" / "config.toml"
    config.write_text(config.read_text().replace('trust = "dev"', 'trust = "cloud"'))
    with pytest.raises(Exception, match=r"trust.*must be one of dev, hardware"):
        read_config(config)
