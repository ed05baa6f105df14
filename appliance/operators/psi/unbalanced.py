"""Unbalanced PSI: a small query set against a large server set, through an ECDH-OPRF.

The server holds a long-term OPRF key k (a ristretto255 scalar) per data set and computes,
once and offline, ``F(y) = H2(y, k·H1(y))`` for every id y of its set, truncated to
``OUTPUT_BYTES``; that table is the reusable work. The client downloads it once per (server
data set fingerprint, key version) and caches it. Online, the client sends each query
``H1(x)`` blinded as ``r·H1(x)`` with a fresh random r per id, the server answers
``k·(r·H1(x))``, the client removes r with r^-1 (possible because ristretto255 has prime
order), computes ``F(x)`` and looks it up in the cached table. This is the construction of
SecretFlow's unbalanced ECDH-PSI (2HashDH OPRF, Jarecki et al.); docs/psi.md says who learns
what and why ristretto255 rather than the BFIA Curve25519 profile.

Pieces: ``OprfKey`` (sealed through any object with ``store_secret``/``load_secret``, the
appliance's TrustRoot), ``ServerTable`` (build, load, download as chunks, lookup),
``TableCache`` (the client's cache of downloaded tables), ``Server.answer`` and
``Client.query``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from appliance.operators.base import OperatorError
from appliance.operators.psi import ecdh_engine, r255

# 96 bits: the expected number of false matches over a table's life is at most
# (queries) x (server ids) / 2^96; at 10^5 x 10^8 that is 1.3e-16 (docs/psi.md).
OUTPUT_BYTES = 12
# Ids per C call while building: bounds the build's working memory to a few tens of MiB
# beyond the table itself.
BUILD_CHUNK = 1 << 18
# Most points one answer takes (32 MiB in, 32 MiB out); a larger query set is sent in parts.
MAX_QUERY = 1 << 20
DOWNLOAD_CHUNK = 1 << 22  # bytes per table download message (under the channel's 64 MiB)

KEY_MAGIC = b"POK1"
KEY_BLOB = struct.Struct("<4sI32s")  # magic, version, scalar
TABLE_MAGIC = b"POT1"
TABLE_FORMAT = 1
# magic, format, width, count, key version, then data set fingerprint (32), key public value
# (32), SHA-256 of the body (32); padded to 128 bytes so the body arrays start aligned
TABLE_HEAD = struct.Struct("<4sHHQI32s32s32s")
TABLE_HEADER_BYTES = 128
_NAME = re.compile(r"[A-Za-z0-9._-]{1,96}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class SecretStore(Protocol):
    """Where the OPRF key is kept sealed: the appliance's TrustRoot (HSM KEK) or a test's."""

    def store_secret(self, name: str, data: bytes) -> None: ...

    def load_secret(self, name: str) -> bytes | None: ...


# -- the server's key -------------------------------------------------------------------------

@dataclass(frozen=True)
class OprfKey:
    """One data set's OPRF key: a ristretto255 scalar and its version (1, 2, ... by rotation).

    The scalar never leaves the process except sealed through the secret store; ``public``
    (k·B) names the key in tables and caches, so a client notices a key that was replaced
    without its version moving (a lost store recreated at version 1).
    """

    name: str
    version: int
    scalar: bytes = field(repr=False)

    @property
    def public(self) -> bytes:
        return r255.public(self.scalar)

    def evaluate(self, ids: pa.Array, width: int) -> np.ndarray:
        """F(x) = H2(x, k H1(x)) of the server's own ids (canonical id bytes), ``(N, width)``:
        what a client learns for one id through a blinded round trip."""
        return r255.finish(ids, r255.mul(r255.hash_to_group(ids), self.scalar), width)

    @staticmethod
    def secret_name(name: str) -> str:
        if not _NAME.fullmatch(name):
            raise OperatorError(f"psi: OPRF key name {name!r} must be 1..96 of A-Z a-z 0-9 . _ -")
        return f"psi-oprf.{name}"

    @classmethod
    def load_or_create(cls, store: SecretStore, name: str) -> OprfKey:
        """The data set's key from the store, created (version 1) on first use."""
        blob = store.load_secret(cls.secret_name(name))
        if blob is None:
            return cls._new(store, name, 1)
        if len(blob) != KEY_BLOB.size:
            raise OperatorError(f"psi: the sealed OPRF key {name!r} is {len(blob)} bytes, not "
                                f"{KEY_BLOB.size}")
        magic, version, scalar = KEY_BLOB.unpack(blob)
        if magic != KEY_MAGIC or version < 1:
            raise OperatorError(f"psi: the sealed OPRF key {name!r} is not one this code wrote")
        return cls(name, version, scalar)

    @classmethod
    def rotate(cls, store: SecretStore, name: str) -> OprfKey:
        """A new key at the next version: every table built under the old one must be rebuilt
        and downloaded again (the old one stops answering)."""
        old = store.load_secret(cls.secret_name(name))
        version = cls.load_or_create(store, name).version + 1 if old is not None else 1
        return cls._new(store, name, version)

    @classmethod
    def _new(cls, store: SecretStore, name: str, version: int) -> OprfKey:
        key = cls(name, version, r255.new_scalar())
        store.store_secret(cls.secret_name(name), KEY_BLOB.pack(KEY_MAGIC, version, key.scalar))
        return key


