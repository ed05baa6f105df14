"""Keystore: the appliance's secrets and signing key held in a PKCS#11 token.

PKCS#11 sessions must not be used from two threads at once, so one owner thread opens the
module, logs in and performs every token operation; public methods hand their work to it through
a queue and wait on a future, which makes a Keystore safe to call from any thread.

The module itself is a process-wide resource (C_Initialize reads SoftHSM2's configuration once),
so keystores on one module share one initialisation; see `_ModuleRegistry`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11err
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from pkcs11.util.ec import encode_named_curve_parameters

from hsm.blob import MAX_CONTEXT, NONCE_BYTES, SealedBlob
from hsm.blobstore import BlobStore
from hsm.errors import (
    BlobContextMismatch,
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

T = TypeVar("T")

KEK_LABEL_PREFIX = "pec-kek-"
SIGNING_LABEL = "pec-signing"
_KEK_LABEL = re.compile(r"^pec-kek-(\d+)$")
# Token failures that mean "the ciphertext or its additional data does not authenticate".
_AUTH_FAILURES = (
    p11err.GeneralError,
    p11err.EncryptedDataInvalid,
    p11err.EncryptedDataLenRange,
    p11err.FunctionFailed,
    p11err.DataInvalid,
)


@dataclass(frozen=True)
class KeyInfo:
    """One object stored on the token."""

    label: str
    kind: str  # "kek", "signing-private" or "signing-public"
    id: str  # CKA_ID, hex
    generation: int | None = None  # KEK generation; None for other kinds


class _ModuleRegistry:
    """Loads each PKCS#11 module once and tracks which SoftHSM2 configuration it was started with.

    A module is re-initialised (C_Finalize, C_Initialize) when nobody uses it, so a new token
    directory is seen; two live keystores on one module with different configurations cannot
    coexist and the second is refused with a clear error.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, tuple[str | None, int]] = {}

    def acquire(self, module: str, config: str | None) -> Any:
        with self._lock:
            conf, count = self._users.get(module, (config, 0))
            if count and conf != config:
                raise HsmError(
                    f"PKCS#11 module {module} is in use with configuration {conf}; "
                    f"close that keystore before opening one with {config}"
                )
            if config is not None:
                os.environ["SOFTHSM2_CONF"] = config
            try:
                lib = pkcs11.lib(module)
                if count == 0:
                    lib.reinitialize()
            except p11err.PKCS11Error as exc:
                raise ModuleLoadError(f"cannot load PKCS#11 module {module}: {exc}") from exc
            self._users[module] = (config, count + 1)
            return lib

    def release(self, module: str) -> None:
        with self._lock:
            conf, count = self._users.get(module, (None, 1))
            if count <= 1:
                self._users.pop(module, None)
            else:
                self._users[module] = (conf, count - 1)


_modules = _ModuleRegistry()


