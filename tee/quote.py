"""TPM 2.0 quotes and their verification: plain functions any peer can run without a TPM.

The verifier parses TPMS_ATTEST itself (TPM 2.0 Part 2, 10.12) so that it depends only on
`cryptography`, and checks in a fixed order; the verdict names the first check that failed.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tee.errors import QuoteMalformed

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
CHECKS = ("signature", "magic", "type", "nonce", "pcr_digest", "policy", "clock")


@dataclass(frozen=True)
class Quote:
    """A quote as the TPM returned it, with the PCR values it covers."""

    attest: bytes  # TPMS_ATTEST as marshalled by the TPM; the signed message
    signature: bytes  # ECDSA signature, DER
    pcrs: dict[int, bytes]  # PCR index -> SHA-256 bank value
    hash_alg: str = "sha256"

    def to_json(self) -> dict[str, Any]:
        return {
            "attest": self.attest.hex(),
            "signature": self.signature.hex(),
            "pcrs": {str(i): v.hex() for i, v in sorted(self.pcrs.items())},
            "hash_alg": self.hash_alg,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Quote:
        try:
            return cls(
                attest=bytes.fromhex(obj["attest"]),
                signature=bytes.fromhex(obj["signature"]),
                pcrs={int(k): bytes.fromhex(v) for k, v in obj["pcrs"].items()},
                hash_alg=str(obj.get("hash_alg", "sha256")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QuoteMalformed(f"quote JSON is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def to_json(self) -> dict[str, Any]:
        return {"clock": self.clock, "reset_count": self.reset_count,
                "restart_count": self.restart_count, "safe": self.safe}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ClockInfo:
        try:
            return cls(int(obj["clock"]), int(obj["reset_count"]), int(obj["restart_count"]),
                       bool(obj.get("safe", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"clock info is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class Attestation:
    """The fields of a TPMS_ATTEST carrying a TPMS_QUOTE_INFO."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: ClockInfo
    firmware_version: int
    pcr_select: list[tuple[int, list[int]]]  # (hash algorithm id, PCR indices)
    pcr_digest: bytes


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    failed_check: str | None = None
    clock: ClockInfo | None = field(default=None)  # store as last_seen for the next quote

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "failed_check": self.failed_check,
                "clock": None if self.clock is None else self.clock.to_json()}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise QuoteMalformed(f"attestation truncated at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def sized(self) -> bytes:
        return self.take(self.u16())


def parse_attest(data: bytes) -> Attestation:
    """Parse a marshalled TPMS_ATTEST of a quote; raise QuoteMalformed on any inconsistency."""
    r = _Reader(bytes(data))
    magic, typ = r.u32(), r.u16()
    signer, extra = r.sized(), r.sized()
    clock = ClockInfo(r.u64(), r.u32(), r.u32(), bool(r.u8()))
    firmware = r.u64()
    if typ != TPM_ST_ATTEST_QUOTE:
        # Other attestation types carry other bodies; report what we have for the verdict.
        return Attestation(magic, typ, signer, extra, clock, firmware, [], b"")
    selections = []
    for _ in range(r.u32()):
        alg, size = r.u16(), r.u8()
        bitmap = r.take(size)
        indices = [i for i in range(size * 8) if bitmap[i // 8] >> (i % 8) & 1]
        selections.append((alg, indices))
    digest = r.sized()
    if r.pos != len(r.data):
        raise QuoteMalformed(f"{len(r.data) - r.pos} stray bytes after the attestation")
    return Attestation(magic, typ, signer, extra, clock, firmware, selections, digest)


def pcr_composite_digest(values: Mapping[int, bytes]) -> bytes:
    """SHA-256 over the PCR values concatenated in ascending index order, as TPM2_Quote does."""
    return hashlib.sha256(b"".join(values[i] for i in sorted(values))).digest()


def verify_quote(
    ak_public_pem: str | bytes,
    quote: Quote,
    nonce: bytes,
    policy: Mapping[int, bytes] | None,
    last_seen: ClockInfo | Mapping[str, Any] | None = None,
) -> Verdict:
    """Check a quote against the attestation key, the nonce, a PCR policy and the last clock.

    `policy` maps PCR index to its expected SHA-256 value; None skips the policy check (the
    quote is then only proven genuine and fresh). `last_seen` is the clock of the previous quote
    accepted from this TPM: reset and restart counters and the clock must not go backwards.
    """
    def fail(check: str, reason: str, clock: ClockInfo | None = None) -> Verdict:
        return Verdict(False, f"{check}: {reason}", check, clock)

    try:
        pem = ak_public_pem.encode() if isinstance(ak_public_pem, str) else bytes(ak_public_pem)
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        return fail("signature", f"attestation key is not a PEM public key ({exc})")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return fail("signature", "attestation key is not an EC key")
    try:
        key.verify(quote.signature, quote.attest, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return fail("signature", "signature does not verify with the attestation key")

    try:
        att = parse_attest(quote.attest)
    except QuoteMalformed as exc:
        return fail("magic", str(exc))
    if att.magic != TPM_GENERATED_VALUE:
        return fail("magic", f"magic {att.magic:#x} is not TPM_GENERATED_VALUE")
    if att.type != TPM_ST_ATTEST_QUOTE:
        return fail("type", f"attestation type {att.type:#x} is not TPM_ST_ATTEST_QUOTE")
    if att.extra_data != bytes(nonce):
        return fail("nonce", "quote does not carry the nonce that was asked for", att.clock)

    if quote.hash_alg != "sha256" or any(a != TPM_ALG_SHA256 for a, _ in att.pcr_select):
        return fail("pcr_digest", "only the SHA-256 PCR bank is supported", att.clock)
    selected = sorted(i for _, idx in att.pcr_select for i in idx)
    if selected != sorted(quote.pcrs):
        return fail("pcr_digest", f"quote selects PCRs {selected} but carries values for "
                    f"{sorted(quote.pcrs)}", att.clock)
    if any(len(v) != 32 for v in quote.pcrs.values()):
        return fail("pcr_digest", "a PCR value is not 32 bytes", att.clock)
    if pcr_composite_digest(quote.pcrs) != att.pcr_digest:
        return fail("pcr_digest", "PCR values do not match the signed PCR digest", att.clock)

    for index, expected in sorted((policy or {}).items()):
        if index not in quote.pcrs:
            return fail("policy", f"PCR {index} is in the policy but not in the quote", att.clock)
        if quote.pcrs[index] != bytes(expected):
            return fail("policy", f"PCR {index} is {quote.pcrs[index].hex()}, policy expects "
                        f"{bytes(expected).hex()}", att.clock)

    if last_seen is not None:
        last = last_seen if isinstance(last_seen, ClockInfo) else ClockInfo.from_json(last_seen)
        now = att.clock
        if now.reset_count < last.reset_count:
            return fail("clock", f"reset count went back from {last.reset_count} to "
                        f"{now.reset_count}", now)
        if now.reset_count == last.reset_count:
            if now.restart_count < last.restart_count:
                return fail("clock", f"restart count went back from {last.restart_count} to "
                            f"{now.restart_count}", now)
            if now.restart_count == last.restart_count and now.clock < last.clock:
                return fail("clock", f"clock went back from {last.clock} to {now.clock}", now)
    return Verdict(True, "quote verified", None, att.clock)
