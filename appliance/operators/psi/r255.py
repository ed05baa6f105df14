"""ristretto255 batches for the unbalanced (OPRF) mode, over the same C engine as ECDH-PSI.

The unbalanced mode blinds a query point with a random scalar r and later removes it with
r^-1 mod L; that needs a group of prime order L where every scalar below L has an inverse.
X25519 (the balanced mode's Curve25519 profile) clamps scalars and works on a group of order
8·L plus its twist, so it has no such inverse; ristretto255 is the prime-order group built on the
same curve, and libsodium ships it. Each call works on a whole batch in C, split across
``os.cpu_count()`` pthreads with the GIL released (cffi API mode).

Hash to group: ``H1(id) = ristretto255_from_hash(SHA-512(DOMAIN_H1 || id))`` (two Elligator
maps added: uniform in the group, with no known discrete log). Output hash:
``H2(id, Q) = SHA-256(DOMAIN_H2 || Q || id)`` truncated; Q has a fixed length, so the input
splits one way only.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.operators.base import OperatorError
from appliance.operators.psi import ecdh_engine
from appliance.operators.psi._ecdh import ffi, lib

POINT_BYTES = 32
SCALAR_BYTES = 32
DOMAIN_H1 = b"pec-psi/oprf-ristretto255/h1-sha512/v1\x00"
DOMAIN_H2 = b"pec-psi/oprf-ristretto255/h2-sha256/v1\x00"


class InvalidPoint(OperatorError):
    """A 32-byte string that is not a usable ristretto255 point, named by its index."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"point {index} {reason}")
        self.index = index
        self.reason = reason


def threads() -> int:
    return os.cpu_count() or 1


def _w(buf: np.ndarray) -> Any:
    return ffi.from_buffer("uint8_t[]", buf, require_writable=True)


def _points(points: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    """(N, 32) contiguous uint8 view of a batch of points; a ragged length is refused."""
    flat = (np.ascontiguousarray(points, dtype=np.uint8).reshape(-1)
            if isinstance(points, np.ndarray) else np.frombuffer(points, dtype=np.uint8))
    if flat.size % POINT_BYTES:
        raise OperatorError(f"{flat.size} bytes is not a whole number of {POINT_BYTES}-byte "
                            "points")
    return flat.reshape(-1, POINT_BYTES)


def _ids(ids: pa.Array | pa.ChunkedArray) -> tuple[Any, Any, int]:
    """(data, offsets, n) of the canonical id bytes (ecdh_engine.id_bytes: the same rule for
    strings, integers and binary as the balanced mode) as cffi buffers."""
    arr = ecdh_engine.id_bytes(ids)
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.ascontiguousarray(
        np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + n + 1])
    data = data_buf if data_buf is not None and data_buf.size else b"\x00"
    # the offsets array is returned inside the cdata's keep-alive by from_buffer
    return ffi.from_buffer("uint8_t[]", data), ffi.from_buffer("int64_t[]", offsets), n


def _refused(points: np.ndarray, index: int) -> InvalidPoint:
    """Says why point ``index`` was refused: the C side reports only where."""
    p = points[index]
    if not p.any():
        return InvalidPoint(index, "is the identity (the encoding of zero), not the image of "
                                   "an id")
    if lib.pec_psi_r255_valid(ffi.from_buffer("uint8_t[]", p), 1, 1) >= 0:
        return InvalidPoint(index, "is not a canonical ristretto255 encoding")
    return InvalidPoint(index, "gave the identity when multiplied")  # pragma: no cover


def hash_to_group(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(N, 32): H1 of each id."""
    data, offsets, n = _ids(ids)
    out = np.empty((n, POINT_BYTES), dtype=np.uint8)
    if n:
        lib.pec_psi_r255_hash(data, offsets, n, DOMAIN_H1, len(DOMAIN_H1), _w(out), threads())
    return out


def mul(points: np.ndarray | bytes | bytearray | memoryview, scalar: bytes) -> np.ndarray:
    """(N, 32): scalar·P for each point; raises InvalidPoint for the first bad one."""
    if len(scalar) != SCALAR_BYTES:
        raise ValueError("a scalar is 32 bytes")
    src = _points(points)
    out = np.empty_like(src)
    if len(src):
        bad = lib.pec_psi_r255_mul(ffi.from_buffer("uint8_t[]", src), len(src), scalar, _w(out),
                                   threads())
        if bad >= 0:
            raise _refused(src, int(bad))
    return out


def mul_each(points: np.ndarray | bytes | bytearray | memoryview,
             scalars: np.ndarray) -> np.ndarray:
    """(N, 32): scalars[i]·P_i; raises InvalidPoint for the first bad point."""
    src = _points(points)
    if scalars.shape != src.shape:
        raise ValueError(f"{len(scalars)} scalars for {len(src)} points")
    out = np.empty_like(src)
    if len(src):
        sc = np.ascontiguousarray(scalars, dtype=np.uint8)
        bad = lib.pec_psi_r255_mul_each(ffi.from_buffer("uint8_t[]", src), len(src),
                                        ffi.from_buffer("uint8_t[]", sc), _w(out), threads())
        if bad >= 0:
            raise _refused(src, int(bad))
    return out


def check_points(points: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    """The batch as (N, 32) after checking every point; raises InvalidPoint."""
    src = _points(points)
    if len(src):
        bad = lib.pec_psi_r255_valid(ffi.from_buffer("uint8_t[]", src), len(src), threads())
        if bad >= 0:
            raise _refused(src, int(bad))
    return src


def blinds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(r, r^-1 mod L), each (n, 32): fresh nonzero random scalars (libsodium's
    scalar_random, uniform below L) and their inverses."""
    r = np.empty((n, SCALAR_BYTES), dtype=np.uint8)
    r_inv = np.empty_like(r)
    if n:
        lib.pec_psi_r255_blinds(n, _w(r), _w(r_inv), threads())
    return r, r_inv


def new_scalar() -> bytes:
    """A fresh secret key: uniform, nonzero, below L."""
    return blinds(1)[0][0].tobytes()


def public(scalar: bytes) -> bytes:
    """scalar·B: the key's public value (names the key without revealing it)."""
    out = np.empty(POINT_BYTES, dtype=np.uint8)
    lib.pec_psi_r255_base(scalar, _w(out))
    return out.tobytes()


def finish(ids: pa.Array | pa.ChunkedArray, points: np.ndarray, width: int) -> np.ndarray:
    """(N, width): H2(id_i, points[i]) truncated to ``width`` bytes."""
    data, offsets, n = _ids(ids)
    if not 1 <= width <= 32:
        raise ValueError("the output width is 1..32 bytes")
    src = _points(points)
    if len(src) != n:
        raise ValueError(f"{len(src)} points for {n} ids")
    out = np.empty((n, width), dtype=np.uint8)
    if n:
        lib.pec_psi_r255_finish(data, offsets, n, DOMAIN_H2, len(DOMAIN_H2),
                                ffi.from_buffer("uint8_t[]", src), width, _w(out), threads())
    return out