# -- the table: the server's offline work, the client's download ------------------------------

def fingerprint_of(ids: pa.Array | pa.ChunkedArray) -> str:
    """SHA-256 over the canonical id bytes in order (length-prefixed by their offsets).

    Used when the caller has no data set fingerprint of its own; a reordered set gets a new
    fingerprint and so a rebuild, which is wasted work but never a wrong answer.
    """
    arr = ecdh_engine.id_bytes(ids)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    h = hashlib.sha256(b"pec-psi/ids/v1\x00")
    h.update(np.ascontiguousarray(offsets - (offsets[0] if len(offsets) else 0)).tobytes())
    if data_buf is not None and len(arr):
        h.update(memoryview(data_buf)[int(offsets[0]): int(offsets[-1])])
    return h.hexdigest()


@dataclass
class ServerTable:
    """The truncated OPRF outputs of a server set, sorted, in one file.

    Layout: a 128-byte header (``TABLE_HEAD``), then the outputs' first 8 bytes as N
    little-endian uint64 ("heads"), then their last 4 bytes as N uint32 ("tails"), sorted by
    head. Two flat arrays rather than N 12-byte rows so that a lookup is ``searchsorted`` on a
    memory-mapped array: nothing is copied or sorted when a table is opened, and the first
    query against a 10^8-row table does not pay for a 1.2 GB sort.
    """

    path: Path
    count: int
    fingerprint: str
    key_version: int
    key_public: bytes
    body_sha256: bytes
    seconds: float = 0.0  # the build's time; 0 when an existing table was reused
    built: bool = False
    _heads: np.ndarray | None = field(default=None, repr=False)
    _tails: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def build(cls, ids: pa.Array | pa.ChunkedArray | Sequence[Any], key: OprfKey,
              out_dir: str | os.PathLike[str], *, fingerprint: str | None = None,
              force: bool = False) -> ServerTable:
        """The table of ``ids`` under ``key`` in ``out_dir``, built unless one for the same
        data set fingerprint and key (version and public value) is already there.

        ``fingerprint`` is the data set's (the registry's); without it one is computed from
        the ids. A changed set has a new fingerprint, so it is rebuilt; tables of this key's
        earlier sets or versions in ``out_dir`` are removed after the new one is in place.
        """
        arr = _as_ids(ids)
        fp = fingerprint if fingerprint is not None else fingerprint_of(arr)
        if not _FINGERPRINT.fullmatch(fp):
            raise OperatorError(f"psi: a data set fingerprint is 64 hex digits (got {fp!r})")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"oprf-{key.name}-{fp}-k{key.version}.tbl"
        if not force and path.exists():
            with contextlib.suppress(OperatorError):
                table = cls.load(path)
                if (table.fingerprint, table.key_version, table.key_public, table.count) == (
                        fp, key.version, key.public, len(arr)):
                    return table
        start = time.perf_counter()
        n = len(arr)
        heads = np.empty(n, dtype=np.uint64)
        tails = np.empty(n, dtype=np.uint32)
        for at in range(0, n, BUILD_CHUNK):
            part = arr.slice(at, BUILD_CHUNK)
            values = key.evaluate(part, OUTPUT_BYTES)
            heads[at: at + len(part)], tails[at: at + len(part)] = _split(values)
        # pseudorandom 64-bit heads rarely tie (about N^2 / 2^65); lookup scans a tied run, so
        # sorting by head alone is enough, and the sort is what hides the server's row order
        order = np.argsort(heads, kind="stable")
        heads, tails = heads[order], tails[order]
        del order
        digest = _body_digest(heads, tails)
        header = _pack_header(n, key.version, fp, key.public, digest)
        tmp = path.with_name(f".{path.name}.part")
        try:
            with open(tmp, "wb") as f:
                f.write(header)
                heads.tofile(f)
                tails.tofile(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # a crash mid-build leaves no table that looks whole
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        # exactly this key's names: a glob on the prefix would also catch key "a-b"'s tables
        mine = re.compile(rf"oprf-{re.escape(key.name)}-[0-9a-f]{{64}}-k[0-9]+\.tbl")
        for old in out.glob(f"oprf-{key.name}-*.tbl"):
            if old != path and mine.fullmatch(old.name):  # earlier sets or key versions
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()
        table = cls.load(path)
        table.seconds = time.perf_counter() - start
        table.built = True
        return table

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = False) -> ServerTable:
        """Opens a table file (memory-mapped); ``verify`` also checks the body's hash and
        order (what a client does with a download)."""
        p = Path(path)
        with open(p, "rb") as f:
            head = f.read(TABLE_HEADER_BYTES)
        size = p.stat().st_size
        n, version, fp, public, digest = _unpack_header(head, p)
        if size != TABLE_HEADER_BYTES + 12 * n:
            raise OperatorError(f"psi: table {p.name} is {size} bytes; its header says {n} "
                                f"rows ({TABLE_HEADER_BYTES + 12 * n} bytes)")
        heads = (np.memmap(p, dtype=np.uint64, mode="r", offset=TABLE_HEADER_BYTES, shape=(n,))
                 if n else np.empty(0, np.uint64))
        tails = (np.memmap(p, dtype=np.uint32, mode="r", offset=TABLE_HEADER_BYTES + 8 * n,
                           shape=(n,)) if n else np.empty(0, np.uint32))
        if verify:
            if _body_digest(heads, tails) != digest:
                raise OperatorError(f"psi: table {p.name} does not match its hash: damaged "
                                    "or changed in transit")
            if n > 1 and bool(np.any(heads[1:] < heads[:-1])):
                raise OperatorError(f"psi: table {p.name} is not sorted")
        return cls(p, n, fp, version, public, digest, _heads=heads, _tails=tails)

    def chunks(self, size: int = DOWNLOAD_CHUNK) -> Iterator[bytes]:
        """The file as byte messages for a download (header first)."""
        with open(self.path, "rb") as f:
            while block := f.read(size):
                yield block

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask over ``values`` (N, OUTPUT_BYTES): which occur in the table."""
        assert self._heads is not None and self._tails is not None
        heads, tails = self._heads, self._tails
        qh, qt = _split(values)
        if len(qh) == 0 or self.count == 0:
            return np.zeros(len(qh), dtype=bool)
        left = np.searchsorted(heads, qh, side="left")
        right = np.searchsorted(heads, qh, side="right")
        hit = right > left
        at = np.minimum(left, self.count - 1)
        mask = hit & (np.asarray(tails[at]) == qt)
        for i in np.flatnonzero(hit & (right - left > 1) & ~mask):  # pragma: no cover - 2^-64
            mask[i] = bool(np.any(tails[left[i]: right[i]] == qt[i]))
        return mask


def _body_digest(heads: np.ndarray, tails: np.ndarray) -> bytes:
    # hashed through the buffer protocol: no 1.2 GB copy of a 10^8-row table
    h = hashlib.sha256(b"pec-psi/oprf-table/v1\x00")
    h.update(memoryview(np.ascontiguousarray(heads)).cast("B"))
    h.update(memoryview(np.ascontiguousarray(tails)).cast("B"))
    return h.digest()


def _split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1, OUTPUT_BYTES)
    return (np.ascontiguousarray(v[:, :8]).view("<u8").reshape(-1),
            np.ascontiguousarray(v[:, 8:]).view("<u4").reshape(-1))


def _pack_header(n: int, version: int, fp: str, public: bytes, digest: bytes) -> bytes:
    head = TABLE_HEAD.pack(TABLE_MAGIC, TABLE_FORMAT, OUTPUT_BYTES, n, version,
                           bytes.fromhex(fp), public, digest)
    return head.ljust(TABLE_HEADER_BYTES, b"\x00")


def _unpack_header(head: bytes, where: Any) -> tuple[int, int, str, bytes, bytes]:
    if len(head) < TABLE_HEADER_BYTES:
        raise OperatorError(f"psi: table {where} is shorter than its header")
    magic, fmt, width, n, version, fp, public, digest = TABLE_HEAD.unpack_from(head)
    if magic != TABLE_MAGIC or fmt != TABLE_FORMAT:
        raise OperatorError(f"psi: {where} is not an OPRF table of format {TABLE_FORMAT}")
    if width != OUTPUT_BYTES:
        raise OperatorError(f"psi: table {where} holds {width}-byte outputs, this node "
                            f"{OUTPUT_BYTES}")
    return n, version, fp.hex(), public, digest


class TableCache:
    """The client's downloaded tables, one file per (server data set fingerprint, key version,
    key public value) in a directory of its own."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, fingerprint: str, key_version: int, key_public: bytes) -> Path:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise OperatorError(f"psi: a data set fingerprint is 64 hex digits "
                                f"(got {fingerprint!r})")
        kid = hashlib.sha256(key_public).hexdigest()[:16]
        return self.directory / f"oprf-{fingerprint}-k{int(key_version)}-{kid}.tbl"

    def get(self, fingerprint: str, key_version: int, key_public: bytes) -> ServerTable | None:
        """The cached table, or None (not downloaded yet, or damaged: downloaded again)."""
        p = self.path(fingerprint, key_version, key_public)
        if not p.exists():
            return None
        try:
            t = ServerTable.load(p)
        except OperatorError:
            return None
        ok = (t.fingerprint, t.key_version, t.key_public) == (fingerprint, key_version,
                                                              key_public)
        return t if ok else None

    def receive(self, chunks: Iterable[bytes | bytearray | memoryview], fingerprint: str,
                key_version: int, key_public: bytes, count: int | None = None) -> ServerTable:
        """Writes a download into the cache after checking it is the table announced (header
        fields, size, body hash, order); a bad one leaves nothing behind."""
        final = self.path(fingerprint, key_version, key_public)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.part")
        try:
            with open(tmp, "wb") as f:
                for block in chunks:
                    f.write(block)
            table = ServerTable.load(tmp, verify=True)
            want = (fingerprint, key_version, key_public)
            if (table.fingerprint, table.key_version, table.key_public) != want:
                raise OperatorError("psi: the downloaded table is for another data set or key "
                                    "than the server announced")
            if count is not None and table.count != count:
                raise OperatorError(f"psi: the downloaded table has {table.count} rows, the "
                                    f"server announced {count}")
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return ServerTable.load(final)


