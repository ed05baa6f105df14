"""Binary format of a sealed blob.

Layout (big-endian), version 1:

    magic "PECS" | version u8 | KEK generation u32 | context length u16 | context |
    nonce (12 bytes) | AES-256-GCM ciphertext with its 16-byte tag

The context travels in clear because it is a name, not a secret, and because KEK rotation must
re-seal every blob without the caller supplying each context again. Everything before the nonce
is the GCM additional data, so changing the generation, the context or the version fails
authentication.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hsm.errors import BlobMalformed

MAGIC = b"PECS"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_CONTEXT = 0xFFFF
_HEADER = struct.Struct(">4sBIH")


@dataclass(frozen=True)
class SealedBlob:
    generation: int
    context: bytes
    nonce: bytes
    ciphertext: bytes

    def header(self) -> bytes:
        """The authenticated header: the GCM additional data."""
        return _HEADER.pack(MAGIC, VERSION, self.generation, len(self.context)) + self.context

    def to_bytes(self) -> bytes:
        return self.header() + self.nonce + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedBlob:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BlobMalformed(f"a sealed blob is bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise BlobMalformed(f"sealed blob too short ({len(data)} bytes)")
        magic, version, generation, ctx_len = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BlobMalformed("not a sealed blob (bad magic)")
        if version != VERSION:
            raise BlobMalformed(f"sealed blob version {version} is not supported (want {VERSION})")
        body = _HEADER.size + ctx_len
        if len(data) < body + NONCE_BYTES + TAG_BYTES:
            raise BlobMalformed("sealed blob truncated")
        return cls(
            generation=generation,
            context=data[_HEADER.size:body],
            nonce=data[body:body + NONCE_BYTES],
            ciphertext=data[body + NONCE_BYTES:],
        )