class Keystore:
    """Seal, unseal, sign and draw random numbers with keys that never leave the token."""

    def __init__(self) -> None:  # use Keystore.open
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._session: Any = None
        self._module = ""
        self._blob_store: BlobStore | None = None
        self._sign_prehashed = True
        self._public: ec.EllipticCurvePublicKey | None = None

    # -- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        module: str,
        token_label: str,
        pin: str,
        *,
        config: str | os.PathLike[str] | None = None,
        blob_store: BlobStore | None = None,
        create_keys: bool = False,
    ) -> Keystore:
        """Log in to the token labelled `token_label` and find (or create) the appliance keys.

        `config` is a SoftHSM2 configuration file (development tokens); vendor modules leave it
        None. With `create_keys` a missing KEK or signing key is generated on the token,
        otherwise their absence raises KeyMissing.
        """
        if not os.path.exists(module):
            raise ModuleNotFound(f"PKCS#11 module {module} does not exist")
        if config is not None and not os.path.isfile(config):
            raise HsmError(f"SoftHSM2 configuration {config} does not exist")
        ks = cls()
        ks._module = module
        ks._blob_store = blob_store
        ready: Future[None] = Future()
        ks._thread = threading.Thread(
            target=ks._run,
            args=(ready, module, token_label, pin, None if config is None else str(config),
                  create_keys),
            name=f"hsm-{token_label}",
            daemon=True,
        )
        ks._thread.start()
        ready.result()
        return ks

    def close(self) -> None:
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Keystore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(
        self,
        ready: Future[None],
        module: str,
        token_label: str,
        pin: str,
        config: str | None,
        create_keys: bool,
    ) -> None:
        try:
            lib = _modules.acquire(module, config)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        try:
            self._login(lib, token_label, pin, create_keys)
        except BaseException as exc:
            self._logout()
            _modules.release(module)
            ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)
        finally:
            self._logout()
            _modules.release(module)
            # Anything queued after close() must not wait forever.
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[1].set_exception(KeystoreClosed("keystore is closed"))

    def _login(self, lib: Any, token_label: str, pin: str, create_keys: bool) -> None:
        try:
            token = lib.get_token(token_label=token_label)
        except p11err.NoSuchToken as exc:
            raise TokenNotFound(f"no PKCS#11 token labelled {token_label!r}") from exc
        except p11err.MultipleTokensReturned as exc:
            raise TokenNotFound(f"more than one token labelled {token_label!r}") from exc
        mechanisms = set(token.slot.get_mechanisms())
        if Mechanism.AES_GCM not in mechanisms:
            raise MechanismUnavailable(f"token {token_label!r} lacks CKM_AES_GCM for sealing")
        if Mechanism.ECDSA in mechanisms:
            self._sign_prehashed = True
        elif Mechanism.ECDSA_SHA256 in mechanisms:
            self._sign_prehashed = False
        else:
            raise MechanismUnavailable(
                f"token {token_label!r} offers neither CKM_ECDSA nor CKM_ECDSA_SHA256 for signing"
            )
        if create_keys:
            for mech, what in (
                (Mechanism.AES_KEY_GEN, "AES key generation"),
                (Mechanism.EC_KEY_PAIR_GEN, "EC key pair generation"),
            ):
                if mech not in mechanisms:
                    raise MechanismUnavailable(f"token {token_label!r} lacks {what}")
        try:
            self._session = token.open(user_pin=pin, rw=True)
        except p11err.PinIncorrect as exc:
            raise PinIncorrect(f"the token {token_label!r} rejected the user PIN") from exc
        except p11err.PinLocked as exc:
            raise PinLocked(f"the user PIN of token {token_label!r} is locked") from exc
        except (p11err.PinInvalid, p11err.PinLenRange) as exc:
            raise PinIncorrect(f"the user PIN for token {token_label!r} is malformed") from exc
        if create_keys:
            if not self._keks():
                self._generate_kek(1)
            if self._signing_objects() is None:
                self._generate_signing_key()
        if not self._keks():
            raise KeyMissing(f"token {token_label!r} holds no key-encryption key")
        pair = self._signing_objects()
        if pair is None:
            raise KeyMissing(f"token {token_label!r} holds no signing key {SIGNING_LABEL!r}")
        self._public = _public_key_from_point(pair[1][Attribute.EC_POINT])

    def _logout(self) -> None:
        if self._session is not None:
            with contextlib.suppress(p11err.PKCS11Error):
                self._session.close()
            self._session = None

    def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise KeystoreClosed("keystore is closed")
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    # -- token objects -----------------------------------------------------------------------

    def _keks(self) -> dict[int, Any]:
        found = {}
        for obj in self._session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
        ):
            m = _KEK_LABEL.match(obj.label or "")
            if m:
                found[int(m.group(1))] = obj
        return found

    def _generate_kek(self, generation: int) -> Any:
        return self._session.generate_key(
            KeyType.AES, 256,
            label=f"{KEK_LABEL_PREFIX}{generation}",
            id=f"kek-{generation}".encode(),
            store=True,
            template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.PRIVATE: True,
            },
        )

    def _signing_objects(self) -> tuple[Any, Any] | None:
        priv = list(self._session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: SIGNING_LABEL}))
        pub = list(self._session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: SIGNING_LABEL}))
        if not priv or not pub:
            return None
        return priv[0], pub[0]

    def _generate_signing_key(self) -> None:
        params = self._session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        params.generate_keypair(
            store=True,
            label=SIGNING_LABEL,
            id=b"signing",
            private_template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.PRIVATE: True,
            },
            public_template={Attribute.VERIFY: True},
        )

    # -- sealing -----------------------------------------------------------------------------

    def seal(self, data: bytes, context: bytes) -> bytes:
        """Encrypt `data` under the current KEK with AES-256-GCM; `context` is bound as AAD."""
        data, context = _as_bytes(data, "data"), _as_bytes(context, "context")
        if len(context) > MAX_CONTEXT:
            raise ValueError(f"context is {len(context)} bytes; a blob holds at most {MAX_CONTEXT}")
        return self._call(lambda: self._seal(data, context))

    def _seal(self, data: bytes, context: bytes, generation: int | None = None) -> bytes:
        keks = self._keks()
        gen = max(keks) if generation is None else generation
        nonce = self._session.generate_random(NONCE_BYTES * 8)
        shell = SealedBlob(gen, context, nonce, b"")
        ct = keks[gen].encrypt(
            data, mechanism=Mechanism.AES_GCM,
            mechanism_param=GCMParams(nonce, shell.header(), 128),
        )
        return SealedBlob(gen, context, nonce, bytes(ct)).to_bytes()

    def unseal(self, blob: bytes, context: bytes) -> bytes:
        """Decrypt a blob from seal(); raise BlobContextMismatch or BlobTampered on failure."""
        context = _as_bytes(context, "context")
        parsed = SealedBlob.from_bytes(blob)
        if parsed.context != context:
            raise BlobContextMismatch(
                f"blob was sealed for context {parsed.context!r}, not {context!r}"
            )
        return self._call(lambda: self._unseal(parsed))

    def _unseal(self, blob: SealedBlob) -> bytes:
        kek = self._keks().get(blob.generation)
        if kek is None:
            raise KeyMissing(
                f"blob was sealed under KEK generation {blob.generation}, which the token no "
                "longer holds"
            )
        try:
            return bytes(kek.decrypt(
                blob.ciphertext, mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(blob.nonce, blob.header(), 128),
            ))
        except _AUTH_FAILURES as exc:
            raise BlobTampered(
                f"sealed blob for context {blob.context!r} failed authentication"
            ) from exc

    def kek_generation(self) -> int:
        return self._call(lambda: max(self._keks()))

    def rotate_kek(self) -> int:
        """Create the next KEK generation and re-seal every blob of the blob store under it.

        Order makes a crash harmless: the new KEK is stored first, every blob is re-sealed in
        memory, the store swaps each blob atomically, and only then are KEKs that no blob uses
        any more destroyed. Returns how many blobs were re-sealed. Every blob sealed by this
        keystore must be in the store, and callers must not seal-then-store concurrently with a
        rotation (a blob stored after the rotation read the store would lose its KEK).
        """
        store = self._blob_store
        if store is None:
            raise HsmError("rotate_kek needs the keystore opened with a blob_store")
        return self._call(lambda: self._rotate(store))

    def _rotate(self, store: BlobStore) -> int:
        keks = self._keks()
        new_gen = max(keks) + 1
        # Unseal everything before touching the token, so a bad blob aborts with nothing changed.
        plain = {}
        for name in store.names():
            blob = SealedBlob.from_bytes(store.read(name))
            plain[name] = (blob.context, self._unseal(blob))
        self._generate_kek(new_gen)
        resealed = {
            name: self._seal(data, ctx, new_gen) for name, (ctx, data) in plain.items()
        }
        store.replace(resealed)
        if hasattr(store, "discard_temporaries"):
            store.discard_temporaries()
        for gen, key in self._keks().items():
            if gen != new_gen:
                key.destroy()
        return len(resealed)

    # -- signing -----------------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 over SHA-256(data); DER-encoded signature."""
        data = _as_bytes(data, "data")
        return self._call(lambda: self._sign(data))

    def _sign(self, data: bytes) -> bytes:
        pair = self._signing_objects()
        if pair is None:
            raise KeyMissing(f"signing key {SIGNING_LABEL!r} is gone from the token")
        if self._sign_prehashed:
            raw = pair[0].sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
        else:
            raw = pair[0].sign(data, mechanism=Mechanism.ECDSA_SHA256)
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True if `signature` (DER) is this keystore's signature over `data`."""
        assert self._public is not None
        try:
            self._public.verify(bytes(signature), bytes(data), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def public_key_pem(self) -> str:
        assert self._public is not None
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    # -- misc --------------------------------------------------------------------------------

    def random(self, n: int) -> bytes:
        """`n` random bytes from the token's generator."""
        if not isinstance(n, int) or n < 1 or n > 1 << 20:
            raise ValueError(f"random() takes 1..1048576 bytes, got {n!r}")
        return self._call(lambda: bytes(self._session.generate_random(n * 8)))

    def keys(self) -> list[KeyInfo]:
        return self._call(self._keys)

    def _keys(self) -> list[KeyInfo]:
        out = []
        for gen, key in sorted(self._keks().items()):
            out.append(KeyInfo(key.label, "kek", bytes(key[Attribute.ID]).hex(), gen))
        pair = self._signing_objects()
        if pair is not None:
            for obj, kind in ((pair[0], "signing-private"), (pair[1], "signing-public")):
                out.append(KeyInfo(obj.label, kind, bytes(obj[Attribute.ID]).hex()))
        return out


def signing_public_key_pem(module: str, token_label: str,
                           config: str | os.PathLike[str] | None = None) -> str:
    """The signing key's public half as the token itself holds it, read without logging in.

    A public key object needs no PIN, so a verifier learns the key from the hardware rather
    than from a file someone with write access to the state directory could replace. Raises
    the same errors as ``Keystore.open`` for a missing module or token, KeyMissing without the
    key.
    """
    if not os.path.exists(module):
        raise ModuleNotFound(f"PKCS#11 module {module} does not exist")
    if config is not None and not os.path.isfile(config):
        raise HsmError(f"SoftHSM2 configuration {config} does not exist")
    lib = _modules.acquire(module, None if config is None else str(config))
    try:
        try:
            token = lib.get_token(token_label=token_label)
        except p11err.NoSuchToken as exc:
            raise TokenNotFound(f"no PKCS#11 token labelled {token_label!r}") from exc
        except p11err.MultipleTokensReturned as exc:
            raise TokenNotFound(f"more than one token labelled {token_label!r}") from exc
        try:
            with token.open() as session:
                found = list(session.get_objects(
                    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: SIGNING_LABEL}))
                point = bytes(found[0][Attribute.EC_POINT]) if found else None
        except p11err.PKCS11Error as exc:
            raise HsmError(f"cannot read token {token_label!r}: {exc!r}") from exc
    finally:
        _modules.release(module)
    if point is None:
        raise KeyMissing(f"token {token_label!r} holds no public signing key {SIGNING_LABEL!r}")
    return _public_key_from_point(point).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _as_bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _public_key_from_point(ec_point: bytes) -> ec.EllipticCurvePublicKey:
    # CKA_EC_POINT is a DER OCTET STRING wrapping the uncompressed point (SoftHSM2 and most
    # vendors); some modules return the bare point.
    point = bytes(ec_point)
    if len(point) >= 2 and point[0] == 0x04 and point[1] in (0x21, 0x41) and (
        len(point) == point[1] + 2
    ):
        point = point[2:]
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
