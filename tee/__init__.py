"""TPM 2.0 attestation and sealing, and the host's CPU TEE features.

`Tpm` needs the TSS libraries and is imported on first use, so the pure verifier
(`verify_quote`) works on any machine with only `cryptography`.
"""

from typing import Any

from tee.errors import QuoteMalformed, SealedBlobMalformed, TeeError, TpmUnavailable, UnsealRefused
from tee.features import features
from tee.quote import ClockInfo, Quote, Verdict, verify_quote
from tee.swtpm import Swtpm

__all__ = [
    "AttestationKey",
    "ClockInfo",
    "Quote",
    "QuoteMalformed",
    "SealedBlobMalformed",
    "Swtpm",
    "TeeError",
    "Tpm",
    "TpmUnavailable",
    "UnsealRefused",
    "Verdict",
    "features",
    "verify_quote",
]


def __getattr__(name: str) -> Any:
    if name in ("Tpm", "AttestationKey"):
        from tee import tpm

        return getattr(tpm, name)
    raise AttributeError(f"module 'tee' has no attribute {name!r}")
