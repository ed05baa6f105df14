"""Errors of the federation channel: one base, a few subclasses callers branch on."""

from __future__ import annotations


class ChannelError(Exception):
    """Base of every error the channel raises; the message says what was wrong."""


class PeerLost(ChannelError):
    """The peer stopped answering (dead, partitioned, or its stream could not be resumed)."""


class FrameError(ChannelError):
    """A frame was refused: malformed, oversize, replayed or out of order."""


class Unauthorized(ChannelError):
    """The other side's certificate is not pinned, or its identity proof failed."""


class SessionClosed(ChannelError):
    """The session was closed (by this side or gracefully by the peer)."""


class RecvTimeout(ChannelError, TimeoutError):
    """recv() found no message within its timeout; the session is still usable."""


class MessageAborted(ChannelError):
    """The peer's byte producer failed mid-message; the session is still usable."""
