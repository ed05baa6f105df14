"""The keyword layer of private query: from (key, labels) records to the database matrix the
LWE scheme reads a column of, and back (docs/pir.md).

Each key x is first put through the server's OPRF (ristretto255, as the unbalanced PSI mode):
the client learns F(x) = H2(x, k H1(x)) for the keys it asks, nothing about k, and the server
learns nothing about x. F(x) (32 bytes) then gives, publicly and deterministically,

- the bucket, a column of the matrix: F[0:8] as a little-endian integer mod ``cols``;
- the tag that marks x's record inside the bucket: F[8:16];
- the pad that encrypts x's labels: SHAKE-256(DOMAIN || F[16:32]), as long as the labels.

A column holds ``capacity`` record slots of ``8 + label_bytes`` bytes each, one byte per matrix
entry; capacity is the fullest bucket's load, so no record is ever left out, and empty slots
are zeros (a tag is never zero: ``build`` checks). The client reads the whole column of its
key and looks for the tag; a key that is not in the set finds no tag, and that is "not
found". The other records of the column are ciphertexts under pads of F values the client
never learnt, so it learns only its own record (the OPRF is what makes the layout safe to
hand out a column at a time).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from appliance.operators.pir.scheme import MAX_COLS, PirError, Shape

TAG_BYTES = 8
F_BYTES = 32
DOMAIN_PAD = b"pec-pir/label-pad/shake256/v1\x00"
#: one label's length prefix; 0xFFFF marks a missing (null) value
_LEN = 2
_NULL = 0xFFFF
MAX_LABEL_BYTES = 4096


@dataclass(frozen=True)
class Layout:
    """Where records sit: ``cols`` buckets of ``capacity`` slots of ``record_bytes``."""

    cols: int
    capacity: int
    label_bytes: int

    @property
    def record_bytes(self) -> int:
        return TAG_BYTES + self.label_bytes

    @property
    def shape(self) -> Shape:
        return Shape(self.capacity * self.record_bytes, self.cols)

    def to_dict(self) -> dict[str, int]:
        return {"cols": self.cols, "capacity": self.capacity, "label_bytes": self.label_bytes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        try:
            layout = cls(int(d["cols"]), int(d["capacity"]), int(d["label_bytes"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PirError(f"pir: a malformed layout ({exc})") from None
        if not (1 <= layout.cols <= MAX_COLS and layout.capacity >= 1
                and 0 <= layout.label_bytes <= MAX_LABEL_BYTES * 64):
            raise PirError(f"pir: layout {layout} is out of range")
        return layout


def columns_for(records: int, record_bytes: int) -> int:
    """SimplePIR's balance: about as many columns as rows, so that a query (4 bytes a column)
    and an answer (4 bytes a row) cost the same; at most MAX_COLS."""
    return max(1, min(MAX_COLS, round(math.sqrt(max(1, records) * record_bytes))))


def buckets(f: np.ndarray, cols: int) -> np.ndarray:
    """The bucket (column) of each F value."""
    low = np.ascontiguousarray(f[:, :8]).view("<u8").reshape(-1)
    return (low % np.uint64(cols)).astype(np.int64)


def tags(f: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(f[:, 8:16])


def pads(f: np.ndarray, width: int) -> np.ndarray:
    """``(n, width)`` label pads, one SHAKE-256 stream per F value."""
    out = np.empty((len(f), width), dtype=np.uint8)
    if width:
        for i, seed in enumerate(f[:, 16:32]):
            out[i] = np.frombuffer(hashlib.shake_256(DOMAIN_PAD + seed.tobytes()).digest(width),
                                   dtype=np.uint8)
    return out


# -- labels: typed values <-> fixed-width bytes ---------------------------------------------------

def encode_labels(columns: list[list[Any]]) -> tuple[np.ndarray, int]:
    """Each record's labels as length-prefixed UTF-8 texts, zero-padded to the longest record:
    ``(n, width)`` bytes and the width. ``columns`` is one list of texts (or None) per label."""
    n = len(columns[0]) if columns else 0
    blobs: list[bytes] = []
    for i in range(n):
        parts = []
        for col in columns:
            value = col[i]
            if value is None:
                parts.append(_NULL.to_bytes(_LEN, "little"))
                continue
            raw = value.encode("utf-8")
            if len(raw) > MAX_LABEL_BYTES:
                raise PirError(f"pir: a label of {len(raw)} bytes is over {MAX_LABEL_BYTES}")
            parts.append(len(raw).to_bytes(_LEN, "little") + raw)
        blobs.append(b"".join(parts))
    width = max((len(b) for b in blobs), default=0)
    out = np.zeros((n, width), dtype=np.uint8)
    for i, b in enumerate(blobs):
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out, width


def decode_labels(raw: bytes, count: int) -> list[str | None]:
    """The ``count`` texts of one record, or PirError when the bytes are not a record this
    code wrote (a wrong key or a corrupt answer: never a silent wrong value)."""
    out: list[str | None] = []
    at = 0
    for _ in range(count):
        if at + _LEN > len(raw):
            raise PirError("pir: a record ends inside a label length")
        size = int.from_bytes(raw[at: at + _LEN], "little")
        at += _LEN
        if size == _NULL:
            out.append(None)
            continue
        if at + size > len(raw):
            raise PirError("pir: a record's label runs past its end")
        try:
            out.append(raw[at: at + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise PirError("pir: a record's label is not UTF-8") from None
        at += size
    if any(raw[at:]):
        raise PirError("pir: a record has bytes after its labels")
    return out


# -- the server: records -> matrix --------------------------------------------------------------

def build(f: np.ndarray, labels: np.ndarray, label_bytes: int,
          cols: int | None = None) -> tuple[Layout, np.ndarray]:
    """The layout and the ``(rows, cols)`` matrix holding every record (F values ``(n, 32)``,
    encoded labels ``(n, label_bytes)``)."""
    n = len(f)
    if f.shape != (n, F_BYTES) or labels.shape != (n, label_bytes):
        raise PirError("pir: F values and labels do not line up")
    cols = cols or columns_for(n, TAG_BYTES + label_bytes)
    bucket = buckets(f, cols)
    tag = tags(f)
    if n and not tag.any(axis=1).all():
        raise PirError("pir: a record's tag is all zeros (probability 2^-64): rotate the "
                       "service's OPRF key and publish again")
    counts = np.bincount(bucket, minlength=cols)
    capacity = max(1, int(counts.max()) if n else 1)
    layout = Layout(cols, capacity, label_bytes)
    order = np.argsort(bucket, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.arange(n) - starts[bucket[order]]
    # two keys with one tag in one bucket would make the client's lookup ambiguous
    if n:
        pairs = np.column_stack([bucket.astype(np.uint64), tag.view("<u8").reshape(-1)])
        if len(np.unique(pairs, axis=0)) != n:
            raise PirError("pir: two records share a bucket and a tag (probability 2^-64): "
                           "rotate the service's OPRF key and publish again")
    record = np.concatenate([tag, labels ^ pads(f, label_bytes)], axis=1)
    width = layout.record_bytes
    entries = np.zeros((capacity, width, cols), dtype=np.uint8)
    entries[slot[:, None], np.arange(width)[None, :], bucket[:, None]] = record
    return layout, entries.reshape(capacity * width, cols)


# -- the client: a column -> the record of a key ----------------------------------------------

def find(column: np.ndarray, layout: Layout, f: np.ndarray) -> bytes | None:
    """The decrypted label bytes of the key whose F value is ``f`` in its bucket's column, or
    None when the key is not in the set."""
    slots = column.reshape(layout.capacity, layout.record_bytes)
    hits = np.flatnonzero((slots[:, :TAG_BYTES] == f[8:16]).all(axis=1))
    if len(hits) == 0:
        return None
    if len(hits) > 1:
        raise PirError("pir: two records in one bucket carry this key's tag (a corrupt service)")
    sealed = slots[hits[0], TAG_BYTES:]
    return (sealed ^ pads(f[None, :], layout.label_bytes)[0]).tobytes()
