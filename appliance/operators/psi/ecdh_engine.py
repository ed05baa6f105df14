"""The ECDH-PSI engine: X25519 over libsodium, batched and multi-threaded in C.

Everything works on contiguous byte buffers so that a batch of 10^5 ids costs two C calls,
not 10^5 Python ones; the C side splits each call across ``os.cpu_count()`` pthreads and cffi
(API mode) releases the GIL for its whole length, so the channel threads keep moving frames.

Hash to curve. ``hash_to_point(id) = SHA-256(DOMAIN || id)`` with bit 255 cleared, taken as an
X25519 u-coordinate (the BFIA open ECDH-PSI profile hashes with SHA-256 straight to the
coordinate; SecretFlow's Curve25519 cryptor does the same). That is sound for X25519 because
every 32-byte u is a point either on Curve25519 or on its quadratic twist, X25519 is defined on
both, and Curve25519 is twist-secure (the twist's order is 4 * a 253-bit prime, so discrete
logs and DDH there are as hard as on the curve); X25519 clamps every scalar to a multiple of
8, which kills any component in the small subgroups (orders 1, 2, 4, 8) of either group, and
multiplications by clamped scalars commute, which is all ECDH-PSI needs:
``mul(mul(P, a), b) == mul(mul(P, b), a)``. What it gives away: whether H(id) fell on the curve
or on the twist (one bit, a public function of the id); the operator sends points in a secret
random order so a peer sees only how many of each, not which row has which.

Low-order inputs. A u whose X25519 product is all zero (the small-order points: u = 0, 1, and
the few others libsodium lists) can only come from a peer that did not hash ids honestly: its
product says nothing about the peer's set and would make unrelated rows "match". ``mul``
refuses it and names the index.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from appliance.operators.base import OperatorError

try:
    from appliance.operators.psi._ecdh import ffi, lib
except ImportError as exc:  # pragma: no cover - a broken install, said plainly
    raise ImportError(
        "the ECDH-PSI engine (appliance.operators.psi._ecdh) is not built: install the package "
        "(libsodium-dev needed) or run appliance/operators/psi/build.py") from exc

POINT_BYTES = 32
# BFIA's second stage: doubly-encrypted values truncated to 96 bits (see docs/psi.md for the
# false-positive bound: about n*m / 2^96)
TRUNCATED_BYTES = 12
# Separates these hashes from any other use of SHA-256 on the same ids.
DOMAIN = b"pec-psi/ecdh-x25519/sha256/v1\x00"

if lib.pec_psi_init() != 0:  # pragma: no cover - libsodium cannot start (no entropy source)
    raise ImportError("libsodium failed to initialise")

# Intel's crypto_mb (PyPI ipp-crypto, with its runtime intel-cmplr-lib-rt) installs these
# under the environment's lib/; it has no RUNPATH, so its own dependencies are loaded first.
_MB_LIB = "libcrypto_mb.so.13"
_MB_DEPS = ("libintlc.so.5", "libimf.so", "libsvml.so", "libirng.so")
_mb_handles: list[ctypes.CDLL] = []  # kept alive: C holds a pointer into the library


def _find_mb() -> Path | None:
    env = os.environ.get("PEC_CRYPTO_MB_LIB")
    if env:
        return Path(env)
    path = Path(sys.prefix) / "lib" / _MB_LIB
    return path if path.exists() else None


def use_backend(name: str = "auto") -> str:
    """Chooses the X25519 implementation: "auto" (crypto_mb's 8-lane AVX-512 IFMA X25519
    where the CPU and library are there and pass a self-test against libsodium, else
    libsodium) or "libsodium". Returns the one in use. ``PEC_PSI_X25519=libsodium`` makes
    libsodium the default."""
    lib.pec_psi_set_mb8(ffi.NULL)
    if name == "libsodium":
        return backend()
    if name != "auto":
        raise ValueError(f"unknown X25519 backend {name!r}")
    path = _find_mb()
    if path is None:
        return backend()
    try:
        for dep in _MB_DEPS:
            if (path.parent / dep).exists():
                _mb_handles.append(ctypes.CDLL(str(path.parent / dep), mode=ctypes.RTLD_GLOBAL))
        mb = ctypes.CDLL(str(path))
        _mb_handles.append(mb)
        address = ctypes.cast(mb.mbx_x25519_mb8, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return backend()  # not loadable here: libsodium serves
    lib.pec_psi_set_mb8(ffi.cast("void *", address))
    return backend()


def backend() -> str:
    return ffi.string(lib.pec_psi_backend()).decode()


class LowOrderPoint(OperatorError):
    """A point whose X25519 product is zero: not an honest hash of an id."""

    def __init__(self, index: int) -> None:
        super().__init__(f"point {index} is of low order (its X25519 product is zero): not on "
                         "the main curve or its twist's large subgroup")
        self.index = index


def threads() -> int:
    return os.cpu_count() or 1


def new_scalar() -> bytes:
    """A fresh secret: 32 random bytes (X25519 clamps them; one per party per job)."""
    return os.urandom(32)


def id_bytes(column: pa.Array | pa.ChunkedArray) -> pa.LargeBinaryArray:
    """The canonical bytes of an id column, as one large_binary array.

    Strings are their UTF-8 bytes and integers their decimal text, so "42" at one party and 42
    at the other are the same id; binary ids are taken as they are.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
    if pa.types.is_integer(t):
        column = column.cast(pa.string())
    if column.null_count:
        raise OperatorError(f"the id column has {column.null_count} null id(s)")
    return column.cast(pa.large_binary())


