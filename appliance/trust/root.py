"""The trust root as the daemon uses it: provisioning, opening (or starting degraded), keys,
KEK rotation, PCRs and attestation bundles.

The HSM user PIN exists in clear only in memory: provisioning seals it with the TPM to the PCR
policy and opening unseals it. If the TPM refuses (a changed boot chain) the trust root opens
degraded: keys locked, the reason reported, and no other way in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, TypeVar

from appliance.state.atomicfile import write_atomic, write_json
from appliance.trust.anchor import LedgerKey, choose_key, fingerprint_pem
from appliance.trust.bundle import BUNDLE_FORMAT, signed_part, verify_bundle
from appliance.trust.errors import TrustError, TrustLocked, TrustNotProvisioned
from appliance.trust.layout import (
    GOLDEN_PCRS,
    QUOTE_PCRS,
    SEALED_PIN_PCRS,
    TOKEN_LABEL,
    TrustLayout,
)
from appliance.trust.ledger import read_head
from hsm import (
    SOFTHSM2_MODULE,
    BlobStore,
    DirBlobStore,
    HsmError,
    Keystore,
    create_softhsm_token,
    softhsm_config,
)
from tee import Swtpm, TeeError, Tpm, UnsealRefused

T = TypeVar("T")
DEVICE_TCTI = "device:/dev/tpmrm0"
_KEY_ID_PREFIX = "paillier-"
# a quote's nonce: at least 8 bytes so it cannot be guessed, at most what TPM2B_DATA holds
NONCE_MIN, NONCE_MAX = 8, 64


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_fingerprint_pem = fingerprint_pem


def _paillier_fingerprint(n: int) -> str:
    return "sha256:" + sha256(n.to_bytes((n.bit_length() + 7) // 8, "big")).hexdigest()


# -- provisioning ------------------------------------------------------------------------------

def provision(
    state_dir: str | os.PathLike[str],
    dev: bool = True,
    node_id: str | None = None,
    *,
    module: str | None = None,
    token_label: str = TOKEN_LABEL,
    pin: str | None = None,
    tcti: str | None = None,
) -> dict[str, Any]:
    """Set up the trust root under `state_dir`; idempotent (an existing one is reported).

    dev=True: a SoftHSM2 token under STATE/hsm with random PINs and an swtpm under STATE/tpm.
    dev=False: the vendor `module`'s token `token_label`, logged in with `pin`, and the TPM at
    `tcti` (default /dev/tpmrm0). Either way: KEK and signing key on the token, the attestation
    key in the TPM, golden PCRs recorded, the user PIN sealed to PCRs 7 and 14.
    """
    layout = TrustLayout(state_dir)
    if layout.trust_json.exists():
        info = json.loads(layout.trust_json.read_text())
        return {**_summary(layout, info), "created": False}
    if not dev and (module is None or pin is None):
        raise TrustError("production provisioning needs the PKCS#11 module path and user PIN")
    layout.path.mkdir(parents=True, exist_ok=True)
    # No trust.json means no earlier run finished: whatever it left holds no appliance keys.
    for leftover in (layout.hsm_dir, layout.tpm_dir) if dev else ():
        shutil.rmtree(leftover, ignore_errors=True)
    swtpm = Swtpm(layout.tpm_dir).start() if dev else None
    try:
        with Tpm(swtpm.tcti if swtpm else (tcti or DEVICE_TCTI)) as tpm:
            ak = tpm.attestation_key()
            golden = tpm.pcrs(GOLDEN_PCRS)
            if dev:
                so_pin, user_pin = secrets.token_hex(16), secrets.token_hex(16)
                layout.hsm_dir.mkdir(mode=0o700, exist_ok=True)
                config = create_softhsm_token(layout.hsm_dir, token_label, so_pin, user_pin)
                module = SOFTHSM2_MODULE
            else:
                so_pin, user_pin, config = None, str(pin), None
            with Keystore.open(str(module), token_label, user_pin,
                               config=None if config is None else str(config),
                               create_keys=True) as ks:
                signing_pem = ks.public_key_pem()
                node_id = node_id or ks.random(16).hex()
            layout.hsm_dir.mkdir(mode=0o700, exist_ok=True)
            write_atomic(layout.pin_sealed, tpm.seal(user_pin.encode(), SEALED_PIN_PCRS))
            if so_pin is not None:
                write_atomic(layout.so_pin_sealed, tpm.seal(so_pin.encode(), SEALED_PIN_PCRS))
            del user_pin, so_pin
        layout.keys_dir.mkdir(mode=0o700, exist_ok=True)
        write_json(layout.golden_pcrs, {
            "bank": "sha256",
            "pcrs": {str(i): v.hex() for i, v in sorted(golden.items())},
            "ak_public_pem": ak.public_pem,
            "node_public_pem": signing_pem,
            "node_id": node_id,
            "recorded": _now(),
        }, mode=0o644)
        info = {
            "version": 1,
            "dev": dev,
            "module": str(module),
            "token_label": token_label,
            "tcti": None if dev else (tcti or DEVICE_TCTI),
            "node_id": node_id,
            "ak_public_pem": ak.public_pem,
            "signing_public_pem": signing_pem,
            "sealed_pcrs": list(SEALED_PIN_PCRS),
            "quote_pcrs": list(QUOTE_PCRS),
            "created": _now(),
        }
        # trust.json last: its presence means provisioning completed.
        write_json(layout.trust_json, info, mode=0o644)
    except BaseException:
        if dev:
            shutil.rmtree(layout.hsm_dir, ignore_errors=True)
        for path in (layout.golden_pcrs, layout.pin_sealed, layout.so_pin_sealed):
            path.unlink(missing_ok=True)
        raise
    finally:
        if swtpm is not None:
            swtpm.stop()
    return {**_summary(layout, info), "created": True}


def _summary(layout: TrustLayout, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "state_dir": str(layout.path),
        "dev": info["dev"],
        "node_id": info["node_id"],
        "token_label": info["token_label"],
        "ak_fingerprint": _fingerprint_pem(info["ak_public_pem"]),
        "signing_fingerprint": _fingerprint_pem(info["signing_public_pem"]),
        "golden_pcrs": str(layout.golden_pcrs),
    }


# -- the open trust root -----------------------------------------------------------------------

class TrustRoot:
    """The daemon's handle on HSM and TPM. Safe to call from any thread: HSM work runs on the
    Keystore's owner thread, TPM work on this object's single TPM thread."""

    def __init__(self, layout: TrustLayout) -> None:  # use TrustRoot.open
        self.layout = layout
        self.info: dict[str, Any] | None = None
        self.keystore: Keystore | None = None
        self.blob_store: BlobStore | None = None
        self._swtpm: Swtpm | None = None
        self._tpm: Tpm | None = None
        self._tpm_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpm")
        self._hsm_health: dict[str, Any] = {"ok": None, "detail": "not provisioned"}
        self._tpm_health: dict[str, Any] = {"ok": None, "detail": "not provisioned"}
        self._lock = threading.Lock()  # orders keygen's seal-and-store against KEK rotation

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], tcti: str | None = None) -> TrustRoot:
        """Open the trust root; never raises for HSM or TPM trouble, opens degraded instead.

        `tcti` overrides the TPM recorded at provisioning (in development the default is to
        start swtpm on STATE/tpm).
        """
        root = cls(TrustLayout(state_dir))
        layout = root.layout
        if not layout.trust_json.exists():
            return root
        root.info = json.loads(layout.trust_json.read_text())
        info = root.info
        root.blob_store = DirBlobStore(layout.keys_dir)
        try:
            if tcti is None and info["dev"]:
                root._swtpm = Swtpm(layout.tpm_dir).start()
                tcti = root._swtpm.tcti
            tcti = tcti or info["tcti"] or DEVICE_TCTI
            root._tpm = root._on_tpm(lambda: Tpm(tcti))
            ak = root._on_tpm(lambda: root._tpm.attestation_key())
            if ak.public_pem != info["ak_public_pem"]:
                raise TeeError("the TPM's attestation key differs from the provisioned one")
            root._tpm_health = {"ok": True, "detail": tcti}
        except (TeeError, OSError) as exc:
            root._tpm_health = {"ok": False, "detail": f"TPM unavailable: {exc}"}
            root._hsm_health = {"ok": False, "detail": "locked: the TPM is needed to unseal "
                                "the HSM PIN"}
            return root
        try:
            sealed = layout.pin_sealed.read_bytes()
            pin = root._on_tpm(lambda: root._tpm.unseal(sealed)).decode()
        except UnsealRefused:
            root._hsm_health = {"ok": False, "detail": (
                "locked: the TPM refused to unseal the HSM PIN because PCRs "
                f"{', '.join(map(str, info['sealed_pcrs']))} changed since provisioning "
                "(boot chain changed)")}
            return root
        except (TeeError, OSError, UnicodeDecodeError) as exc:
            root._hsm_health = {"ok": False, "detail": f"locked: cannot unseal the HSM PIN: {exc}"}
            return root
        try:
            config = softhsm_config(layout.hsm_dir) if info["dev"] else None
            root.keystore = Keystore.open(
                info["module"], info["token_label"], pin,
                config=None if config is None else str(config), blob_store=root.blob_store)
            del pin
            if root.keystore.public_key_pem() != info["signing_public_pem"]:
                root.keystore.close()
                root.keystore = None
                raise HsmError("the token's signing key differs from the provisioned one")
            root._hsm_health = {"ok": True, "detail": f"token {info['token_label']!r} unlocked"}
        except HsmError as exc:
            root._hsm_health = {"ok": False, "detail": f"locked: {exc}"}
        return root

    def _on_tpm(self, fn: Any) -> Any:
        return self._tpm_thread.submit(fn).result()

    def close(self) -> None:
        if self.keystore is not None:
            self.keystore.close()
            self.keystore = None
        if self._tpm is not None:
            tpm, self._tpm = self._tpm, None
            self._on_tpm(tpm.close)
        self._tpm_thread.shutdown(wait=True)
        if self._swtpm is not None:
            self._swtpm.stop()
            self._swtpm = None

    def __enter__(self) -> TrustRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------------

    @property
    def provisioned(self) -> bool:
        return self.info is not None

    @property
    def degraded(self) -> bool:
        return self.provisioned and (self.keystore is None or self._tpm is None)

    @property
    def degraded_reasons(self) -> list[str]:
        if not self.provisioned:
            return []
        return [f"{name}: {h['detail']}" for name, h in
                (("tpm", self._tpm_health), ("hsm", self._hsm_health)) if h["ok"] is False]

    @property
    def signer(self) -> Keystore | None:
        """What the audit ledger signs with; None while the keys are locked."""
        return self.keystore

    @property
    def signing_public_pem(self) -> str | None:
        return None if self.info is None else self.info["signing_public_pem"]

    def ledger_key(self) -> LedgerKey:
        """The key that verifies the audit ledger, anchored in the token: its open session's
        key when unlocked, else its public key object read without the PIN; any disagreement
        with trust.json is the LedgerKey's ``problem``."""
        token_pem = None if self.keystore is None else self.keystore.public_key_pem()
        return choose_key(self.layout, token_pem=token_pem, read_token=self.keystore is None)

    def health(self) -> dict[str, dict[str, Any]]:
        return {"hsm": dict(self._hsm_health), "tpm": dict(self._tpm_health)}

    def _need_keystore(self) -> Keystore:
        if self.info is None:
            raise TrustNotProvisioned("the trust root is not provisioned")
        if self.keystore is None:
            raise TrustLocked(f"keys are locked: {self._hsm_health['detail']}")
        return self.keystore

    def _need_tpm(self) -> Tpm:
        if self.info is None:
            raise TrustNotProvisioned("the trust root is not provisioned")
        if self._tpm is None:
            raise TrustLocked(f"the TPM is unavailable: {self._tpm_health['detail']}")
        return self._tpm

    # -- keys ---------------------------------------------------------------------------------

    def keys(self) -> dict[str, Any]:
        """The API's key list: token state, the token's keys and the sealed Paillier keys."""
        if self.info is None:
            raise TrustNotProvisioned("the trust root is not provisioned")
        keys: list[dict[str, Any]] = []
        mechanisms_ok = self.keystore is not None
        if self.keystore is not None:
            token_keys = self.keystore.keys()
            for k in token_keys:
                if k.kind == "kek":
                    keys.append({"id": k.label, "kind": "kek", "bits": 256, "fingerprint": None,
                                 "created": None, "generation": k.generation})
                elif k.kind == "signing-private":
                    keys.append({"id": k.label, "kind": "signing", "bits": 256,
                                 "fingerprint": _fingerprint_pem(self.info["signing_public_pem"]),
                                 "created": self.info["created"]})
        for meta in sorted(self.layout.keys_dir.glob(f"{_KEY_ID_PREFIX}*.json")):
            data = json.loads(meta.read_text())
            keys.append({k: data[k] for k in ("id", "kind", "bits", "fingerprint", "created")})
        return {
            "token": {"label": self.info["token_label"], "present": self.keystore is not None,
                      "mechanisms_ok": mechanisms_ok},
            "keys": keys,
        }

    def keygen(self, bits: int = 2048) -> dict[str, Any]:
        """Generate a Paillier key pair; the private half is stored only sealed by the KEK."""
        from accel import paillier

        ks = self._need_keystore()
        try:
            pk, sk = paillier.keygen(bits=bits)
        except (TypeError, ValueError) as exc:
            raise TrustError(f"cannot generate a {bits!r}-bit Paillier key: {exc}") from exc
        key_id = _KEY_ID_PREFIX + ks.random(8).hex()
        secret = json.dumps({"p": format(sk.p, "x"), "q": format(sk.q, "x")}).encode()
        meta = {"id": key_id, "kind": "paillier", "bits": pk.n.bit_length(),
                "fingerprint": _paillier_fingerprint(pk.n), "created": _now(),
                "n": format(pk.n, "x")}
        assert self.blob_store is not None
        # Held from seal to store write: a KEK rotation in between would miss this blob and
        # destroy the KEK it was sealed under.
        with self._lock:
            blob = ks.seal(secret, context=f"paillier-key:{key_id}".encode())
            del secret, sk
            # Sealed blob first, metadata second: a key is listed once its secret is stored.
            self.blob_store.replace({key_id: blob})
            write_json(self.layout.keys_dir / f"{key_id}.json", meta, mode=0o644)
        return {k: meta[k] for k in ("id", "kind", "bits", "fingerprint", "created")}

    def _key_meta(self, key_id: str) -> dict[str, Any]:
        if not isinstance(key_id, str) or not key_id.startswith(_KEY_ID_PREFIX) or "/" in key_id:
            raise TrustError(f"{key_id!r} is not a Paillier key id")
        path = self.layout.keys_dir / f"{key_id}.json"
        if not path.is_file():
            raise TrustError(f"no key {key_id!r}")
        return json.loads(path.read_text())

    def public_key(self, key_id: str) -> Any:
        from accel import paillier

        return paillier.PublicKey(int(self._key_meta(key_id)["n"], 16))

    def private_key(self, key_id: str) -> Any:
        """Unseal a Paillier private key into memory (decryption happens in the daemon)."""
        from accel import paillier

        ks = self._need_keystore()
        meta = self._key_meta(key_id)
        assert self.blob_store is not None
        secret = json.loads(ks.unseal(self.blob_store.read(key_id),
                                      context=f"paillier-key:{key_id}".encode()))
        pk = paillier.PublicKey(int(meta["n"], 16))
        return paillier.PrivateKey(pk, int(secret["p"], 16), int(secret["q"], 16))

    def store_secret(self, name: str, data: bytes) -> None:
        """Keep `data` sealed by the KEK under `name` (resealed by every KEK rotation)."""
        ks = self._need_keystore()
        assert self.blob_store is not None
        with self._lock:
            self.blob_store.replace({name: ks.seal(data, context=f"secret:{name}".encode())})

    def load_secret(self, name: str) -> bytes | None:
        """A secret `store_secret` kept, unsealed into memory; None when there is none."""
        ks = self._need_keystore()
        assert self.blob_store is not None
        if name not in self.blob_store.names():
            return None
        return ks.unseal(self.blob_store.read(name), context=f"secret:{name}".encode())

    def rotate_kek(self) -> dict[str, Any]:
        with self._lock:
            resealed = self._need_keystore().rotate_kek()
        return {"ok": True, "resealed": resealed}

    # -- attestation --------------------------------------------------------------------------

    def golden(self) -> dict[str, Any]:
        if not self.layout.golden_pcrs.is_file():
            raise TrustNotProvisioned("no golden PCRs recorded")
        return json.loads(self.layout.golden_pcrs.read_text())

    def pcrs(self) -> dict[str, Any]:
        tpm = self._need_tpm()
        assert self.info is not None
        now = self._on_tpm(lambda: tpm.pcrs(self.info["quote_pcrs"]))
        golden = self.golden()["pcrs"]
        current = {str(i): v.hex() for i, v in sorted(now.items())}
        return {"pcrs": current, "golden": golden,
                # None: reported by the quote but not judged by the golden policy
                "match": {i: (golden[i] == v if i in golden else None)
                          for i, v in current.items()}}

    def attest(self, nonce: bytes) -> dict[str, Any]:
        """A signed attestation bundle answering `nonce` (8..64 bytes)."""
        nonce = bytes(nonce)
        if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            raise TrustError(
                f"nonce must be {NONCE_MIN} to {NONCE_MAX} bytes ({2 * NONCE_MIN} to "
                f"{2 * NONCE_MAX} hex digits), got {len(nonce)} bytes; e.g. "
                f"$(openssl rand -hex {2 * NONCE_MIN})")
        tpm = self._need_tpm()
        ks = self._need_keystore()
        assert self.info is not None
        quote = self._on_tpm(lambda: tpm.quote(nonce, self.info["quote_pcrs"]))
        qj = quote.to_json()
        bundle = {
            "format": BUNDLE_FORMAT,
            "node_id": self.info["node_id"],
            "time": _now(),
            "nonce": nonce.hex(),
            "ak_public_pem": self.info["ak_public_pem"],
            "quote": qj,
            "pcrs": qj["pcrs"],
            "node_public_pem": ks.public_key_pem(),
            # signed with the rest: a verifier keeping it can later prove records were cut
            # from the end of the ledger (audit verify --expect-head)
            "ledger_head": read_head(self.layout.db_path).to_json(),
        }
        bundle["signature"] = ks.sign(signed_part(bundle)).hex()
        return bundle

    @staticmethod
    def verify_bundle(bundle: dict[str, Any], policy: dict[str, Any] | None,
                      nonce: bytes | None = None) -> dict[str, Any]:
        return verify_bundle(bundle, policy, nonce)

    def extend_pcr(self, pcr: int, data: bytes) -> None:
        """Measure `data` into PCR `pcr` (boot-chain measurement; development and tests)."""
        tpm = self._need_tpm()
        self._on_tpm(lambda: tpm.extend(pcr, data))

