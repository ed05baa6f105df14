"""Node cards: what one appliance hands another to be enrolled as a peer.

A card names the node (id, organisation, interconnect endpoint), carries its TLS certificate,
the head of its audit ledger, and a fresh attestation bundle whose nonce is the digest of all
of that: the TPM quote thereby vouches for this certificate on this boot chain, and a card cannot
be re-assembled around another certificate. The node's HSM signing key signs the whole card.

Verification is a pure function (no HSM, no TPM): any peer, or an offline auditor, runs it. It
returns a verdict naming the first failed check, like the attestation verifier it builds on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.federation.channel.identity import fingerprint
from appliance.operators.base import canonical
from appliance.trust.bundle import verify_bundle

CARD_FORMAT = "pec-node-card/1"
# A card is carried by hand between organisations, so it may be days old; a month-old quote
# says little about the box today. Clocks of two organisations may disagree by minutes.
MAX_CARD_AGE = timedelta(days=30)
CLOCK_SKEW = timedelta(minutes=10)
_FIELDS = ("format", "node_id", "organisation", "endpoint", "time", "certificate_pem",
           "ledger_head", "attestation", "node_public_pem", "signature")
# The part of a card the attestation nonce commits to (everything but the bundle and signature).
_BOUND = ("format", "node_id", "organisation", "endpoint", "time", "certificate_pem",
          "ledger_head", "node_public_pem")


def binding_nonce(card: Mapping[str, Any]) -> bytes:
    """The attestation nonce of a card: SHA-256 over its bound fields (32 bytes)."""
    return hashlib.sha256(canonical({k: card[k] for k in _BOUND})).digest()


def signed_part(card: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in card.items() if k != "signature"})


def make_card(*, node_id: str, organisation: str, endpoint: str, certificate_pem: str,
              ledger_head: Mapping[str, Any], node_public_pem: str,
              attest: Callable[[bytes], dict[str, Any]],
              sign: Callable[[bytes], bytes]) -> dict[str, Any]:
    """Assemble and sign a card. `attest(nonce)` is the trust root's attestation, `sign` its
    HSM signature; both run on the daemon's trust-root thread."""
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "node_id": node_id,
        "organisation": organisation,
        "endpoint": endpoint,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "certificate_pem": certificate_pem,
        "ledger_head": dict(ledger_head),
        "node_public_pem": node_public_pem,
    }
    card["attestation"] = attest(binding_nonce(card))
    card["signature"] = sign(signed_part(card)).hex()
    return card


def verify_card(card: Any, policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """{"ok", "failed_check", "reason"} for a card; with `policy` (a pinned peer's golden
    PCRs and keys, as `pinned_policy` returns) the quote must also match it."""

    def fail(check: str, reason: str) -> dict[str, Any]:
        return {"ok": False, "failed_check": check, "reason": f"{check}: {reason}"}

    if not isinstance(card, Mapping):
        return fail("format", "a card is a JSON object")
    missing = [f for f in _FIELDS if f not in card]
    if missing:
        return fail("format", f"card lacks {', '.join(missing)}")
    if card["format"] != CARD_FORMAT:
        return fail("format", f"format {card['format']!r} is not {CARD_FORMAT!r}")
    for field in ("node_id", "organisation", "endpoint", "certificate_pem", "node_public_pem"):
        if not isinstance(card[field], str) or not card[field]:
            return fail("format", f"{field} must be a non-empty string")
    try:
        made = datetime.strptime(str(card["time"]), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return fail("format", "time must be YYYY-MM-DDTHH:MM:SSZ")
    if made > datetime.now(UTC) + CLOCK_SKEW:
        return fail("freshness", "the card is dated in the future")
    if made < datetime.now(UTC) - MAX_CARD_AGE:
        return fail("freshness", f"the card is older than {MAX_CARD_AGE.days} days: ask the "
                                 "peer for a fresh one")
    head = card["ledger_head"]
    if not (isinstance(head, Mapping) and isinstance(head.get("seq"), int)
            and isinstance(head.get("hash"), str)):
        return fail("format", "ledger_head must be {seq: int, hash: str}")
    try:
        node_key = serialization.load_pem_public_key(card["node_public_pem"].encode())
        signature = bytes.fromhex(str(card["signature"]))
        cert = x509.load_pem_x509_certificate(card["certificate_pem"].encode())
    except ValueError as exc:
        return fail("format", f"card field malformed: {exc}")
    if not isinstance(node_key, ec.EllipticCurvePublicKey):
        return fail("node_signature", "the node key is not an EC key")
    try:
        node_key.verify(signature, signed_part(card), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return fail("node_signature", "the node's HSM signature over the card does not verify")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != card["node_id"]:
        return fail("certificate", "the certificate's common name is not the card's node id")
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return fail("certificate", "the certificate is outside its validity period")
    bundle = card["attestation"]
    if not isinstance(bundle, Mapping):
        return fail("attestation", "attestation must be a bundle object")
    if bundle.get("node_id") != card["node_id"]:
        return fail("attestation", "the bundle names another node id than the card")
    if bundle.get("node_public_pem") != card["node_public_pem"]:
        return fail("attestation", "the bundle is signed by another node key than the card")
    verdict = verify_bundle(bundle, policy, binding_nonce(card))
    if not verdict["ok"]:
        # the bundle verifier names its own check (nonce, pcr_policy, quote_signature ...)
        return fail(f"attestation.{verdict['failed_check']}", verdict["reason"])
    return {"ok": True, "failed_check": None, "reason": "card verifies"}


def pinned_policy(card: Mapping[str, Any]) -> dict[str, Any]:
    """What a peer pins at enrolment: the card's PCR values and keys (trust on first use of
    a card an admin accepted). Later sessions' quotes must match it or the peer is
    quarantined."""
    bundle = card["attestation"]
    return {
        "pcrs": dict(bundle["pcrs"]),
        "ak_public_pem": bundle["ak_public_pem"],
        "node_public_pem": card["node_public_pem"],
        "certificate_sha256": fingerprint(card["certificate_pem"].encode()),
    }
