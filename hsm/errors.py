"""Exceptions of the key custody layer: one class per thing that can go wrong."""


class HsmError(Exception):
    """Base of every error raised by the hsm package."""


class ModuleNotFound(HsmError):
    """The PKCS#11 module file does not exist."""


class ModuleLoadError(HsmError):
    """The PKCS#11 module exists but could not be loaded or initialised."""


class TokenNotFound(HsmError):
    """No token carries the requested label."""


class PinIncorrect(HsmError):
    """The token rejected the user PIN."""


class PinLocked(HsmError):
    """The token locked the user PIN after too many failures."""


class MechanismUnavailable(HsmError):
    """The token lacks a mechanism the keystore needs."""


class KeyMissing(HsmError):
    """A key the keystore needs (KEK or signing key) is not on the token."""


class BlobMalformed(HsmError):
    """The bytes are not a sealed blob of a format this keystore reads."""


class BlobTampered(HsmError):
    """The sealed blob failed authentication: it was changed after sealing."""


class BlobContextMismatch(HsmError):
    """The blob was sealed for another context than the one given to unseal."""


class KeystoreClosed(HsmError):
    """The keystore was closed; open it again."""
