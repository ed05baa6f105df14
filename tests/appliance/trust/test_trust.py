"""The trust root glue against real SoftHSM2 and swtpm started under a temporary state dir."""

import json
import os

import numpy as np
import pytest

from appliance.trust import (
    TrustError,
    TrustLocked,
    TrustNotProvisioned,
    TrustRoot,
    provision,
    verify_bundle,
)
from appliance.trust.layout import TrustLayout
from tee import Swtpm, Tpm


@pytest.fixture
def state(tmp_path):
    provision(tmp_path / "state", node_id="node-test-1")
    return tmp_path / "state"


@pytest.fixture
def root(state):
    with TrustRoot.open(state) as r:
        yield r


def _all_bytes(directory):
    return [(p, p.read_bytes()) for p in directory.rglob("*") if p.is_file()]


def test_provision_layout(state):
    layout = TrustLayout(state)
    info = json.loads(layout.trust_json.read_text())
    assert info["node_id"] == "node-test-1" and info["dev"] is True
    assert info["sealed_pcrs"] == [7, 14]
    golden = json.loads(layout.golden_pcrs.read_text())
    assert sorted(map(int, golden["pcrs"])) == [0, 2, 3, 4, 5, 7, 14]  # PCR 1 is not judged
    assert golden["ak_public_pem"] == info["ak_public_pem"]
    assert layout.pin_sealed.read_bytes()[:4] == b"PECT"
    assert (layout.hsm_dir / "tokens").is_dir() and (layout.tpm_dir / "tpm2-00.permall").is_file()
    assert provision(state)["created"] is False  # idempotent


def test_no_pin_in_clear_on_disk(state, root):
    # The PIN is only in memory after unsealing; grab it the way open() does, then scan.
    layout = TrustLayout(state)
    pins = [root._on_tpm(lambda p=p: root._tpm.unseal(p.read_bytes()))
            for p in (layout.pin_sealed, layout.so_pin_sealed)]
    assert all(len(pin) == 32 for pin in pins) and pins[0] != pins[1]
    for path, data in _all_bytes(state):
        for pin in pins:
            assert pin not in data, path


def test_open_healthy(root):
    assert root.provisioned and not root.degraded and root.degraded_reasons == []
    health = root.health()
    assert health["hsm"]["ok"] is True and health["tpm"]["ok"] is True
    assert root.signer is not None
    assert root.signer.public_key_pem() == root.signing_public_pem


def test_not_provisioned(tmp_path):
    with TrustRoot.open(tmp_path) as r:
        assert not r.provisioned and not r.degraded
        assert r.health()["hsm"]["ok"] is None and r.health()["tpm"]["ok"] is None
        for call in (r.keys, r.pcrs, lambda: r.attest(os.urandom(16)), r.rotate_kek):
            with pytest.raises(TrustNotProvisioned):
                call()


def test_keys_listing(root):
    listing = root.keys()
    assert listing["token"] == {"label": "pec", "present": True, "mechanisms_ok": True}
    kinds = sorted(k["kind"] for k in listing["keys"])
    assert kinds == ["kek", "signing"]


def test_keygen_sealed_and_usable(state, root):
    made = root.keygen(bits=512)
    assert made["id"].startswith("paillier-") and made["bits"] == 512
    assert made["fingerprint"].startswith("sha256:")
    listed = [k for k in root.keys()["keys"] if k["kind"] == "paillier"]
    assert listed == [made]
    pk = root.public_key(made["id"])
    sk = root.private_key(made["id"])
    assert sk.public_key.n == pk.n
    values = np.array([3, -7, 42])
    assert np.array_equal(sk.decrypt(pk.encrypt(values)), values)


