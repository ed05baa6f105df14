"""The trust-root group of the daemon's local API, as plain functions over a TrustRoot.

Each takes the decoded JSON body (or nothing) and returns the response payload; failures raise
TrustError whose `status` is the HTTP status to answer with (400 bad input, 503 not provisioned
or keys locked). Auditing stays with the caller, which knows the actor.
"""

from __future__ import annotations

from typing import Any

from appliance.trust.bundle import verify_bundle
from appliance.trust.errors import TrustError
from appliance.trust.root import TrustRoot


def keys(root: TrustRoot) -> dict[str, Any]:
    """GET /v1/keys"""
    return root.keys()


def rotate_kek(root: TrustRoot, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/keys/rotate-kek {"actor"}"""
    return root.rotate_kek()


def pcrs(root: TrustRoot) -> dict[str, Any]:
    """GET /v1/attestation/pcrs"""
    return root.pcrs()


def quote(root: TrustRoot, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/attestation/quote {"nonce": hex, "actor"} -> bundle"""
    nonce = body.get("nonce") if isinstance(body, dict) else None
    if not isinstance(nonce, str):
        raise TrustError("field 'nonce' must be a hex string")
    try:
        raw = bytes.fromhex(nonce)
    except ValueError as exc:
        raise TrustError("field 'nonce' must be hex digits") from exc
    return root.attest(raw)


def verify(body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/attestation/verify {"bundle", "policy"} -> {"ok", "reason", "failed_check"};
    needs neither TPM nor HSM."""
    if not isinstance(body, dict) or not isinstance(body.get("bundle"), dict):
        raise TrustError("field 'bundle' must be the attestation bundle object")
    policy = body.get("policy")
    if policy is not None and not isinstance(policy, dict):
        raise TrustError("field 'policy' must be an object of PCR index -> hex, or null")
    return verify_bundle(body["bundle"], policy)
