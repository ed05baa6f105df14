"""Node cards against a real trust root (SoftHSM2 and swtpm under a temporary state dir)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.federation.card import make_card, pinned_policy, signed_part, verify_card
from appliance.trust import TrustRoot, provision

HEAD = {"seq": 7, "hash": "ab" * 32}


def self_signed(node_id: str, days: int = 30) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=days)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    state = tmp_path_factory.mktemp("card") / "state"
    provision(state, node_id="bank-a")
    with TrustRoot.open(state) as r:
        yield r


def card_of(root: TrustRoot, cert_pem: str | None = None, node_id: str = "bank-a") -> dict:
    return make_card(
        node_id=node_id, organisation="Bank A", endpoint="127.0.0.1:7443",
        certificate_pem=cert_pem or self_signed(node_id), ledger_head=HEAD,
        node_public_pem=root.signing_public_pem, attest=root.attest, sign=root.signer.sign)


def test_a_fresh_card_verifies_and_pins_its_quote(root):
    card = card_of(root)
    assert verify_card(card) == {"ok": True, "failed_check": None, "reason": "card verifies"}
    policy = pinned_policy(card)
    assert verify_card(card, policy)["ok"]
    assert policy["node_public_pem"] == root.signing_public_pem
    assert len(policy["certificate_sha256"]) == 64


@pytest.mark.parametrize(
    ("edit", "check"),
    [
        (lambda c: c.update(endpoint="10.0.0.9:7443"), "node_signature"),
        (lambda c: c.update(signature="00" * 64), "node_signature"),
        (lambda c: c.pop("ledger_head"), "format"),
        (lambda c: c.update(format="pec-node-card/0"), "format"),
        (lambda c: c.update(node_public_pem="not a key"), "format"),
        (lambda c: c.__setitem__("attestation", "x"), "node_signature"),
    ],
)
def test_a_forged_card_names_the_failed_check(root, edit, check):
    card = card_of(root)
    edit(card)
    verdict = verify_card(card)
    assert not verdict["ok"] and verdict["failed_check"] == check, verdict


def test_a_card_resigned_around_another_certificate_fails_the_quote(root):
    # Someone with the node's signing key (but not its TPM state) swaps the certificate and
    # re-signs: the quote's nonce still commits to the old certificate.
    card = card_of(root)
    forged = copy.deepcopy(card)
    forged["certificate_pem"] = self_signed("bank-a")
    forged.pop("signature")
    forged["signature"] = root.signer.sign(signed_part(forged)).hex()
    verdict = verify_card(forged)
    assert verdict["failed_check"] == "attestation.nonce", verdict


def test_a_certificate_for_another_node_is_refused(root):
    verdict = verify_card(card_of(root, cert_pem=self_signed("carrier-b")))
    assert verdict["failed_check"] == "certificate"
    assert "common name" in verdict["reason"]


def test_a_changed_pcr_fails_against_the_pinned_policy(root):
    card = card_of(root)
    policy = pinned_policy(card)
    index = next(iter(policy["pcrs"]))
    policy["pcrs"][index] = "ff" * 32  # swtpm starts its PCRs at zero
    verdict = verify_card(card, policy)
    assert not verdict["ok"] and verdict["failed_check"].startswith("attestation.")


def test_not_a_card_at_all():
    for junk in (None, [], "card", 42):
        assert verify_card(junk)["failed_check"] == "format"


@pytest.mark.parametrize(
    ("shift", "reason"),
    [(timedelta(days=31), "older than 30 days"), (timedelta(hours=-1), "in the future")],
)
def test_a_stale_or_future_card_is_refused(root, shift, reason):
    card = card_of(root)
    card["time"] = (datetime.now(UTC) - shift).strftime("%Y-%m-%dT%H:%M:%SZ")
    card.pop("signature")
    card["signature"] = root.signer.sign(signed_part(card)).hex()
    verdict = verify_card(card)
    assert verdict["failed_check"] == "freshness" and reason in verdict["reason"]
