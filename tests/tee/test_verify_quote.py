"""verify_quote against real swtpm quotes, tampered one field at a time."""

import dataclasses
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tee import ClockInfo, Quote, QuoteMalformed, verify_quote

PCRS = [0, 1, 2, 3, 4, 5, 7, 14]


@pytest.fixture
def quoted(tpm):
    ak = tpm.attestation_key()
    nonce = os.urandom(16)
    q = tpm.quote(nonce, PCRS)
    return ak.public_pem, q, nonce, dict(q.pcrs)


def test_genuine(quoted):
    pem, q, nonce, policy = quoted
    assert verify_quote(pem, q, nonce, policy).ok


def test_json_round_trip(quoted):
    pem, q, nonce, policy = quoted
    again = Quote.from_json(q.to_json())
    assert again == q and verify_quote(pem, again, nonce, policy).ok


def test_malformed_json():
    with pytest.raises(QuoteMalformed):
        Quote.from_json({"attest": "zz", "signature": "", "pcrs": {}})


def test_tampered_signature(quoted):
    pem, q, nonce, policy = quoted
    sig = bytearray(q.signature)
    sig[-3] ^= 0x40
    v = verify_quote(pem, dataclasses.replace(q, signature=bytes(sig)), nonce, policy)
    assert not v.ok and v.failed_check == "signature"


def test_tampered_attest_breaks_signature(quoted):
    pem, q, nonce, policy = quoted
    att = bytearray(q.attest)
    att[-1] ^= 1
    v = verify_quote(pem, dataclasses.replace(q, attest=bytes(att)), nonce, policy)
    assert v.failed_check == "signature"


def test_other_attestation_key(quoted):
    _, q, nonce, policy = quoted
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert verify_quote(other, q, nonce, policy).failed_check == "signature"


def test_wrong_nonce(quoted):
    pem, q, _, policy = quoted
    v = verify_quote(pem, q, os.urandom(16), policy)
    assert not v.ok and v.failed_check == "nonce" and "nonce" in v.reason


def test_pcr_value_swapped_breaks_digest(quoted):
    pem, q, nonce, _ = quoted
    forged = dict(q.pcrs)
    forged[14] = b"\x11" * 32
    v = verify_quote(pem, dataclasses.replace(q, pcrs=forged), nonce, {14: b"\x11" * 32})
    assert not v.ok and v.failed_check == "pcr_digest"


def test_pcr_dropped_breaks_digest(quoted):
    pem, q, nonce, _ = quoted
    fewer = {k: v for k, v in q.pcrs.items() if k != 0}
    assert verify_quote(pem, dataclasses.replace(q, pcrs=fewer), nonce, None).failed_check == \
        "pcr_digest"


def test_pcr_value_against_policy(tpm, quoted):
    pem, _, _, golden = quoted
    tpm.extend(7, b"a different secure boot state")
    nonce = os.urandom(16)
    q = tpm.quote(nonce, PCRS)
    v = verify_quote(pem, q, nonce, golden)
    assert not v.ok and v.failed_check == "policy" and "PCR 7" in v.reason


def test_policy_pcr_not_quoted(tpm, quoted):
    pem, _, _, golden = quoted
    nonce = os.urandom(16)
    q = tpm.quote(nonce, [0, 7])
    v = verify_quote(pem, q, nonce, golden)
    assert v.failed_check == "policy" and "not in the quote" in v.reason


def test_clock_monotonic(tpm, quoted):
    pem, q, nonce, policy = quoted
    first = verify_quote(pem, q, nonce, policy)
    nonce2 = os.urandom(16)
    later = tpm.quote(nonce2, PCRS)
    second = verify_quote(pem, later, nonce2, policy, last_seen=first.clock)
    assert second.ok and second.clock.clock >= first.clock.clock
    # Replaying the earlier quote after having seen the later one: clock goes backwards.
    ahead = dataclasses.replace(second.clock, clock=second.clock.clock + 10_000)
    v = verify_quote(pem, q, nonce, policy, last_seen=ahead)
    assert not v.ok and v.failed_check == "clock" and "clock went back" in v.reason


@pytest.mark.parametrize("field,label", [("reset_count", "reset count"),
                                         ("restart_count", "restart count")])
def test_counters_going_back(quoted, field, label):
    pem, q, nonce, policy = quoted
    clock = verify_quote(pem, q, nonce, policy).clock
    future = dataclasses.replace(clock, **{field: getattr(clock, field) + 1})
    v = verify_quote(pem, q, nonce, policy, last_seen=future.to_json())
    assert v.failed_check == "clock" and label in v.reason


def test_new_boot_resets_clock_without_failing(swtpm, quoted):
    pem, q, nonce, policy = quoted
    seen = verify_quote(pem, q, nonce, policy).clock
    swtpm.stop()
    swtpm.start()
    from tee import Tpm

    with Tpm(swtpm.tcti) as tpm:
        n2 = os.urandom(16)
        v = verify_quote(pem, tpm.quote(n2, PCRS), n2, policy, last_seen=seen)
    assert v.ok, v.reason
    assert v.clock.reset_count > seen.reset_count


def _resigned(q: Quote, attest: bytes) -> tuple[str, Quote]:
    """A quote over arbitrary attest bytes signed by a throwaway key (to reach later checks)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    sig = key.sign(attest, ec.ECDSA(hashes.SHA256()))
    return pem, dataclasses.replace(q, attest=attest, signature=sig)


def test_wrong_magic(quoted):
    _, q, nonce, policy = quoted
    pem, forged = _resigned(q, struct.pack(">I", 0xDEADBEEF) + q.attest[4:])
    v = verify_quote(pem, forged, nonce, policy)
    assert v.failed_check == "magic"


def test_wrong_type(quoted):
    _, q, nonce, policy = quoted
    pem, forged = _resigned(q, q.attest[:4] + struct.pack(">H", 0x8017) + q.attest[6:])
    v = verify_quote(pem, forged, nonce, policy)
    assert v.failed_check == "type"


def test_truncated_attest(quoted):
    _, q, nonce, policy = quoted
    pem, forged = _resigned(q, q.attest[:30])
    v = verify_quote(pem, forged, nonce, policy)
    assert not v.ok and "truncated" in v.reason


def test_bad_pem(quoted):
    _, q, nonce, policy = quoted
    v = verify_quote("not a key", q, nonce, policy)
    assert v.failed_check == "signature" and "PEM" in v.reason


def test_clock_info_json():
    c = ClockInfo(5, 1, 2, True)
    assert ClockInfo.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="clock info"):
        ClockInfo.from_json({"clock": 1})
