"""Sessions: the transport-independent half of the channel.

A ``Session`` owns everything a stream needs beyond moving bytes: sequence numbers, the send
window (which is also the resume buffer), acks, the receive buffer, heartbeats, chunking,
and the refusal of replayed, out-of-order, oversize or malformed frames. A transport (gRPC in
``transport``, two threads in ``memory_pair``) attaches a *link* to it, pumps
``session._outgoing(link)`` to the wire and feeds what arrives to ``session._incoming``. Because
both transports run the very same code, a test of an operator over ``memory_pair`` exercises
the same checks as the real channel.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import framing
from .errors import (
    ChannelError,
    FrameError,
    MessageAborted,
    PeerLost,
    RecvTimeout,
    SessionClosed,
    Unauthorized,
)
from .framing import Flag, Frame, Kind

log = logging.getLogger("appliance.federation.channel")

MiB = 1024 * 1024


@dataclass(frozen=True)
class ChannelOptions:
    """Limits and timings; the defaults suit a LAN or a 100 Mbit/s, 10 ms WAN."""

    max_frame: int = 4 * MiB  # largest payload accepted in one frame
    chunk_size: int = 1 * MiB  # byte messages are cut into chunks of this size
    window_bytes: int = 16 * MiB  # sent-but-unacked bytes per session (= resume buffer)
    recv_buffer_bytes: int = 16 * MiB  # received-but-unread bytes per session
    max_message_bytes: int = 64 * MiB  # largest byte message recv() assembles (else recv_chunks)
    heartbeat_interval: float = 2.0  # application heartbeat when a link is otherwise idle
    peer_timeout: float = 8.0  # no frame at all for this long -> the link is dead
    keepalive_time: float = 5.0  # gRPC HTTP/2 ping interval
    keepalive_timeout: float = 5.0  # gRPC closes the connection if a ping is unanswered
    resume_timeout: float = 30.0  # a resumable session waits this long for a new link
    open_timeout: float = 10.0  # connect / OPEN / ACCEPT must complete within this
    close_timeout: float = 5.0  # close() waits this long for the peer to ack CLOSE
    max_sessions: int = 64  # concurrent streams a server serves (one thread pair each)

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= self.max_frame:
            raise ValueError("chunk_size must be positive and at most max_frame")
        if self.window_bytes < self.max_frame + framing.HEADER_SIZE:
            raise ValueError("window_bytes must hold at least one full frame")
        if self.recv_buffer_bytes < self.max_frame:
            raise ValueError("recv_buffer_bytes must hold at least one full frame")
        if self.peer_timeout <= self.heartbeat_interval:
            raise ValueError("peer_timeout must be longer than heartbeat_interval")

    @property
    def liveness_bound(self) -> float:
        """Worst case from a peer's death to PeerLost on a non-resumable session."""
        return self.peer_timeout + _TICK


_TICK = 0.1  # watchdog period; also the longest a waiting thread sleeps between checks
_ERROR_CODES: dict[str, type[ChannelError]] = {
    "frame": FrameError,
    "unauthorized": Unauthorized,
    "peer-lost": PeerLost,
    "closed": SessionClosed,
}


def _code_of(exc: ChannelError) -> str:
    for code, cls in _ERROR_CODES.items():
        if isinstance(exc, cls):
            return code
    return "error"


def _copy(exc: ChannelError) -> ChannelError:
    # each caller gets a fresh exception: re-raising one instance from several threads would
    # chain their tracebacks together
    return type(exc)(str(exc))


class Link:
    """One attachment of a session to a transport stream. Transports subclass ``_kill``."""

    def __init__(self) -> None:
        self.dead = False

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            self._kill()

    def _kill(self) -> None:  # pragma: no cover - overridden
        pass


