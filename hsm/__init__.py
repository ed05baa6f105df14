"""Key custody in a PKCS#11 hardware security module."""

from hsm.blobstore import BlobStore, DirBlobStore
from hsm.errors import (
    BlobContextMismatch,
    BlobMalformed,
    BlobTampered,
    HsmError,
    KeyMissing,
    KeystoreClosed,
    MechanismUnavailable,
    ModuleLoadError,
    ModuleNotFound,
    PinIncorrect,
    PinLocked,
    TokenNotFound,
)
from hsm.keystore import KeyInfo, Keystore, signing_public_key_pem
from hsm.softhsm import SOFTHSM2_MODULE, create_softhsm_token, softhsm_config

__all__ = [
    "SOFTHSM2_MODULE",
    "BlobContextMismatch",
    "BlobMalformed",
    "BlobStore",
    "BlobTampered",
    "DirBlobStore",
    "HsmError",
    "KeyInfo",
    "KeyMissing",
    "Keystore",
    "KeystoreClosed",
    "MechanismUnavailable",
    "ModuleLoadError",
    "ModuleNotFound",
    "PinIncorrect",
    "PinLocked",
    "TokenNotFound",
    "create_softhsm_token",
    "signing_public_key_pem",
    "softhsm_config",
]
