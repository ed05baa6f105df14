"""Frames: a fixed 44-byte header and a payload, one frame per gRPC message.

Header (network byte order)::

    magic    2s   b"PF"
    version  u8   1
    kind     u8   Kind
    flags    u16  Flag bits (unknown bits are refused)
    reserved u16  0
    session  16s  the session id: 16 random bytes drawn by the opener (the session nonce)
    seq      u64  sequence number of a reliable frame (1, 2, ...); 0 for control frames
    ack      u64  highest in-order seq this side has received from the other side
    length   u32  payload length (must equal what follows the header)

The length is redundant with gRPC's message length on purpose: a frame whose two lengths differ
was built wrongly, and is refused rather than guessed at.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from .errors import FrameError

MAGIC = b"PF"
VERSION = 1
HEADER = struct.Struct("!2sBBHH16sQQI")
HEADER_SIZE = HEADER.size  # 44
SESSION_ID_SIZE = 16
NO_SESSION = bytes(SESSION_ID_SIZE)
MAX_SEQ = 2**64 - 1


class Kind(enum.IntEnum):
    OPEN = 1  # client -> server, first frame of a stream: JSON {job_id, topic, ...}
    ACCEPT = 2  # server -> client, answer to OPEN: JSON {...}; ack = server's received seq
    JSON = 3  # reliable: one JSON control message
    BYTES = 4  # reliable: one chunk of a byte message (MORE set on all but the last)
    ACK = 5  # control: acknowledges the ack field
    HEARTBEAT = 6  # control: "still here", also carries ack
    CLOSE = 7  # reliable: the sender closes the session
    ERROR = 8  # control: JSON {code, msg}; the stream ends after it
    HELLO = 9  # unary identity exchange: JSON


class Flag(enum.IntFlag):
    MORE = 0x1  # BYTES: more chunks of this message follow
    RESUME = 0x2  # OPEN: resume an existing session instead of creating one
    ABORT = 0x4  # BYTES: the sender's producer failed; drop the partial message


RELIABLE = frozenset({Kind.JSON, Kind.BYTES, Kind.CLOSE})
JSON_KINDS = frozenset({Kind.OPEN, Kind.ACCEPT, Kind.JSON, Kind.ERROR, Kind.HELLO})
_ALLOWED_FLAGS = {
    Kind.OPEN: Flag.RESUME,
    Kind.BYTES: Flag.MORE | Flag.ABORT,
}


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    session: bytes
    seq: int = 0
    ack: int = 0
    flags: int = 0
    payload: bytes = b""

    def json(self) -> Any:
        return decode_json(self.payload)


def encode(frame: Frame) -> bytes:
    return encode_parts(frame.kind, frame.session, frame.seq, frame.ack, frame.flags, frame.payload)


def encode_parts(
    kind: int, session: bytes, seq: int, ack: int, flags: int, payload: bytes | memoryview
) -> bytes:
    header = HEADER.pack(MAGIC, VERSION, kind, flags, 0, session, seq, ack, len(payload))
    # one copy of the payload: gRPC wants a single bytes object per message anyway
    return header + payload if isinstance(payload, bytes) else b"".join((header, payload))


def decode(data: bytes, max_payload: int) -> Frame:
    """Parse and check one frame; every refusal is a FrameError that names the problem."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError(f"malformed frame: expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise FrameError(f"malformed frame: {len(data)} bytes, shorter than the 44-byte header")
    magic, version, kind, flags, reserved, session, seq, ack, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"malformed frame: bad magic {magic!r}")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version} (this node speaks {VERSION})")
    try:
        kind = Kind(kind)
    except ValueError:
        raise FrameError(f"malformed frame: unknown kind {kind}") from None
    if reserved:
        raise FrameError("malformed frame: reserved header field is not zero")
    if flags & ~int(_ALLOWED_FLAGS.get(kind, 0)):
        raise FrameError(f"malformed frame: flags {flags:#x} not allowed on {kind.name}")
    if length > max_payload:
        raise FrameError(
            f"oversize frame: {kind.name} payload of {length} bytes exceeds the limit of "
            f"{max_payload} bytes"
        )
    if length != len(data) - HEADER_SIZE:
        raise FrameError(
            f"malformed frame: header says {length} payload bytes, {len(data) - HEADER_SIZE} follow"
        )
    if (kind in RELIABLE) != (seq != 0):
        raise FrameError(f"malformed frame: {kind.name} with seq {seq}")
    payload = bytes(data[HEADER_SIZE:])
    frame = Frame(kind, bytes(session), seq, ack, flags, payload)
    if kind in JSON_KINDS:
        decode_json(payload)  # refuse a bad JSON body here, where the frame is still named
    return frame


def encode_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise FrameError(f"message is not JSON-serialisable: {e}") from None


def decode_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FrameError(f"malformed frame: JSON payload does not parse: {e}") from None