def hash_to_point(ids: pa.Array | pa.ChunkedArray, domain: bytes = DOMAIN) -> np.ndarray:
    """(N, 32) uint8: each id hashed to an X25519 u-coordinate, SHA-256(domain || id) with
    bit 255 cleared (another ``domain`` makes it a plain batch hash for other uses)."""
    arr = id_bytes(ids)
    n = len(arr)
    out = np.empty((n, POINT_BYTES), dtype=np.uint8)
    if n == 0:
        return out
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset: arr.offset + n + 1]
    offsets = np.ascontiguousarray(offsets)
    # an all-empty column may have no data buffer at all
    data = data_buf if data_buf is not None and data_buf.size else b"\x00"
    lib.pec_psi_hash_to_point(
        ffi.from_buffer("uint8_t[]", data), ffi.from_buffer("int64_t[]", offsets), n,
        domain, len(domain), ffi.from_buffer("uint8_t[]", out, require_writable=True),
        threads())
    return out


def mul(points: np.ndarray | bytes | memoryview, scalar: bytes) -> np.ndarray:
    """(N, 32) uint8: X25519(scalar, point) for each point; raises LowOrderPoint."""
    if len(scalar) != 32:
        raise ValueError("a scalar is 32 bytes")
    src = np.frombuffer(points, dtype=np.uint8) if not isinstance(points, np.ndarray) else (
        np.ascontiguousarray(points, dtype=np.uint8).reshape(-1))
    if src.size % POINT_BYTES:
        raise OperatorError(f"{src.size} bytes is not a whole number of {POINT_BYTES}-byte "
                            "points")
    n = src.size // POINT_BYTES
    out = np.empty((n, POINT_BYTES), dtype=np.uint8)
    if n == 0:
        return out
    bad = lib.pec_psi_mul(ffi.from_buffer("uint8_t[]", src), n, scalar,
                          ffi.from_buffer("uint8_t[]", out, require_writable=True), threads())
    if bad >= 0:
        raise LowOrderPoint(int(bad))
    return out


def truncate(points: np.ndarray) -> np.ndarray:
    """(N, 12) uint8: the second stage's 96-bit prefix of each value."""
    return np.ascontiguousarray(points[:, :TRUNCATED_BYTES])


def members(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Boolean mask over the rows of ``own`` (N, 12): which also occur in ``other`` (M, 12).

    Sort-and-search on the first 8 bytes as uint64, then the last 4 confirm; an equal 64-bit
    prefix with a different tail (about M^2 / 2^64 likely) falls back to an exact scan of
    that key's run, so the answer is exact on all 96 bits.
    """
    n, m = len(own), len(other)
    if n == 0 or m == 0:
        return np.zeros(n, dtype=bool)
    ok, ot = _split(own)
    pk, pt = _split(other)
    order = np.lexsort((pt, pk))
    pk, pt = pk[order], pt[order]
    left = np.searchsorted(pk, ok, side="left")
    right = np.searchsorted(pk, ok, side="right")
    hit = right > left
    at = np.minimum(left, m - 1)
    mask = hit & (pt[at] == ot)
    for i in np.flatnonzero(hit & (right - left > 1) & ~mask):  # pragma: no cover - ~2^-64
        mask[i] = bool(np.any(pt[left[i]:right[i]] == ot[i]))
    return mask


def _split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1, TRUNCATED_BYTES)
    head = np.ascontiguousarray(v[:, :8]).view(np.uint64).reshape(-1)
    tail = np.ascontiguousarray(v[:, 8:]).view(np.uint32).reshape(-1)
    return head, tail


use_backend("libsodium" if os.environ.get("PEC_PSI_X25519") == "libsodium" else "auto")