# -- online -----------------------------------------------------------------------------------

class Server:
    """Answers blinded queries with its key: k·(r·P) for each point, after checking each is a
    valid ristretto255 point. It learns how many points it was asked, nothing else."""

    def __init__(self, key: OprfKey, max_batch: int = MAX_QUERY) -> None:
        self.key = key
        self.max_batch = max_batch
        self.queries_answered = 0

    def answer(self, blinded: bytes | bytearray | memoryview | np.ndarray) -> bytes:
        points = _wire_points(blinded, "the client's query")
        if len(points) > self.max_batch:
            raise OperatorError(f"psi: a query of {len(points)} points is over this server's "
                                f"{self.max_batch} per request")
        try:
            out = r255.mul(points, self.key.scalar)
        except r255.InvalidPoint as exc:
            raise r255.InvalidPoint(exc.index, f"of the client's query {exc.reason}: refused "
                                    "(a faulty or dishonest client)") from None
        self.queries_answered += len(points)
        return out.tobytes()


class Client:
    """Queries a cached table: blind, ask, unblind, hash, look up."""

    def __init__(self, max_batch: int = MAX_QUERY) -> None:
        self.max_batch = max_batch

    def query(self, ids: pa.Array | pa.ChunkedArray | Sequence[Any], table: ServerTable,
              server_answer_fn: Callable[[bytes], bytes | bytearray | memoryview]) -> Any:
        """The subset of ``ids`` in the server's set, in the order given: a list for a
        sequence, an Arrow array for an Arrow column."""
        arr = _as_ids(ids)
        mask = self.mask(arr, table, server_answer_fn)
        if isinstance(ids, pa.Array | pa.ChunkedArray):
            return ids.filter(pa.array(mask))
        return [x for x, hit in zip(ids, mask.tolist(), strict=True) if hit]

    def mask(self, ids: pa.Array | pa.ChunkedArray, table: ServerTable,
             server_answer_fn: Callable[[bytes], bytes | bytearray | memoryview]) -> np.ndarray:
        """Boolean mask over ``ids``: found in the server's set."""
        arr = _as_ids(ids)
        n = len(arr)
        mask = np.zeros(n, dtype=bool)
        for at in range(0, n, self.max_batch):
            part = arr.slice(at, self.max_batch)
            mask[at: at + len(part)] = table.contains(self._evaluate(part, server_answer_fn))
        return mask

    @staticmethod
    def _evaluate(part: pa.Array,
                  server_answer_fn: Callable[[bytes], bytes | bytearray | memoryview]
                  ) -> np.ndarray:
        return evaluate_blinded(part, server_answer_fn, OUTPUT_BYTES)


