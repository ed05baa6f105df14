"""Which public key verifies the audit ledger, and why it can be trusted.

``trust.json`` records the signing key at provisioning, but anyone who can write the state
directory can rewrite it along with every ledger record. The key a verifier trusts therefore
comes, in this order, from:

1. a key the verifier brings (``--pubkey FILE``, e.g. the node key pinned from an attestation
   bundle or a peer's node card), optionally checked against ``--expect-fingerprint``;
2. the HSM token itself: its public signing key object is read without the PIN;
3. only then ``trust.json``, reported as *not anchored*.

Whenever two of these disagree, verification fails and names both fingerprints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives import serialization

from appliance.trust.layout import TrustLayout


def fingerprint_pem(pem: str) -> str:
    """``sha256:`` + hex SHA-256 of the key's DER SubjectPublicKeyInfo."""
    der = serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + sha256(der).hexdigest()


@dataclass(frozen=True)
class LedgerKey:
    """The key chosen to verify the ledger; ``problem`` set means verification must fail."""

    pem: str | None
    source: str
    anchored: bool
    problem: str | None = None
    note: str | None = None  # e.g. why the token could not be read

    @property
    def fingerprint(self) -> str | None:
        return None if self.pem is None else fingerprint_pem(self.pem)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "fingerprint": self.fingerprint,
                "anchored": self.anchored, "problem": self.problem, "note": self.note}


def read_token_key(layout: TrustLayout, info: dict[str, Any]) -> str:
    """The token's public signing key, without the PIN; raises on any failure (no bindings,
    module or token absent)."""
    from hsm import signing_public_key_pem, softhsm_config

    config = softhsm_config(layout.hsm_dir) if info.get("dev") else None
    return signing_public_key_pem(info["module"], info["token_label"],
                                  config=None if config is None else str(config))


def choose_key(layout: TrustLayout, *, token_pem: str | None = None,
               read_token: bool = True, pubkey_pem: str | None = None,
               pubkey_source: str = "--pubkey", expect_fingerprint: str | None = None
               ) -> LedgerKey:
    """Pick the verification key (see the module doc) and check every source against the
    others. ``token_pem``: the token's key when the caller already holds the token open."""
    info: dict[str, Any] | None = None
    if layout.trust_json.is_file():
        info = json.loads(layout.trust_json.read_text())
    recorded = None if info is None else info.get("signing_public_pem")
    note = None
    if token_pem is None and read_token and info is not None:
        try:
            token_pem = read_token_key(layout, info)
        except Exception as exc:  # no token, no module, no bindings: say so, go on
            note = f"HSM token not readable ({exc}); not anchored to the hardware"
    candidates = [(pubkey_source, pubkey_pem), (f"HSM token {info['token_label']!r}"
                                                if info else "HSM token", token_pem),
                  ("trust.json", recorded)]
    present = [(src, pem) for src, pem in candidates if pem]
    if not present:
        return LedgerKey(None, "none", False, "no key to verify the signed ledger with: no "
                         "trust.json, no readable HSM token and no --pubkey", note)
    source, pem = present[0]
    problem = None
    for other_src, other_pem in present[1:]:
        if fingerprint_pem(other_pem) != fingerprint_pem(pem):
            problem = (f"the signing key of {source} ({fingerprint_pem(pem)}) differs from the "
                       f"key of {other_src} ({fingerprint_pem(other_pem)}): one of them was "
                       "replaced; the ledger cannot be trusted until that is explained")
            break
    anchored = source != "trust.json"
    if expect_fingerprint is not None:
        expected = expect_fingerprint.strip().lower()
        expected = expected if expected.startswith("sha256:") else f"sha256:{expected}"
        if fingerprint_pem(pem) != expected:
            problem = problem or (f"the signing key of {source} ({fingerprint_pem(pem)}) is not "
                                  f"the expected key ({expected})")
        else:
            anchored = True
    return LedgerKey(pem, source, anchored, problem, note)
