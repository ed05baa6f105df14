"""Byte format of an ``EncryptedArray`` (version 2, little-endian).

    magic        8 bytes  b"PECPAIL\\0"
    version      u16      2 (1 is still read)
    dtype        u8       0 = int64, 1 = float64 (the plaintext type)
    ndim         u8
    scale        i64      value = mantissa * 2**-scale
    limbs        u32      64-bit limbs per ciphertext (limbs of n^2)
    fingerprint  32 bytes SHA-256 of n: the key the ciphertexts belong to
    shape        ndim x u64
    bound words  u16      version 2 only: 64-bit words of the magnitude bound
    bound        words x u64, little-endian: every |mantissa| is at most this
    payload      prod(shape) x limbs x u64, C order, little-endian limbs
    checksum     32 bytes SHA-256 of everything before it

Version 1 carries no bound: its arrays get the whole plaintext band as bound, so they decrypt
but refuse every operation that could grow their values. The bound is as trustworthy as the
scale next to it: both come from the sender.

The checksum catches corruption, not tampering: ciphertexts are malleable by design, so an
application that needs authenticity signs the bytes. Every ciphertext is also checked to lie in
``[1, n^2)`` so that no malformed value reaches a backend.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING

import numpy as np

from accel.backends.base import int_to_limbs, limbs_for, limbs_to_ints
from accel.paillier import limbs as lm
from accel.paillier.keys import PublicKey

if TYPE_CHECKING:
    from accel.paillier.array import EncryptedArray

MAGIC = b"PECPAIL\0"
VERSION = 2
_READABLE = (1, 2)
_HEADER = struct.Struct("<8sHBBqI32s")
_BOUND_WORDS = struct.Struct("<H")
_CHECKSUM = 32
_DTYPES = {0: np.dtype(np.int64), 1: np.dtype(np.float64)}
_DTYPE_CODES = {v: k for k, v in _DTYPES.items()}


def dumps(array: EncryptedArray) -> bytes:
    pk = array.public_key
    header = _HEADER.pack(MAGIC, VERSION, _DTYPE_CODES[array.dtype], array.ndim, array.scale,
                          pk.limbs, pk.fingerprint)
    words = limbs_for(array.bound)
    bound = int_to_limbs(array.bound, words).astype("<u8").tobytes()
    body = b"".join([header, struct.pack(f"<{array.ndim}Q", *array.shape),
                     _BOUND_WORDS.pack(words), bound,
                     array.data.astype("<u8", copy=False).tobytes()])
    return body + hashlib.sha256(body).digest()


def loads(blob: bytes, public_key: PublicKey) -> tuple[np.ndarray, int, np.dtype, int]:
    """``(data, scale, dtype, bound)`` from ``dumps`` output, or ``ValueError`` saying what is
    wrong."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError("from_bytes expects bytes")
    blob = bytes(blob)
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise ValueError("not a serialized EncryptedArray (bad magic)")
    if len(blob) < _HEADER.size + _CHECKSUM:
        raise ValueError("serialized EncryptedArray is truncated (header incomplete)")
    _, version, dtype_code, ndim, scale, limbs, fingerprint = _HEADER.unpack_from(blob)
    if version not in _READABLE:
        raise ValueError(f"unsupported EncryptedArray format version {version}")
    shape_end = _HEADER.size + 8 * ndim
    if len(blob) < shape_end + _CHECKSUM:
        raise ValueError("serialized EncryptedArray is truncated (shape incomplete)")
    shape = struct.unpack_from(f"<{ndim}Q", blob, _HEADER.size)
    count = 1
    for dim in shape:
        count *= dim
    bound = public_key.max_int
    if version >= 2:
        if len(blob) < shape_end + _BOUND_WORDS.size + _CHECKSUM:
            raise ValueError("serialized EncryptedArray is truncated (bound incomplete)")
        (words,) = _BOUND_WORDS.unpack_from(blob, shape_end)
        bound_start = shape_end + _BOUND_WORDS.size
        shape_end = bound_start + 8 * words
        if len(blob) < shape_end + _CHECKSUM:
            raise ValueError("serialized EncryptedArray is truncated (bound incomplete)")
        bound_limbs = np.frombuffer(blob, dtype="<u8", count=words, offset=bound_start)
        bound = limbs_to_ints(bound_limbs.astype(np.uint64).reshape(1, words))[0] if words else 0
    expected = shape_end + count * limbs * 8 + _CHECKSUM
    if len(blob) != expected:
        raise ValueError(
            f"serialized EncryptedArray has {len(blob)} bytes, its header announces {expected}"
            " (truncated or extended)"
        )
    if hashlib.sha256(blob[:-_CHECKSUM]).digest() != blob[-_CHECKSUM:]:
        raise ValueError("serialized EncryptedArray is corrupt (checksum mismatch)")
    if fingerprint != public_key.fingerprint:
        raise ValueError("serialized EncryptedArray belongs to a different public key")
    if limbs != public_key.limbs:
        raise ValueError(f"limb count {limbs} does not match the key ({public_key.limbs})")
    if dtype_code not in _DTYPES:
        raise ValueError(f"unknown plaintext dtype code {dtype_code}")
    if _DTYPES[dtype_code].kind == "i" and scale != 0:
        raise ValueError("an integer EncryptedArray must have scale 0")
    if bound > public_key.max_int:
        raise ValueError("the magnitude bound is beyond the key's plaintext band: the values "
                         "may have wrapped and cannot be trusted")
    flat = np.frombuffer(blob, dtype="<u8", count=count * limbs, offset=shape_end)
    flat = flat.astype(np.uint64).reshape(count, limbs)
    bad = ~lm.less_than(flat, public_key.nsquare) | lm.is_zero(flat)
    if bad.any():
        raise ValueError(f"ciphertext {int(np.argmax(bad))} is not in [1, n^2)")
    return flat.reshape(*shape, limbs), scale, _DTYPES[dtype_code], bound