def test_no_p_or_q_in_clear_anywhere(state, root):
    ids = [root.keygen(bits=512)["id"] for _ in range(2)]
    secrets = []
    for key_id in ids:
        sk = root.private_key(key_id)
        for prime in (sk.p, sk.q):
            size = (prime.bit_length() + 7) // 8
            be = prime.to_bytes(size, "big")
            secrets += [str(prime).encode(), format(prime, "x").encode(),
                        format(prime, "X").encode(), be, prime.to_bytes(size, "little"),
                        be[:16]]  # a prefix catches partial or padded encodings too
    files = _all_bytes(state)
    assert any(p.suffix == ".sealed" for p, _ in files)
    for path, data in files:
        for needle in secrets:
            assert needle not in data, f"{path} holds a private prime"


def test_rotate_kek_keeps_keys(root):
    made = root.keygen(bits=512)
    before = root.private_key(made["id"])
    assert root.rotate_kek() == {"ok": True, "resealed": 1}
    after = root.private_key(made["id"])
    assert (after.p, after.q) == (before.p, before.q)
    assert [k["generation"] for k in root.keys()["keys"] if k["kind"] == "kek"] == [2]


def test_unknown_key(root):
    with pytest.raises(TrustError, match="no key"):
        root.private_key("paillier-0000")
    with pytest.raises(TrustError, match="not a Paillier key id"):
        root.private_key("../trust")


def test_pcrs_match_golden(root):
    out = root.pcrs()
    # PCR 1 is quoted but not judged: no golden value, no verdict
    assert out["match"].pop("1") is None and "1" not in out["golden"]
    assert {i: v for i, v in out["pcrs"].items() if i != "1"} == out["golden"]
    assert all(out["match"].values())
    root.extend_pcr(14, b"an unexpected component")
    out = root.pcrs()
    assert out["match"]["14"] is False and out["match"]["0"] is True


def test_attest_and_verify(state, root):
    nonce = os.urandom(16)
    bundle = root.attest(nonce)
    assert bundle["node_id"] == "node-test-1" and bundle["nonce"] == nonce.hex()
    golden = json.loads(TrustLayout(state).golden_pcrs.read_text())
    json.loads(json.dumps(bundle))  # plain JSON
    assert verify_bundle(bundle, golden, nonce)["ok"]
    assert verify_bundle(bundle, golden["pcrs"])["ok"]  # the API's bare policy map
    assert verify_bundle(bundle, None)["ok"]


@pytest.mark.parametrize("mutate,check", [
    (lambda b: b.update(node_id="someone-else"), "node_signature"),
    (lambda b: b.update(signature="00" + b["signature"][2:]), "node_signature"),
    (lambda b: b.pop("quote"), "format"),
    (lambda b: b.update(format="other/9"), "format"),
])
def test_tampered_bundle(root, state, mutate, check):
    bundle = root.attest(os.urandom(16))
    mutate(bundle)
    golden = json.loads(TrustLayout(state).golden_pcrs.read_text())
    verdict = verify_bundle(bundle, golden)
    assert not verdict["ok"] and verdict["failed_check"] == check


def test_bundle_with_changed_pcr_fails_policy(root, state):
    root.extend_pcr(7, b"secure boot disabled")
    bundle = root.attest(os.urandom(16))
    golden = json.loads(TrustLayout(state).golden_pcrs.read_text())
    verdict = verify_bundle(bundle, golden)
    assert verdict["failed_check"] == "policy" and "PCR 7" in verdict["reason"]


def test_bundle_wrong_nonce_and_pinned_keys(state, tmp_path):
    # SoftHSM2 reads one configuration per process: provision the other node before opening.
    other = tmp_path / "other"
    provision(other)
    foreign = json.loads(TrustLayout(other).golden_pcrs.read_text())
    golden = json.loads(TrustLayout(state).golden_pcrs.read_text())
    with TrustRoot.open(state) as root:
        bundle = root.attest(os.urandom(16))
    assert verify_bundle(bundle, golden, os.urandom(16))["failed_check"] == "nonce"
    assert verify_bundle(bundle, foreign)["failed_check"] == "pinned_key"
    foreign["pcrs"] = golden["pcrs"]
    foreign.pop("ak_public_pem")
    assert verify_bundle(bundle, foreign)["failed_check"] == "pinned_key"  # node key differs


