"""The federation channel: gRPC over mutual TLS with pinned certificates, framed sessions.

Library only (no daemon wiring): it imports nothing from ``appliance`` outside this package.
See docs/federation-channel.md.
"""

from .errors import (
    ChannelError,
    FrameError,
    MessageAborted,
    PeerLost,
    RecvTimeout,
    SessionClosed,
    Unauthorized,
)
from .identity import (
    CertInfo,
    fingerprint,
    generate_key,
    inspect_certificate,
    load_private_key,
    make_node_certificate,
    san_for,
)
from .session import ChannelOptions, Session, memory_pair
from .transport import ChannelServer, PeerChannel, connect

__all__ = [
    "CertInfo",
    "ChannelError",
    "ChannelOptions",
    "ChannelServer",
    "FrameError",
    "MessageAborted",
    "PeerChannel",
    "PeerLost",
    "RecvTimeout",
    "Session",
    "SessionClosed",
    "Unauthorized",
    "connect",
    "fingerprint",
    "generate_key",
    "inspect_certificate",
    "load_private_key",
    "make_node_certificate",
    "memory_pair",
    "san_for",
]
