"""Append-only, hash-chained audit ledger in SQLite, each record signed through a `Signer`.

Every record's hash covers its sequence number, its fields and the previous record's hash, and
its signature covers that hash. Editing a record breaks its hash; deleting or reordering breaks
the sequence or the chain; rewriting the chain from some record on needs a new signature on each
rewritten record, which only the holder of the signing key (the HSM) can make.

The ledger knows nothing of the HSM: anything with `sign(bytes) -> bytes` (DER ECDSA P-256 over
SHA-256 of the message) and `public_key_pem() -> str` signs for it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.state.store import filtered_page

GENESIS_HASH = "0" * 64
TABLE = "audit_ledger"
_MAX_FIELD = 1024
_MAX_DETAILS = 64 * 1024


class Signer(Protocol):
    def sign(self, data: bytes) -> bytes: ...

    def public_key_pem(self) -> str: ...


class LedgerError(Exception):
    """Bad input to the ledger, or a write the ledger cannot make."""


class LedgerReadOnly(LedgerError):
    """The ledger was opened without a signer, so it cannot append."""


@dataclass(frozen=True)
class Record:
    seq: int
    time: str
    actor: str
    action: str
    object: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "time": self.time, "actor": self.actor, "action": self.action,
            "object": self.object, "details": self.details, "prev_hash": self.prev_hash,
            "hash": self.hash, "signature": self.signature.hex(),
        }


@dataclass(frozen=True)
class Verification:
    ok: bool
    first_bad: int | None
    reason: str | None
    records: int
    head: Head | None = None  # the last record the walk accepted (None: empty or bad at 1)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "first_bad": self.first_bad, "reason": self.reason,
                "records": self.records,
                "head": None if self.head is None else self.head.to_json()}


def canonical_details(details: Any) -> str:
    """The one serialisation the ledger stores and hashes: sorted keys, no whitespace, UTF-8."""
    try:
        return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"details must be JSON-serialisable: {exc}") from exc


class NonCanonical(ValueError):
    """Stored JSON that is not the canonical serialisation of what it parses to."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            # json.loads would keep the last value silently: two readers could disagree on
            # what the record says while its bytes hash the same
            raise NonCanonical(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def parse_stored(text: str, legacy: Callable[[Any], str] | None = None) -> Any:
    """Parse stored JSON, refusing duplicate keys and any form other than the canonical one
    (or, for rows an older writer made, exactly ``legacy(value)``); raises NonCanonical."""
    if not isinstance(text, str):
        raise NonCanonical(f"stored as {type(text).__name__}, not text")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates,
                           parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise NonCanonical(f"not JSON: {exc}") from None
    if canonical_details(value) != text and (legacy is None or legacy(value) != text):
        raise NonCanonical("not in canonical form (sorted keys, no whitespace)")
    return value


def _refuse_constant(name: str) -> Any:
    raise NonCanonical(f"{name} is not JSON")


def record_hash(seq: int, time: str, actor: str, action: str, obj: str, details_json: str,
                prev_hash: str) -> str:
    """SHA-256 (hex) over the record as the canonical JSON array
    ``[seq, time, actor, action, object, details, prev_hash]``, with the stored details bytes
    spliced in as they are: the hash covers exactly what is stored, never a re-parse of it.

    For canonical details this is byte for byte what earlier versions hashed (they re-parsed
    and re-serialised canonically), so their records keep verifying."""
    def enc(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    message = (f"[{enc(seq)},{enc(time)},{enc(actor)},{enc(action)},{enc(obj)},"
               f"{details_json},{enc(prev_hash)}]")
    return hashlib.sha256(message.encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """Where a chain ends: what a verifier keeps to detect records cut from the end later."""

    seq: int
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash}

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """``SEQ:HASH`` (as ``str(head)`` writes it) -> Head; ValueError saying what is wrong."""
        seq, sep, digest = str(text).strip().partition(":")
        if not sep or not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"a ledger head is SEQ:HASH (a record number and 64 lowercase hex "
                             f"digits), not {text!r}")
        return cls(int(seq), digest)


EMPTY_HEAD = Head(0, GENESIS_HASH)


def read_head(db_path: str | Path) -> Head:
    """The signed ledger's last record, read-only (an absent database or table: EMPTY_HEAD)."""
    path = Path(db_path)
    if not path.is_file():
        return EMPTY_HEAD
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute(f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # no ledger table yet: nothing was ever signed
        return EMPTY_HEAD
    finally:
        db.close()
    return EMPTY_HEAD if row is None else Head(int(row[0]), str(row[1]))


class Ledger:
    """The ledger in table `audit_ledger` of the SQLite database at `db_path`."""

    def __init__(self, db_path: str | Path, signer: Signer | None = None) -> None:
        self.db_path = Path(db_path)
        self.signer = signer
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            " seq INTEGER PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL,"
            " action TEXT NOT NULL, object TEXT NOT NULL, details TEXT NOT NULL,"
            " prev_hash TEXT NOT NULL, hash TEXT NOT NULL, signature BLOB NOT NULL)"
        )
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_actor ON {TABLE}(actor)")
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_action ON {TABLE}(action)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, actor: str, action: str, obj: str = "",
               details: dict[str, Any] | None = None) -> Record:
        """Add one signed record; returns it. Raises LedgerReadOnly without a signer."""
        if self.signer is None:
            raise LedgerReadOnly("the audit ledger has no signing key (HSM locked); cannot append")
        for name, value in (("actor", actor), ("action", action), ("object", obj)):
            if not isinstance(value, str):
                raise LedgerError(f"{name} must be a string, got {type(value).__name__}")
            if len(value) > _MAX_FIELD:
                raise LedgerError(f"{name} is longer than {_MAX_FIELD} characters")
        if not actor or not action:
            raise LedgerError("actor and action must not be empty")
        details = {} if details is None else details
        if not isinstance(details, dict):
            raise LedgerError(f"details must be a JSON object, got {type(details).__name__}")
        details_json = canonical_details(details)
        if len(details_json) > _MAX_DETAILS:
            raise LedgerError(f"details are longer than {_MAX_DETAILS} bytes as JSON")
        time = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self._lock:
            # IMMEDIATE takes the write lock before reading the head, so two writers (threads
            # or processes) cannot both chain onto the same record.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS_HASH)
                digest = record_hash(seq, time, actor, action, obj, details_json, prev)
                signature = bytes(self.signer.sign(bytes.fromhex(digest)))
                self._db.execute(
                    f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, time, actor, action, obj, details_json, prev, digest, signature),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Record(seq, time, actor, action, obj, json.loads(details_json), prev, digest,
                      signature)

    def list(self, offset: int = 0, limit: int = 50, actor: str | None = None,
             action: str | None = None, newest_first: bool = False) -> tuple[list[Record], int]:
        """A page of records (filtered by exact actor/action) and the total that match."""
        if not isinstance(offset, int) or not isinstance(limit, int) or offset < 0 or not (
            0 < limit <= 1000
        ):
            raise LedgerError("offset must be >= 0 and limit 1..1000")
        order = "seq DESC" if newest_first else "seq ASC"
        with self._lock:
            rows, total = filtered_page(
                lambda sql, args: self._db.execute(sql, args).fetchall(), TABLE,
                {"actor": actor, "action": action}, order_by=order, limit=limit, offset=offset)
        return [_record(r) for r in rows], total

    def head(self) -> Record | None:
        records, _ = self.list(offset=0, limit=1, newest_first=True)
        return records[0] if records else None

    def verify(self, public_key_pem: str | bytes,
               expect_head: Head | None = None) -> Verification:
        """Walk the chain from the first record; report the first sequence number that fails.

        ``expect_head``: a head the verifier kept from earlier (an attestation bundle, a
        peer's node card, an earlier verify); the ledger must still hold that record with that
        hash, so records cut from the end since then are found."""
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        try:
            key = serialization.load_pem_public_key(pem)
        except ValueError as exc:
            raise LedgerError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise LedgerError("the ledger is verified with an EC public key")
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM {TABLE} ORDER BY seq ASC").fetchall()
        head: Head | None = None

        def bad(at: int, reason: str) -> Verification:
            return Verification(False, at, reason, len(rows), head)

        expected_seq, prev = 1, GENESIS_HASH
        for row in rows:
            seq, time, actor, action, obj, details_json, prev_hash, digest, signature = row
            if seq != expected_seq:
                return bad(expected_seq, f"record {expected_seq} is missing (the chain goes "
                           f"from {expected_seq - 1} to {seq})")
            if prev_hash != prev:
                return bad(seq, f"record {seq} does not chain to record {seq - 1} (deleted, "
                           "reordered or rewritten)")
            try:
                parse_stored(details_json)
            except NonCanonical as exc:
                return bad(seq, f"record {seq} has details that are not canonical JSON: {exc}")
            try:
                recomputed = record_hash(seq, time, actor, action, obj, details_json, prev_hash)
            except (TypeError, ValueError):
                return bad(seq, f"record {seq} has malformed fields")
            if recomputed != digest:
                return bad(seq, f"record {seq} was changed after it was written (hash mismatch)")
            try:
                key.verify(bytes(signature), bytes.fromhex(digest), ec.ECDSA(hashes.SHA256()))
            except (InvalidSignature, ValueError, TypeError):
                return bad(seq, f"record {seq} is not signed by the appliance key")
            expected_seq, prev, head = seq + 1, digest, Head(seq, digest)
        if expect_head is not None and expect_head.seq > 0:
            held = {r[0]: r[7] for r in rows}
            if expect_head.seq not in held:
                return bad(expect_head.seq, f"records cut from the end: the ledger ends at "
                           f"record {len(rows)}, but record {expect_head.seq} was seen before "
                           f"(head {expect_head})")
            if held[expect_head.seq] != expect_head.hash:
                return bad(expect_head.seq, f"record {expect_head.seq} is not the one seen "
                           f"before (head {expect_head}): the ledger was rewritten from there "
                           "on")
        return Verification(True, None, None, len(rows), head)


def _record(row: tuple[Any, ...]) -> Record:
    seq, time, actor, action, obj, details_json, prev_hash, digest, signature = row
    return Record(seq, time, actor, action, obj, json.loads(details_json), prev_hash, digest,
                  bytes(signature))
