"""The appliance's trust root: HSM key custody and TPM attestation wired for the daemon.

    provision(state_dir, dev=True)      set up token, keys, attestation key, golden PCRs
    TrustRoot.open(state_dir)           unseal the HSM PIN with the TPM; degraded on failure
    verify_bundle(bundle, policy)       check an attestation bundle with no TPM and no HSM

`TrustRoot` and `provision` load the PKCS#11 and TSS bindings on first use, so a verifier
machine needs neither.
"""

from typing import Any

from appliance.trust.bundle import verify_bundle
from appliance.trust.errors import TrustError, TrustLocked, TrustNotProvisioned

__all__ = [
    "TrustError",
    "TrustLocked",
    "TrustNotProvisioned",
    "TrustRoot",
    "provision",
    "verify_bundle",
]


def __getattr__(name: str) -> Any:
    if name in ("TrustRoot", "provision"):
        from appliance.trust import root

        return getattr(root, name)
    raise AttributeError(f"module 'appliance.trust' has no attribute {name!r}")
