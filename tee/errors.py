"""Exceptions of the TPM layer."""


class TeeError(Exception):
    """Base of every error raised by the tee package."""


class TpmUnavailable(TeeError):
    """The TPM (device or simulator) cannot be reached."""


class SealedBlobMalformed(TeeError):
    """The bytes are not a TPM-sealed blob of a format this package reads."""


class UnsealRefused(TeeError):
    """The TPM refused to unseal: the PCR values differ from those at sealing time."""


class QuoteMalformed(TeeError):
    """A quote or its attestation structure cannot be parsed."""