class Session:
    """One bidirectional, ordered stream of messages of one job and topic with one peer."""

    def __init__(
        self,
        *,
        session_id: bytes,
        job_id: str,
        topic: str,
        peer_id: str,
        peer_fingerprint: str,
        role: str,
        resumable: bool,
        options: ChannelOptions,
        reconnect: Callable[[Session], None] | None = None,
        on_end: Callable[[Session], None] | None = None,
    ) -> None:
        self.id = session_id
        self.job_id = job_id
        self.topic = topic
        self.peer_id = peer_id
        self.peer_fingerprint = peer_fingerprint
        self.role = role
        self.resumable = resumable
        self.options = options
        self._reconnect = reconnect
        self._on_end = on_end
        self._peer_max_frame = options.max_frame
        self._cond = threading.Condition(threading.Lock())
        self._send_mutex = threading.RLock()  # one message at a time: chunks never interleave
        self._recv_mutex = threading.RLock()
        # send side: ``_out`` holds reliable frames not yet acked, in seq order; those with
        # seq >= ``_tx_next`` are not yet transmitted on the current link.
        self._next_seq = 1
        self._out: collections.deque[tuple[int, bytes, int]] = collections.deque()
        self._out_bytes = 0
        self._tx_next = 1
        self._peer_ack = 0
        self._ctrl: collections.deque[bytes | tuple[Kind, bytes]] = collections.deque()
        self._close_seq = 0
        # receive side
        self._rx_last = 0
        self._rx_more = False  # inside a chunked byte message
        self._rx: collections.deque[Frame] = collections.deque()
        self._rx_bytes = 0
        self._ack_sent = 0
        self._peer_close_seq = 0
        self._reader_blocked = False
        self._skip_bytes = False  # discarding the rest of a byte message nobody will read
        # state
        self._state = "open"  # open | closed | failed
        self._error: ChannelError | None = None
        self._peer_closed = False
        self._link: Link | None = None
        self._suspended_until = 0.0
        self._kill_at = 0.0
        now = time.monotonic()
        self._last_rx = now
        self._last_tx = now
        _watchdog.add(self)

    def __repr__(self) -> str:
        return (
            f"<Session {self.id.hex()[:12]} job={self.job_id} topic={self.topic} "
            f"peer={self.peer_id} {self.role} {self._state}>"
        )

    # -- public API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state != "open" or self._peer_closed

    def send(self, obj: Any, timeout: float | None = None) -> None:
        """Send one JSON control message (at most one frame: max_frame bytes encoded)."""
        payload = framing.encode_json(obj)
        limit = min(self.options.max_frame, self._peer_max_frame)
        if len(payload) > limit:
            raise FrameError(
                f"control message of {len(payload)} bytes exceeds the frame limit of {limit} "
                "bytes; send bulk data with send_bytes()"
            )
        with self._send_mutex:
            self._send_reliable(Kind.JSON, 0, payload, _deadline(timeout))

    def send_bytes(
        self, data: bytes | bytearray | memoryview | Iterable[bytes], timeout: float | None = None
    ) -> int:
        """Send one byte message, from bytes or from an iterator of chunks; returns its size.

        An iterator is consumed lazily, so a message of any size streams in bounded memory:
        at most ``window_bytes`` are held for retransmission. ``timeout`` bounds each wait for
        window space, not the whole transfer.
        """
        chunk = min(self.options.chunk_size, self._peer_max_frame)
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data).cast("B")
            pieces: Iterable[bytes | memoryview] = (
                view[i : i + chunk] for i in range(0, len(view), chunk)
            )
        else:
            pieces = _rechunk(data, chunk)
        total = 0
        started = False
        with self._send_mutex:
            pending: bytes | memoryview | None = None
            try:
                for piece in pieces:
                    if pending is not None:
                        self._send_reliable(Kind.BYTES, Flag.MORE, pending, _deadline(timeout))
                        started = True
                        total += len(pending)
                    pending = piece
                last = pending if pending is not None else b""
                self._send_reliable(Kind.BYTES, 0, last, _deadline(timeout))
                return total + len(last)
            except BaseException as e:
                if started and (not isinstance(e, ChannelError) or isinstance(e, RecvTimeout)):
                    # the peer holds the first chunks: tell it to drop the partial message
                    # (a tiny frame, let past a full window so that a timeout can send it)
                    with self._cond:
                        if self._state == "open" and not self._peer_closed:
                            self._append_reliable(Kind.BYTES, Flag.ABORT, b"")
                raise

    def recv(self, timeout: float | None = None) -> Any:
        """The next message: a JSON value, or ``bytes`` for a byte message.

        Raises RecvTimeout when nothing arrives in time, SessionClosed after the peer's close,
        PeerLost / FrameError / Unauthorized when the session failed. A byte message larger
        than ``max_message_bytes`` is skipped with a ChannelError: read those with
        ``recv_chunks``.
        """
        with self._recv_mutex:
            frame = self._pop(_deadline(timeout))
            if frame.kind == Kind.JSON:
                return frame.json()
            parts = [frame.payload]
            total = len(frame.payload)
            while frame.flags & Flag.MORE:
                frame = self._pop(None)
                if frame.flags & Flag.ABORT:
                    raise MessageAborted("the peer aborted the byte message it was sending")
                total += len(frame.payload)
                if total > self.options.max_message_bytes:
                    self._skip_rest(frame)
                    raise ChannelError(
                        f"byte message exceeds max_message_bytes "
                        f"({self.options.max_message_bytes}); it was skipped: use recv_chunks()"
                    )
                parts.append(frame.payload)
            return b"".join(parts)

    def recv_chunks(self, timeout: float | None = None) -> Iterator[bytes]:
        """The next message, which must be a byte message, as an iterator of its chunks.

        ``timeout`` bounds the wait for the first chunk; later chunks wait as long as the peer
        is alive (a dead peer ends the iteration with PeerLost). The next message being JSON
        raises ChannelError and leaves it for recv().
        """
        self._recv_mutex.acquire()
        try:
            first = self._pop(_deadline(timeout))
            if first.kind == Kind.JSON:
                with self._cond:
                    self._rx.appendleft(first)
                    self._rx_bytes += len(first.payload)
                raise ChannelError("the next message is a JSON control message: use recv()")
        except BaseException:
            self._recv_mutex.release()
            raise
        return self._chunks(first)

    def close(self, timeout: float | None = None) -> None:
        """Close gracefully: the peer reads everything sent before, then SessionClosed.

        Waits up to ``timeout`` (default close_timeout) for the peer to ack the close. Frames the
        peer sent that this side had not read are dropped. Idempotent.
        """
        deadline = time.monotonic() + (self.options.close_timeout if timeout is None else timeout)
        kill: Link | None = None
        with self._send_mutex, self._cond:
            if self._state != "open":
                return
            if not self._peer_closed and self._link is not None:
                self._close_seq = self._append_reliable(Kind.CLOSE, 0, b"")
                while self._peer_ack < self._close_seq and self._state == "open":
                    left = deadline - time.monotonic()
                    if left <= 0 or self._link is None:
                        break
                    self._cond.wait(min(left, _TICK))
            if self._state == "open":
                self._state = "closed"
                self._error = SessionClosed("session closed by this side")
            if self._peer_ack < self._close_seq or self._peer_closed:
                kill = self._link
            self._cond.notify_all()
        if kill is not None:
            kill.kill()
        self._ended()

    def abort(self, reason: str) -> None:
        """End the session now, without draining; the peer gets ChannelError with ``reason``."""
        self._fail(ChannelError(f"session aborted by {self.role}: {reason}"), tell_peer=True)

    # -- internals: sending ----------------------------------------------------------------

    def _send_reliable(
        self, kind: Kind, flags: int, payload: bytes | memoryview, deadline: float | None
    ) -> None:
        size = len(payload) + framing.HEADER_SIZE
        with self._cond:
            while True:
                self._check_sendable()
                # one frame may always be in flight, however big, so a window smaller than a
                # frame cannot stall the session
                if not self._out or self._out_bytes + size <= self.options.window_bytes:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise RecvTimeout("send window full: the peer did not ack in time")
                self._cond.wait(_TICK)
            self._append_reliable(kind, flags, payload)

    def _append_reliable(self, kind: Kind, flags: int, payload: bytes | memoryview) -> int:
        seq = self._next_seq
        self._next_seq += 1
        data = framing.encode_parts(kind, self.id, seq, self._rx_last, flags, payload)
        self._out.append((seq, data, self._rx_last))
        self._out_bytes += len(data)
        self._cond.notify_all()
        return seq

    def _check_sendable(self) -> None:
        if self._error is not None:
            raise _copy(self._error)
        if self._peer_closed:
            raise SessionClosed("the peer closed the session")

    def _inject_raw(self, data: bytes) -> None:
        """Test hook: put raw bytes on the wire as the next frame, bypassing every check."""
        with self._cond:
            self._ctrl.append(data)
            self._cond.notify_all()

    def _outgoing(self, link: Link) -> Iterator[bytes]:
        """What the transport writes on ``link``; ends when the link or the session ends."""
        while True:
            data = self._next_out(link)
            if data is None:
                return
            yield data

    def _next_out(self, link: Link) -> bytes | None:
        with self._cond:
            while True:
                if link.dead or link is not self._link:
                    return None
                now = time.monotonic()
                if self._ctrl:
                    item = self._ctrl.popleft()
                    if isinstance(item, tuple):
                        kind, payload = item
                        self._ack_sent = self._rx_last
                        item = framing.encode_parts(kind, self.id, 0, self._rx_last, 0, payload)
                    self._last_tx = now
                    return item
                if self._state == "failed":
                    return None  # the ERROR frame (if any) went out above
                if self._out and self._tx_next <= self._out[-1][0]:
                    seq, data, ack = self._out[self._tx_next - self._out[0][0]]
                    self._tx_next = seq + 1
                    self._ack_sent = max(self._ack_sent, ack)
                    self._last_tx = now
                    return data
                if self._rx_last > self._ack_sent:
                    # idle link: ack now; the peer's window and resume buffer shrink sooner
                    self._ctrl.append((Kind.ACK, b""))
                    continue
                if self._close_seq and self._peer_ack >= self._close_seq:
                    return None  # our CLOSE is acked: nothing more will be sent
                if self._peer_closed and self._ack_sent >= self._peer_close_seq:
                    return None  # the peer closed and has our ack for it
                if self._state == "closed":
                    return None
                wait = self._last_tx + self.options.heartbeat_interval - now
                if wait <= 0:
                    self._ctrl.append((Kind.HEARTBEAT, b""))
                    continue
                self._cond.wait(min(wait, _TICK * 5))

    # -- internals: receiving --------------------------------------------------------------

    def _incoming(self, link: Link, data: bytes) -> None:
        """Check one frame from ``link`` and buffer it; raises FrameError to refuse it."""
        frame = framing.decode(data, self.options.max_frame)
        with self._cond:
            if link is not self._link or self._state != "open":
                return  # a stale link or a finished session: drop silently
            self._last_rx = time.monotonic()
            if frame.session != self.id:
                raise FrameError(
                    f"frame for session {frame.session.hex()} on session {self.id.hex()}"
                )
            if frame.ack >= self._next_seq:
                raise FrameError(
                    f"ack {frame.ack} for a frame never sent (last sent {self._next_seq - 1})"
                )
            self._acked(frame.ack)
            kind = frame.kind
            if kind in (Kind.ACK, Kind.HEARTBEAT):
                return
            if kind == Kind.ERROR:
                self._peer_error(frame)
                return
            if kind not in framing.RELIABLE:
                raise FrameError(f"unexpected {kind.name} frame inside a session")
            if frame.seq <= self._rx_last:
                raise FrameError(
                    f"replayed frame: seq {frame.seq} was already received "
                    f"(last in-order seq {self._rx_last})"
                )
            if frame.seq != self._rx_last + 1:
                raise FrameError(
                    f"out-of-order frame: seq {frame.seq}, expected {self._rx_last + 1}"
                )
            if self._peer_closed:
                raise FrameError(f"{kind.name} frame after the peer's CLOSE")
            if self._rx_more and kind != Kind.BYTES:
                raise FrameError(f"{kind.name} frame inside an unfinished byte message")
            # backpressure: stop reading (so the transport's flow control stops the sender)
            # until the application has made room
            size = len(frame.payload)
            while self._rx and self._rx_bytes + size > self.options.recv_buffer_bytes:
                self._reader_blocked = True
                self._cond.wait(_TICK)
                if link is not self._link or self._state != "open":
                    self._reader_blocked = False
                    return
            if self._reader_blocked:
                self._reader_blocked = False
                self._last_rx = time.monotonic()
            self._rx_more = kind == Kind.BYTES and bool(frame.flags & Flag.MORE)
            self._rx.append(frame)
            self._rx_bytes += size
            self._rx_last = frame.seq
            if kind == Kind.CLOSE:
                self._peer_closed = True
                self._peer_close_seq = frame.seq
                self._ctrl.append((Kind.ACK, b""))
            elif (
                self._rx_last - self._ack_sent >= 8 or size >= self.options.window_bytes // 8
            ) and not any(isinstance(c, tuple) and c[0] == Kind.ACK for c in self._ctrl):
                self._ctrl.append((Kind.ACK, b""))
            self._cond.notify_all()

    def _acked(self, ack: int) -> None:
        if ack <= self._peer_ack:
            return  # acks may arrive stale (a retransmitted frame carries its original ack)
        self._peer_ack = ack
        while self._out and self._out[0][0] <= ack:
            self._out_bytes -= len(self._out.popleft()[1])
        self._tx_next = max(self._tx_next, ack + 1)
        self._cond.notify_all()

    def _peer_error(self, frame: Frame) -> None:
        body = frame.json()
        code = body.get("code") if isinstance(body, dict) else None
        msg = body.get("msg") if isinstance(body, dict) else None
        cls = _ERROR_CODES.get(str(code), ChannelError)
        if cls is SessionClosed:
            cls = PeerLost
        self._fail_locked(cls(f"peer {self.peer_id} refused the session: {msg}"), False)

    def _pop(self, deadline: float | None) -> Frame:
        with self._cond:
            while True:
                while self._rx:
                    frame = self._rx.popleft()
                    self._rx_bytes -= len(frame.payload)
                    self._cond.notify_all()
                    if self._skip_bytes and frame.kind == Kind.BYTES:
                        self._skip_bytes = bool(frame.flags & Flag.MORE)
                        continue
                    self._skip_bytes = False
                    if frame.kind == Kind.CLOSE:
                        self._rx.appendleft(frame)  # stays: every later recv says closed
                        self._rx_bytes += len(frame.payload)
                        raise SessionClosed(f"peer {self.peer_id} closed the session")
                    return frame
                if self._error is not None:
                    raise _copy(self._error)
                if deadline is None:
                    self._cond.wait(_TICK * 5)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RecvTimeout(
                        f"no message on {self.job_id}/{self.topic} within the timeout"
                    )
                self._cond.wait(min(left, _TICK * 5))

    def _skip_rest(self, frame: Frame) -> None:
        with self._cond:
            self._skip_bytes = bool(frame.flags & Flag.MORE)

    def _chunks(self, first: Frame) -> Iterator[bytes]:
        frame = first
        try:
            while True:
                if frame.flags & Flag.ABORT:
                    raise MessageAborted("the peer aborted the byte message it was sending")
                if frame.payload:
                    yield frame.payload
                if not frame.flags & Flag.MORE:
                    frame = None  # type: ignore[assignment]
                    return
                frame = self._pop(None)
        finally:
            if frame is not None:
                self._skip_rest(frame)  # the reader stopped early: drop the rest
            self._recv_mutex.release()

    # -- internals: links, failure, liveness -----------------------------------------------

    def _attach(self, link: Link, peer_recv: int, peer_max_frame: int | None = None) -> int:
        """Make ``link`` current; the peer has received up to ``peer_recv``. Returns our
        received seq, which the peer resumes from."""
        with self._cond:
            if self._state != "open":
                raise _copy(self._error or SessionClosed("session already ended"))
            if peer_recv >= self._next_seq or peer_recv < self._peer_ack:
                raise FrameError(
                    f"resume from seq {peer_recv} is impossible: acked {self._peer_ack}, "
                    f"sent {self._next_seq - 1}"
                )
            old, self._link = self._link, link
            self._acked(peer_recv)
            self._tx_next = peer_recv + 1  # resend what the peer never got
            self._ack_sent = 0
            self._suspended_until = 0.0
            now = time.monotonic()
            self._last_rx = self._last_tx = now
            if peer_max_frame:
                self._peer_max_frame = peer_max_frame
            rx_last = self._rx_last
            self._cond.notify_all()
        if old is not None:
            old.kill()
        return rx_last

    def _link_lost(self, link: Link, exc: ChannelError) -> None:
        """The transport reports ``link`` ended. Resume, or fail the session."""
        reconnect = None
        with self._cond:
            if link is not self._link:
                return
            self._link = None
            self._cond.notify_all()
            if self._state != "open" or self._peer_closed:
                return
            if self._close_seq and self._peer_ack >= self._close_seq:
                return  # our CLOSE was acked: the stream ending is the expected end
            if self.resumable and isinstance(exc, PeerLost):
                self._suspended_until = time.monotonic() + self.options.resume_timeout
                log.warning("session %r: link lost (%s); waiting to resume", self, exc)
                reconnect = self._reconnect
            else:
                self._fail_locked(exc, tell_peer=False)
        link.kill()
        if reconnect is not None:
            threading.Thread(
                target=reconnect, args=(self,), name="pec-channel-resume", daemon=True
            ).start()
        if self._state != "open":
            self._ended()

    def _fail(self, exc: ChannelError, tell_peer: bool) -> None:
        with self._cond:
            self._fail_locked(exc, tell_peer)
        self._ended()

    def _fail_locked(self, exc: ChannelError, tell_peer: bool) -> None:
        if self._state != "open":
            return
        self._state = "failed"
        self._error = exc
        log.warning("session %r failed: %s: %s", self, type(exc).__name__, exc)
        if tell_peer and self._link is not None:
            payload = framing.encode_json({"code": _code_of(exc), "msg": str(exc)})
            self._ctrl.append((Kind.ERROR, payload))
            # give the ERROR frame a moment to leave, then cut the link regardless
            self._kill_at = time.monotonic() + 1.0
        elif self._link is not None:
            self._kill_at = time.monotonic()
        self._cond.notify_all()

    def _tick(self, now: float) -> bool:
        """Watchdog step; returns False once the session needs no more watching."""
        kill: Link | None = None
        lost: tuple[Link, PeerLost] | None = None
        with self._cond:
            if self._state != "open":
                if self._link is not None and self._kill_at and now >= self._kill_at:
                    kill, self._link = self._link, None
                done = self._link is None
            else:
                done = False
                if self._link is None:
                    if self._suspended_until and now >= self._suspended_until:
                        self._fail_locked(
                            PeerLost(
                                f"peer {self.peer_id} lost: session not resumed within "
                                f"{self.options.resume_timeout:g} s"
                            ),
                            False,
                        )
                elif not self._reader_blocked and now - self._last_rx > self.options.peer_timeout:
                    lost = (
                        self._link,
                        PeerLost(
                            f"peer {self.peer_id} lost: nothing received for "
                            f"{now - self._last_rx:.1f} s (peer_timeout "
                            f"{self.options.peer_timeout:g} s)"
                        ),
                    )
        if lost is not None:
            self._link_lost(*lost)
        if kill is not None:
            kill.kill()
        if self._state != "open":
            self._ended()
        return not done

    def _ended(self) -> None:
        if self._on_end is not None and self._state != "open":
            cb, self._on_end = self._on_end, None
            cb(self)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes | memoryview]:
    for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"send_bytes iterator yielded {type(chunk).__name__}, not bytes")
        view = memoryview(chunk).cast("B")
        for i in range(0, len(view), size):
            yield view[i : i + size]