def test_bad_nonce(root):
    with pytest.raises(TrustError, match="8 to 64 bytes"):
        root.attest(b"short")


def test_changed_pcr_opens_degraded_without_fallback(state):
    layout = TrustLayout(state)
    # Boot the TPM with a different measurement in PCR 14, then open against it.
    with Swtpm(layout.tpm_dir) as sim:
        with Tpm(sim.tcti) as tpm:
            tpm.extend(14, b"tampered bootloader")
        with TrustRoot.open(state, tcti=sim.tcti) as r:
            assert r.degraded and r.signer is None
            assert r.health()["tpm"]["ok"] is True and r.health()["hsm"]["ok"] is False
            reason = " ".join(r.degraded_reasons)
            assert "refused to unseal" in reason and "7, 14" in reason
            with pytest.raises(TrustLocked, match="locked"):
                r.keygen(bits=512)
            with pytest.raises(TrustLocked):
                r.attest(os.urandom(16))
            assert r.keys()["token"]["present"] is False
            assert r.pcrs()["match"]["14"] is False  # the TPM still tells what changed
    # With the boot chain back to the golden values the keys unlock again.
    with TrustRoot.open(state) as r:
        assert not r.degraded


def test_tpm_unreachable_opens_degraded(state):
    with TrustRoot.open(state, tcti="swtpm:host=127.0.0.1,port=1") as r:
        assert r.degraded and r.health()["tpm"]["ok"] is False
        assert "TPM unavailable" in r.degraded_reasons[0]


def test_other_tpm_is_detected(state, tmp_path):
    with Swtpm(tmp_path / "foreign-tpm") as sim, TrustRoot.open(state, tcti=sim.tcti) as r:
        assert r.degraded
        assert "attestation key differs" in r.health()["tpm"]["detail"]


def test_failed_provisioning_leaves_nothing(tmp_path, monkeypatch):
    import appliance.trust.root as root_mod

    def broken(*a, **k):
        raise root_mod.HsmError("token creation failed")

    monkeypatch.setattr(root_mod, "create_softhsm_token", broken)
    with pytest.raises(root_mod.HsmError):
        provision(tmp_path / "s")
    layout = TrustLayout(tmp_path / "s")
    assert not layout.trust_json.exists() and not layout.hsm_dir.exists()
    assert not layout.golden_pcrs.exists()
    monkeypatch.undo()
    assert provision(tmp_path / "s")["created"] is True  # a retry starts clean


def test_api_functions(state, root):
    from appliance.trust import api

    assert api.keys(root)["token"]["present"] is True
    match = api.pcrs(root)["match"]
    assert match.pop("1") is None and all(match.values())
    nonce = os.urandom(16).hex()
    bundle = api.quote(root, {"nonce": nonce, "actor": "admin"})
    golden = json.loads(TrustLayout(state).golden_pcrs.read_text())
    assert api.verify({"bundle": bundle, "policy": golden["pcrs"]})["ok"] is True
    assert api.verify({"bundle": bundle, "policy": None})["ok"] is True
    assert api.rotate_kek(root, {"actor": "admin"}) == {"ok": True, "resealed": 0}
    for call, status in (
        (lambda: api.quote(root, {"nonce": "zz"}), 400),
        (lambda: api.quote(root, {}), 400),
        (lambda: api.quote(root, {"nonce": "00"}), 400),
        (lambda: api.verify({"bundle": "x"}), 400),
        (lambda: api.verify({"bundle": bundle, "policy": [1]}), 400),
    ):
        with pytest.raises(TrustError) as info:
            call()
        assert info.value.status == status


def test_api_status_when_not_provisioned(tmp_path):
    from appliance.trust import api

    with TrustRoot.open(tmp_path) as r:
        with pytest.raises(TrustNotProvisioned) as info:
            api.keys(r)
        assert info.value.status == 503


def test_keygen_bad_bits(root):
    with pytest.raises(TrustError, match="Paillier key"):
        root.keygen(bits=8)
    assert not [k for k in root.keys()["keys"] if k["kind"] == "paillier"]
