"""A plugged-in engine's TCP link, carried over the job's attested session.

An engine from the field (SecretFlow's PSI, say) brings its own network link: each party
listens on a port and dials the other's. The appliance does not open that port to the peer.
Each node runs its engine on 127.0.0.1 and gives it, as the peer's address, a local port of
this relay; what the engine sends there travels as byte messages over the job's session (the
nodes' pinned mTLS channel, attested for this job) and the peer's relay hands it to its own
engine's port. So the engine's link is as private and as authenticated as every other job
message, needs no certificate of its own, passes every firewall the federation passes, and
dies with the job: a peer killed mid-job ends the session, and with it the link.

Wire format: each byte message is ``b"ER"``, a kind byte (``O`` open, ``D`` data, ``C``
close), the connection id (u32, little endian) and the payload (data only). A connection is
opened by the side whose engine dialled; of a job's k parties, the one of rank r opens ids
equal to r modulo k, so two parties never pick the same id. A frame that breaks these rules
is an ``OperatorError`` naming the peer.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.operators.base import OperatorError

MAGIC = b"ER"
HEADER = struct.Struct("<2scI")
OPEN, DATA, CLOSE = b"O", b"D", b"C"
CHUNK = 1 << 20  # bytes read from an engine socket at most per message
MAX_CONNECTIONS = 64  # an engine's link uses a handful; more is a misbehaving peer


def _no_delay(conn: socket.socket) -> None:
    """Blocking, and every write sent at once: the relay forwards whole messages, so Nagle's
    wait for an ACK would only add a delayed-ACK pause (up to 40 ms) to each round trip."""
    conn.settimeout(None)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def is_relay_frame(msg: Any) -> bool:
    return isinstance(msg, bytes | bytearray) and bytes(msg[:2]) == MAGIC


class EngineRelay:
    """Relays TCP connections between the local engine and the peer's, over ``session``.

    ``port`` is what the local engine dials for the peer. ``engine_port`` is where the local
    engine listens; connections the peer opens are dialled there (retried until the engine
    is up, for at most ``connect_timeout`` seconds). The session's receiving is the caller's:
    it hands each relay frame to ``handle`` and keeps the other messages for itself.
    """

    def __init__(self, session: Any, peer: str, *, opener: int, parties: int, engine_port: int,
                 connect_timeout: float = 60.0,
                 engine_alive: Callable[[], bool] = lambda: True) -> None:
        self._session, self._peer = session, peer
        self._engine_port, self._connect_timeout = engine_port, connect_timeout
        self._engine_alive = engine_alive
        self._next_id, self._step = opener, parties
        self._conns: dict[int, socket.socket] = {}
        self._closed_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self.bytes_sent = self.frames_sent = 0
        self.bytes_received = self.frames_received = 0
        self.error: BaseException | None = None  # a sending thread's failure, for the caller
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        # accept() is not woken by close() from another thread: it wakes up to look
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._readers: list[threading.Thread] = []  # one per connection
        self._acceptor = threading.Thread(target=self._accept, name="engine-relay-accept",
                                          daemon=True)
        self._acceptor.start()

    # -- the local engine dials the peer ---------------------------------------------------
    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            _no_delay(conn)
            with self._lock:
                cid = self._next_id
                self._next_id += self._step
                self._conns[cid] = conn
            try:
                self._session.send_bytes(HEADER.pack(MAGIC, OPEN, cid))
            except Exception as exc:  # the session is gone: the caller sees it on recv too
                self._fail(exc)
                return
            self._pump_local(cid, conn)

    def _pump_local(self, cid: int, conn: socket.socket) -> None:
        t = threading.Thread(target=self._read_local, args=(cid, conn),
                             name=f"engine-relay-{cid}", daemon=True)
        t.start()
        self._readers.append(t)

    def _read_local(self, cid: int, conn: socket.socket) -> None:
        """The local engine's bytes on one connection, to the peer, until either side closes."""
        try:
            while True:
                data = conn.recv(CHUNK)
                if not data:
                    break
                self._session.send_bytes(HEADER.pack(MAGIC, DATA, cid) + data)
                self.bytes_sent += len(data)
                self.frames_sent += 1
        except OSError:
            pass  # closed here (CLOSE from the peer, or the relay stopping)
        except Exception as exc:
            self._fail(exc)
            return
        if self._forget(cid):
            with contextlib.suppress(Exception):
                self._session.send_bytes(HEADER.pack(MAGIC, CLOSE, cid))

    # -- frames from the peer -------------------------------------------------------------
    def handle(self, frame: bytes) -> None:
        """One relay frame from the peer (checked: magic, kind, id, length)."""
        if len(frame) < HEADER.size:
            raise OperatorError(f"party {self._peer} sent a relay frame of {len(frame)} bytes, "
                                f"shorter than its {HEADER.size}-byte header")
        magic, kind, cid = HEADER.unpack_from(frame)
        if magic != MAGIC or kind not in (OPEN, DATA, CLOSE):
            raise OperatorError(f"party {self._peer} sent a malformed relay frame "
                                f"(kind {kind!r})")
        if kind == OPEN:
            if cid % self._step == self._next_id % self._step:
                raise OperatorError(f"party {self._peer} opened engine connection {cid}, an "
                                    "id of this node's side")
            with self._lock:
                known = cid in self._conns or cid in self._closed_ids
                many = len(self._conns) >= MAX_CONNECTIONS
            if known or many:
                raise OperatorError(f"party {self._peer} opened engine connection {cid} "
                                    + ("twice" if known else
                                       f"beyond the limit of {MAX_CONNECTIONS}"))
            if len(frame) != HEADER.size:
                raise OperatorError(f"party {self._peer} sent an open frame with a payload")
            conn = self._dial_engine()
            with self._lock:
                if conn is None:  # the engine ended: the caller sees why from its exit
                    self._closed_ids.add(cid)
                else:
                    self._conns[cid] = conn
            if conn is None:
                self._session.send_bytes(HEADER.pack(MAGIC, CLOSE, cid))
            else:
                self._pump_local(cid, conn)
            return
        with self._lock:
            conn = self._conns.get(cid)
            closed = cid in self._closed_ids
        if conn is None:
            if closed:
                return  # in flight when this side closed it: dropped, as TCP would
            raise OperatorError(f"party {self._peer} sent to engine connection {cid}, which "
                                "was never opened")
        if kind == CLOSE:
            self._forget(cid)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            return
        payload = memoryview(frame)[HEADER.size:]
        try:
            conn.sendall(payload)
        except OSError:
            # the local engine closed it; its reader thread tells the peer
            return
        self.bytes_received += len(payload)
        self.frames_received += 1

    def _dial_engine(self) -> socket.socket | None:
        """A connection to the local engine; None if the engine ended before it listened."""
        deadline = time.monotonic() + self._connect_timeout
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", self._engine_port), timeout=5)
                _no_delay(conn)
                return conn
            except OSError:
                # the engine is still starting (importing its libraries, then listening)
                if not self._engine_alive():
                    return None
                if time.monotonic() > deadline:
                    raise OperatorError(f"the local engine did not listen on port "
                                        f"{self._engine_port} within "
                                        f"{self._connect_timeout:.0f} s") from None
                time.sleep(0.05)

    # -- ending ---------------------------------------------------------------------------
    def _forget(self, cid: int) -> bool:
        """Drop a connection; True for the first caller only (who tells the peer)."""
        with self._lock:
            if self._conns.pop(cid, None) is None:
                return False
            self._closed_ids.add(cid)
            return True

    def _fail(self, exc: BaseException) -> None:
        if not self._stopping and self.error is None:
            self.error = exc

    def drain(self, timeout: float) -> None:
        """Once the local engine has ended: wait until every connection's last bytes and its
        close have gone to the peer, so nothing of the link follows this party's next message
        (the engine's exit closed its sockets, so each reader ends at once)."""
        deadline = time.monotonic() + timeout
        for t in list(self._readers):
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop accepting and close every connection (the engine has ended, or the job)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        for t in [self._acceptor, *self._readers]:
            t.join(timeout=2)
