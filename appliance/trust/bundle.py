"""Attestation bundles: what `pec-appliance attest` prints and any peer verifies offline.

A bundle carries the TPM quote with the attestation key that signed it, the PCR values, the
node id and nonce, the head of the node's audit ledger (``ledger_head``: last sequence number
and hash, so whoever keeps the bundle can later detect records cut from the end), and the
node's HSM public key with its signature over all of that. The
verifier needs neither a TPM nor an HSM: only `cryptography` and the golden policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tee.errors import QuoteMalformed
from tee.quote import Quote, verify_quote

BUNDLE_FORMAT = "pec-attestation/1"
_FIELDS = ("format", "node_id", "time", "nonce", "ak_public_pem", "quote", "pcrs",
           "node_public_pem", "ledger_head", "signature")


def signed_part(bundle: Mapping[str, Any]) -> bytes:
    """The canonical bytes the node's HSM key signs: every field except the signature."""
    body = {k: v for k, v in bundle.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_policy(policy: Mapping[str, Any] | None) -> dict[str, Any]:
    """Accept a golden file ({"pcrs": {...}, "ak_public_pem", "node_public_pem"}) or a bare
    {"index": hex} map; return {"pcrs": {int: bytes}, "ak_public_pem", "node_public_pem"}."""
    if policy is None:
        return {"pcrs": None, "ak_public_pem": None, "node_public_pem": None}
    if not isinstance(policy, Mapping):
        raise ValueError("policy must be a JSON object")
    # A golden file nests the PCRs and may pin keys; the API's policy is the bare PCR map.
    pcrs, pins = (policy["pcrs"] or {}, policy) if "pcrs" in policy else (policy, {})
    if not isinstance(pcrs, Mapping):
        raise ValueError("policy PCRs must be a JSON object of index -> hex value")
    out: dict[int, bytes] = {}
    for key, value in pcrs.items():
        try:
            index = int(key)
            digest = bytes.fromhex(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"policy entry {key!r}: want a PCR index and a hex value") from exc
        if not 0 <= index <= 23 or len(digest) != 32:
            raise ValueError(f"policy entry {key!r}: index 0..23 and a 32-byte SHA-256 value")
        out[index] = digest
    return {"pcrs": out, "ak_public_pem": pins.get("ak_public_pem"),
            "node_public_pem": pins.get("node_public_pem")}


def verify_bundle(bundle: Mapping[str, Any], policy: Mapping[str, Any] | None,
                  nonce: bytes | None = None) -> dict[str, Any]:
    """{"ok", "reason", "failed_check"} for a bundle against a golden policy.

    `nonce`, when given, must be the bundle's nonce (the caller's freshness challenge). Keys the
    policy pins (AK, node key) must match the bundle's.
    """
    def fail(check: str, reason: str) -> dict[str, Any]:
        return {"ok": False, "reason": f"{check}: {reason}", "failed_check": check}

    if not isinstance(bundle, Mapping):
        return fail("format", "bundle must be a JSON object")
    missing = [f for f in _FIELDS if f not in bundle]
    if missing:
        return fail("format", f"bundle lacks {', '.join(missing)}")
    if bundle["format"] != BUNDLE_FORMAT:
        return fail("format", f"format {bundle['format']!r} is not {BUNDLE_FORMAT!r}")
    try:
        pinned = parse_policy(policy)
    except ValueError as exc:
        return fail("policy", str(exc))
    try:
        quote = Quote.from_json(bundle["quote"])
        bundle_nonce = bytes.fromhex(bundle["nonce"])
        node_key = serialization.load_pem_public_key(str(bundle["node_public_pem"]).encode())
        signature = bytes.fromhex(bundle["signature"])
    except (QuoteMalformed, ValueError, TypeError) as exc:
        return fail("format", f"bundle field malformed: {exc}")
    if not isinstance(node_key, ec.EllipticCurvePublicKey):
        return fail("node_signature", "node key is not an EC key")
    try:
        node_key.verify(signature, signed_part(bundle), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return fail("node_signature", "the node's HSM signature over the bundle does not verify")
    for field in ("node_public_pem", "ak_public_pem"):
        if pinned[field] and _pem_der(pinned[field]) != _pem_der(bundle[field]):
            return fail("pinned_key", f"{field} differs from the one the policy pins")
    if nonce is not None and bytes(nonce) != bundle_nonce:
        return fail("nonce", "bundle answers another nonce than the one asked")
    if {str(k): v for k, v in quote.to_json()["pcrs"].items()} != dict(bundle["pcrs"]):
        return fail("pcr_digest", "bundle PCR values differ from the quote's")
    head = bundle["ledger_head"]
    if not (isinstance(head, Mapping) and isinstance(head.get("seq"), int)
            and isinstance(head.get("hash"), str) and len(head["hash"]) == 64):
        return fail("format", "ledger_head must be {\"seq\": int, \"hash\": 64 hex digits}")
    verdict = verify_quote(bundle["ak_public_pem"], quote, bundle_nonce, pinned["pcrs"])
    # the head is reported even on failure: it is signed, so it is the node's own word
    return {"ok": verdict.ok, "reason": verdict.reason, "failed_check": verdict.failed_check,
            "ledger_head": {"seq": head["seq"], "hash": head["hash"]}}


def _pem_der(pem: str) -> bytes | None:
    try:
        key = serialization.load_pem_public_key(str(pem).encode())
    except ValueError:
        return None
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