def evaluate_blinded(part: pa.Array,
                     server_answer_fn: Callable[[bytes], bytes | bytearray | memoryview],
                     width: int) -> np.ndarray:
    """F(x) for each id of ``part`` (canonical id bytes), ``(N, width)``, through one round
    trip to the server, which sees only blinded points."""
    n = len(part)
    # a fresh r per id: each blinded point is a uniform group element whatever the id, so
    # the server learns only the count (not even which queries repeat)
    r, r_inv = r255.blinds(n)
    blinded = r255.mul_each(r255.hash_to_group(part), r)
    answer = _wire_points(server_answer_fn(blinded.tobytes()), "the server's answer")
    if len(answer) != n:
        raise OperatorError(f"psi: the server answered {len(answer)} points to {n} queries")
    try:
        unblinded = r255.mul_each(answer, r_inv)
    except r255.InvalidPoint as exc:
        raise r255.InvalidPoint(exc.index, f"of the server's answer {exc.reason}") from None
    return r255.finish(part, unblinded, width)


def _wire_points(data: Any, what: str) -> np.ndarray:
    if not isinstance(data, bytes | bytearray | memoryview | np.ndarray):
        raise OperatorError(f"psi: {what} is {type(data).__name__}, not bytes")
    size = data.nbytes if isinstance(data, memoryview | np.ndarray) else len(data)
    if size % r255.POINT_BYTES:
        raise OperatorError(f"psi: {what} is {size} bytes, not a whole number of "
                            f"{r255.POINT_BYTES}-byte points")
    return r255._points(data)


def _as_ids(ids: pa.Array | pa.ChunkedArray | Sequence[Any]) -> pa.Array:
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        return ecdh_engine.id_bytes(ids)
    items = list(ids)
    if not items:
        return pa.array([], pa.large_binary())
    if all(isinstance(x, bytes) for x in items):
        return pa.array(items, pa.large_binary())
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        return ecdh_engine.id_bytes(pa.array(items, pa.int64()))
    if all(isinstance(x, str) for x in items):
        return ecdh_engine.id_bytes(pa.array(items, pa.string()))
    raise OperatorError("psi: ids are all str, all int or all bytes")
