import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tee import SealedBlobMalformed, Swtpm, Tpm, TpmUnavailable, UnsealRefused, verify_quote
from tee.quote import parse_attest, pcr_composite_digest

PCRS = [0, 1, 2, 3, 4, 5, 7, 14]


def test_swtpm_starts_on_a_free_loopback_port(swtpm):
    assert swtpm.running and swtpm.tcti.startswith("swtpm:host=127.0.0.1,port=")
    with Swtpm(swtpm.state_dir.parent / "tpm2") as other:
        assert other.port not in (swtpm.port, swtpm.port + 1)
    assert not other.running


def test_unreachable_tpm_is_a_clear_error():
    with pytest.raises(TpmUnavailable, match="cannot open TPM"):
        Tpm("swtpm:host=127.0.0.1,port=1")


def test_attestation_key_is_persistent_restricted_p256(tmp_path, swtpm):
    with Tpm(swtpm.tcti) as tpm:
        ak = tpm.attestation_key()
        assert tpm.attestation_key() == ak
    key = serialization.load_pem_public_key(ak.public_pem.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    swtpm.stop()
    swtpm.start()  # same state directory: the key survives a TPM restart
    with Tpm(swtpm.tcti) as tpm:
        assert tpm.attestation_key().public_pem == ak.public_pem


def test_quote_verifies(tpm):
    ak = tpm.attestation_key()
    nonce = os.urandom(20)
    q = tpm.quote(nonce, PCRS)
    assert sorted(q.pcrs) == PCRS and all(len(v) == 32 for v in q.pcrs.values())
    att = parse_attest(q.attest)
    assert att.magic == 0xFF544347 and att.type == 0x8018 and att.extra_data == nonce
    assert att.pcr_digest == pcr_composite_digest(q.pcrs)
    verdict = verify_quote(ak.public_pem, q, nonce, dict(q.pcrs))
    assert verdict.ok, verdict.reason
    assert verdict.failed_check is None and verdict.clock is not None


def test_quote_rejects_bad_nonce_size(tpm):
    with pytest.raises(ValueError, match="nonce"):
        tpm.quote(b"short", PCRS)
    with pytest.raises(ValueError, match="PCR"):
        tpm.quote(os.urandom(16), [24])


def test_extend_changes_the_pcr(tpm):
    before = tpm.pcrs([14])[14]
    tpm.extend(14, b"measurement")
    after = tpm.pcrs([14])[14]
    import hashlib

    assert after == hashlib.sha256(before + hashlib.sha256(b"measurement").digest()).digest()


def test_seal_unseal(tpm):
    blob = tpm.seal(b"the hsm pin", [7, 14])
    assert b"the hsm pin" not in blob
    assert tpm.unseal(blob) == b"the hsm pin"


def test_unseal_fails_after_pcr_change(tpm):
    blob = tpm.seal(b"the hsm pin", [7, 14])
    tpm.extend(14, b"another boot chain")
    with pytest.raises(UnsealRefused, match=r"PCRs \[7, 14\] differ"):
        tpm.unseal(blob)


def test_unrelated_pcr_change_does_not_matter(tpm):
    blob = tpm.seal(b"pin", [7, 14])
    tpm.extend(15, b"unrelated")
    assert tpm.unseal(blob) == b"pin"


def test_sealed_blob_survives_tpm_restart(swtpm):
    with Tpm(swtpm.tcti) as tpm:
        blob = tpm.seal(b"pin", [7, 14])
    swtpm.stop()
    swtpm.start()
    with Tpm(swtpm.tcti) as tpm:
        assert tpm.unseal(blob) == b"pin"


def test_sealed_blob_from_another_tpm_is_refused(tmp_path, tpm):
    blob = tpm.seal(b"pin", [7, 14])
    with (Swtpm(tmp_path / "other") as other, Tpm(other.tcti) as tpm2,
          pytest.raises(SealedBlobMalformed, match="rejected")):
        tpm2.unseal(blob)


@pytest.mark.parametrize("blob,match", [
    (b"nope", "bad magic"),
    (b"PECT\x02\x00", "version"),
    (b"PECT\x01\x02\x07\x0e\x00\x00\x01\x00", "truncated"),
])
def test_malformed_sealed_blob(tpm, blob, match):
    with pytest.raises(SealedBlobMalformed, match=match):
        tpm.unseal(blob)


def test_seal_size_limit(tpm):
    with pytest.raises(ValueError, match=r"1\.\.128"):
        tpm.seal(b"x" * 129, [7])


def test_stale_swtpm_is_replaced(tmp_path):
    # An owner that died without stopping its swtpm leaves the state directory locked.
    crashed = Swtpm(tmp_path / "tpm").start()
    stale_pid = crashed._proc.pid
    crashed._proc = None  # forget it, as a crashed process would
    with Swtpm(tmp_path / "tpm") as fresh, Tpm(fresh.tcti) as tpm:
        assert tpm.pcrs([0])
    stat = Path(f"/proc/{stale_pid}/stat")
    # Gone, or a zombie waiting for this test process (its parent) to reap it.
    assert not stat.exists() or stat.read_text().split()[2] == "Z"