class _Watchdog:
    """One thread per process checks every live session's liveness each _TICK."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, session: Session) -> None:
        with self._lock:
            self._sessions.add(session)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="pec-channel-watchdog", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            with self._lock:
                sessions = list(self._sessions)
            for s in sessions:
                try:
                    keep = s._tick(time.monotonic())
                except Exception:  # a bug in one session must not stop the others' watch
                    log.exception("watchdog: session %r", s)
                    keep = True
                if not keep:
                    with self._lock:
                        self._sessions.discard(s)


_watchdog = _Watchdog()


# -- in-memory pair ------------------------------------------------------------------------


class _MemoryLink(Link):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def _kill(self) -> None:
        with self.session._cond:
            self.session._cond.notify_all()


def _pump(src: Session, src_link: Link, dst: Session, dst_link: Link) -> None:
    try:
        for data in src._outgoing(src_link):
            try:
                dst._incoming(dst_link, data)
            except FrameError as e:
                log.warning("session %r refused a frame: %s", dst, e)
                dst._fail(e, tell_peer=True)
    finally:
        dst._link_lost(dst_link, PeerLost(f"peer {src.peer_id} lost: its stream ended"))


def memory_pair(
    job_id: str = "job",
    topic: str = "topic",
    options: ChannelOptions | None = None,
    names: tuple[str, str] = ("node-a", "node-b"),
) -> tuple[Session, Session]:
    """Two connected sessions in one process, for unit tests of operators.

    They run the real session code (framing, windows, acks, replay and size checks), with
    two threads moving frames instead of gRPC. ``names`` are the two sides' node ids: the
    first session's peer is ``names[1]``.
    """
    opts = options or ChannelOptions()
    sid = os.urandom(framing.SESSION_ID_SIZE)
    a = Session(
        session_id=sid,
        job_id=job_id,
        topic=topic,
        peer_id=names[1],
        peer_fingerprint="",
        role="client",
        resumable=False,
        options=opts,
    )
    b = Session(
        session_id=sid,
        job_id=job_id,
        topic=topic,
        peer_id=names[0],
        peer_fingerprint="",
        role="server",
        resumable=False,
        options=opts,
    )
    la, lb = _MemoryLink(a), _MemoryLink(b)
    a._attach(la, 0)
    b._attach(lb, 0)
    for src, sl, dst, dl in ((a, la, b, lb), (b, lb, a, la)):
        threading.Thread(
            target=_pump, args=(src, sl, dst, dl), name="pec-channel-memory", daemon=True
        ).start()
    return a, b
