"""The TPM 2.0 through tpm2-pytss's ESAPI: attestation key, quotes, PCR reads and sealing.

An ESAPI context is not thread-safe: one Tpm object belongs to one thread (the daemon's trust
thread). Sealed objects live under a storage root key (ECC P-256, owner hierarchy, persisted at
SRK_HANDLE). The attestation key lives under an EK-style primary in the endorsement hierarchy
(persisted at EK_HANDLE): the TPM obfuscates reset and restart counters in quotes signed by keys
of the owner hierarchy, and the verifier needs the real counters to see them go backwards. The
attestation key is persisted at AK_HANDLE so its public part stays the same across restarts and
peers can pin it. Handles follow the TCG provisioning guidance.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_ECC,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
    TPMA_SESSION,
)
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_DIGEST,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
)

from tee.errors import SealedBlobMalformed, TeeError, TpmUnavailable, UnsealRefused
from tee.quote import Quote

# The TSS logs every TPM error response to stderr; the exceptions below already say what failed.
os.environ.setdefault("TSS2_LOG", "all+NONE")

SRK_HANDLE = 0x81000001
EK_HANDLE = 0x81010001
AK_HANDLE = 0x81010002
MAX_SEALED_BYTES = 128  # TPM2B_SENSITIVE_DATA limit on every TPM
_SEALED_MAGIC = b"PECT"
_SEALED_VERSION = 1
_PCR_FAILURES = (TPM2_RC.POLICY_FAIL, TPM2_RC.VALUE, TPM2_RC.PCR_CHANGED)

_SRK_TEMPLATE = "ecc256:aes128cfb"
_AK_TEMPLATE = "ecc256:ecdsa-sha256:null"
_SRK_ATTRS = (
    TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)
_AK_ATTRS = (
    TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)


@dataclass(frozen=True)
class AttestationKey:
    handle: int
    public_pem: str


def _pcr_selection(pcrs: Iterable[int]) -> TPML_PCR_SELECTION:
    indices = sorted(set(pcrs))
    if not indices or any(not isinstance(i, int) or not 0 <= i <= 23 for i in indices):
        raise ValueError(f"PCR indices must be a non-empty list of 0..23, got {list(pcrs)!r}")
    return TPML_PCR_SELECTION.parse("sha256:" + ",".join(str(i) for i in indices))


class Tpm:
    """One TPM connection: `Tpm("swtpm:host=127.0.0.1,port=P")` or `Tpm("device:/dev/tpmrm0")`."""

    def __init__(self, tcti: str) -> None:
        self.tcti = tcti
        try:
            self._ctx = ESAPI(tcti)
        except (TSS2_Exception, RuntimeError, OSError) as exc:
            raise TpmUnavailable(f"cannot open TPM {tcti!r}: {exc}") from exc

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys --------------------------------------------------------------------------------

    def _persistent(self, handle: int) -> ESYS_TR | None:
        _more, data = self._ctx.get_capability(TPM2_CAP.HANDLES, handle, 1)
        present = [h for h in data.data.handles if h == handle]
        return self._ctx.tr_from_tpmpublic(handle) if present else None

    def _primary(self, persistent: int, hierarchy: ESYS_TR) -> ESYS_TR:
        found = self._persistent(persistent)
        if found is not None:
            return found
        public = TPM2B_PUBLIC(TPMT_PUBLIC.parse(_SRK_TEMPLATE, objectAttributes=_SRK_ATTRS))
        handle, *_ = self._ctx.create_primary(TPM2B_SENSITIVE_CREATE(), public, hierarchy)
        try:
            return self._ctx.evict_control(ESYS_TR.OWNER, handle, persistent)
        finally:
            self._ctx.flush_context(handle)

    def _srk(self) -> ESYS_TR:
        return self._primary(SRK_HANDLE, ESYS_TR.OWNER)

    def attestation_key(self) -> AttestationKey:
        """The persistent restricted ECC P-256 signing key; created on first use."""
        ak = self._persistent(AK_HANDLE)
        if ak is None:
            public = TPM2B_PUBLIC(TPMT_PUBLIC.parse(_AK_TEMPLATE, objectAttributes=_AK_ATTRS))
            ek = self._primary(EK_HANDLE, ESYS_TR.ENDORSEMENT)
            priv, pub, *_ = self._ctx.create(ek, TPM2B_SENSITIVE_CREATE(), public)
            loaded = self._ctx.load(ek, priv, pub)
            try:
                ak = self._ctx.evict_control(ESYS_TR.OWNER, loaded, AK_HANDLE)
            finally:
                self._ctx.flush_context(loaded)
        pub, _, _ = self._ctx.read_public(ak)
        return AttestationKey(AK_HANDLE, _public_pem(pub))

    # -- PCRs and quotes ---------------------------------------------------------------------

    def pcrs(self, pcrs: Iterable[int]) -> dict[int, bytes]:
        """Current SHA-256 bank values of the given PCRs."""
        wanted = sorted(set(pcrs))
        _pcr_selection(wanted)
        out: dict[int, bytes] = {}
        # A TPM returns at most 8 digests per read; ask again for what is left.
        while len(out) < len(wanted):
            left = [i for i in wanted if i not in out]
            _, sel, digests = self._ctx.pcr_read(_pcr_selection(left))
            got = [i for s in sel.pcrSelections[: sel.count] for i in _bitmap(s)]
            if not got:
                raise TeeError(f"TPM returned no values for PCRs {left}")
            for i, d in zip(got, digests.digests[: digests.count], strict=False):
                out[i] = bytes(d)
        return out

    def extend(self, pcr: int, data: bytes) -> None:
        """Extend PCR `pcr` of the SHA-256 bank with SHA-256(data) (measured-boot style)."""
        _pcr_selection([pcr])
        digest = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        digest.digest.sha256 = hashlib.sha256(bytes(data)).digest()
        values = TPML_DIGEST_VALUES([digest])
        self._ctx.pcr_extend(ESYS_TR.PCR0 + pcr, values)

    def quote(self, nonce: bytes, pcrs: Iterable[int]) -> Quote:
        nonce = bytes(nonce)
        if not 8 <= len(nonce) <= 64:
            raise ValueError(f"nonce must be 8..64 bytes, got {len(nonce)}")
        indices = sorted(set(pcrs))
        ak = self._persistent(AK_HANDLE)
        if ak is None:
            self.attestation_key()
            ak = self._persistent(AK_HANDLE)
        before = self.pcrs(indices)
        attest, sig = self._ctx.quote(ak, _pcr_selection(indices), nonce)
        after = self.pcrs(indices)
        if before != after:
            raise TeeError("PCRs changed while quoting; ask again")
        der = encode_dss_signature(
            int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
            int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"),
        )
        return Quote(attest=bytes(attest), signature=der, pcrs=after)

    # -- sealing -----------------------------------------------------------------------------

    def _policy_digest(self, selection: TPML_PCR_SELECTION) -> bytes:
        session = self._ctx.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256,
        )
        try:
            self._ctx.policy_pcr(session, TPM2B_DIGEST(), selection)
            return bytes(self._ctx.policy_get_digest(session))
        finally:
            self._ctx.flush_context(session)

    def seal(self, secret: bytes, pcrs: Iterable[int]) -> bytes:
        """Seal `secret` (at most 128 bytes) to the current values of `pcrs`.

        The blob holds the sealed object's public and private parts and the PCR selection; it
        is useless without this TPM, and the TPM releases the secret only while the PCRs hold
        the values they had now.
        """
        secret = bytes(secret)
        if not 1 <= len(secret) <= MAX_SEALED_BYTES:
            raise ValueError(f"a sealed secret is 1..{MAX_SEALED_BYTES} bytes, got {len(secret)}")
        indices = sorted(set(pcrs))
        selection = _pcr_selection(indices)
        public = TPMT_PUBLIC(
            type=TPM2_ALG.KEYEDHASH,
            nameAlg=TPM2_ALG.SHA256,
            objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT,
            authPolicy=self._policy_digest(selection),
        )
        public.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG.NULL
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=secret))
        priv, pub, *_ = self._ctx.create(self._srk(), sensitive, TPM2B_PUBLIC(public))
        head = _SEALED_MAGIC + bytes([_SEALED_VERSION, len(indices), *indices])
        return head + _sized(pub.marshal()) + _sized(priv.marshal())

    def unseal(self, blob: bytes) -> bytes:
        """Return the sealed secret; UnsealRefused if the PCRs differ from sealing time."""
        indices, pub, priv = _parse_sealed(bytes(blob))
        srk = self._srk()
        try:
            handle = self._ctx.load(srk, priv, pub)
        except TSS2_Exception as exc:
            raise SealedBlobMalformed(f"the TPM rejected the sealed blob: {exc}") from exc
        # Salted with the SRK and encrypting responses: the secret does not cross the bus
        # (or the simulator's socket) in clear.
        session = self._ctx.start_auth_session(
            srk, ESYS_TR.NONE, TPM2_SE.POLICY,
            TPMT_SYM_DEF.parse("aes128cfb"),
            TPM2_ALG.SHA256,
        )
        try:
            self._ctx.trsess_set_attributes(
                session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION
            )
            self._ctx.policy_pcr(session, TPM2B_DIGEST(), _pcr_selection(indices))
            try:
                return bytes(self._ctx.unseal(handle, session1=session))
            except TSS2_Exception as exc:
                if _rc_base(exc) in _PCR_FAILURES:
                    raise UnsealRefused(
                        f"the TPM refused to unseal: PCRs {indices} differ from sealing time"
                    ) from exc
                raise
        finally:
            self._ctx.flush_context(session)
            self._ctx.flush_context(handle)


def _rc_base(exc: TSS2_Exception) -> int:
    rc = int(exc.rc) & 0xFFFF
    # Format-one response codes carry a parameter/handle/session number in bits 8..11.
    return rc & 0xBF if rc & 0x80 else rc


def _bitmap(selection: TPMS_PCR_SELECTION) -> list[int]:
    raw = bytes(selection.pcrSelect)[: selection.sizeofSelect]
    return [i for i in range(len(raw) * 8) if raw[i // 8] >> (i % 8) & 1]


def _sized(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _parse_sealed(blob: bytes) -> tuple[list[int], TPM2B_PUBLIC, TPM2B_PRIVATE]:
    if blob[:4] != _SEALED_MAGIC:
        raise SealedBlobMalformed("not a TPM-sealed blob (bad magic)")
    if len(blob) < 6 or blob[4] != _SEALED_VERSION:
        raise SealedBlobMalformed("unsupported TPM-sealed blob version")
    n = blob[5]
    pos = 6 + n
    indices = list(blob[6:pos])
    parts = []
    for _ in range(2):
        if pos + 4 > len(blob):
            raise SealedBlobMalformed("TPM-sealed blob truncated")
        (size,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if pos + size > len(blob):
            raise SealedBlobMalformed("TPM-sealed blob truncated")
        parts.append(blob[pos:pos + size])
        pos += size
    if pos != len(blob) or not indices:
        raise SealedBlobMalformed("TPM-sealed blob has stray bytes or no PCRs")
    try:
        pub, _ = TPM2B_PUBLIC.unmarshal(parts[0])
        priv, _ = TPM2B_PRIVATE.unmarshal(parts[1])
    except Exception as exc:
        raise SealedBlobMalformed(f"TPM-sealed blob does not parse: {exc}") from exc
    return indices, pub, priv


def _public_pem(public: TPM2B_PUBLIC) -> str:
    area = public.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise TeeError("attestation key is not ECC P-256")
    x = bytes(area.unique.ecc.x).rjust(32, b"\0")
    y = bytes(area.unique.ecc.y).rjust(32, b"\0")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
