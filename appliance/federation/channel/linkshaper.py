"""A userspace link emulator: a loopback TCP relay that adds one-way delay and caps the rate.

The channel benchmark's WAN figure wants ``tc netem delay 10ms rate 100mbit``; where the kernel
has no ``sch_netem`` this relay stands in for it. It accepts on a loopback port and forwards
each connection to a loopback target, and per direction:

- a *reader* thread takes bytes from the source at most ``rate_bps`` (token bucket, a burst of
  one read) and stamps each read with the time its last byte "left the sender";
- a *writer* thread hands each read to the destination ``delay_s`` after that stamp, in order.

The queue between them is bounded (``queue_bytes`` per direction): when it is full the reader
stops reading, so the source's TCP window closes and the sender blocks, as behind a real link.
Only loopback addresses are accepted on either side; connections are bounded in number, every
thread is joined and every socket closed by ``close()``.

It delays bytes, not packets: no kernel queueing discipline, no loss or reordering, and TCP's
own dynamics (slow start, ack clocking) run on loopback's real RTT, not on the emulated one.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import socket
import threading
import time
from types import TracebackType

__all__ = ["LinkShaper"]

_READ = 16 * 1024  # one read = the token bucket's burst; 1.3 ms at 100 Mbit/s


def _check_loopback(host: str) -> None:
    # The relay is a measuring tool, never a forwarder: refuse anything that leaves the host.
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"link shaper only relays between loopback addresses, not {host!r}")


class _Direction:
    """One direction of one connection: reader -> bounded delay queue -> writer."""

    def __init__(self, shaper: LinkShaper, src: socket.socket, dst: socket.socket) -> None:
        self.shaper, self.src, self.dst = shaper, src, dst
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.done = False  # writer finished (EOF delivered, or the connection failed)

    def read_loop(self) -> None:
        s = self.shaper
        tokens, last = float(_READ), time.monotonic()
        try:
            while not s._stop.is_set():
                with self.cond:
                    # Backpressure: do not read while the queue is full, so TCP pushes back.
                    while self.queued >= s.queue_bytes and not s._stop.is_set() and not self.done:
                        self.cond.wait(0.2)
                    if s._stop.is_set() or self.done:
                        return
                    room = min(_READ, s.queue_bytes - self.queued)
                data = self.src.recv(room)
                if data:
                    # Token bucket: wait until the bucket holds this read, then spend it; the
                    # read's bytes have "left the sender" once paid for.
                    now = time.monotonic()
                    tokens = min(float(_READ), tokens + (now - last) * s.rate_bps / 8)
                    last = now
                    if tokens < len(data):
                        wait = (len(data) - tokens) * 8 / s.rate_bps
                        if s._stop.wait(wait):
                            return
                        last = time.monotonic()
                        tokens = float(len(data))
                    tokens -= len(data)
                sent_at = time.monotonic()
                with self.cond:
                    self.queue.append((sent_at + s.delay_s, data))  # b"" marks the EOF
                    self.queued += len(data)
                    s.peak_queued = max(s.peak_queued, self.queued)
                    self.cond.notify_all()
                if not data:
                    return
        except OSError:
            self.fail()

    def write_loop(self) -> None:
        s = self.shaper
        try:
            while True:
                with self.cond:
                    while not self.queue and not s._stop.is_set():
                        self.cond.wait(0.2)
                    if s._stop.is_set():
                        return
                    due, data = self.queue[0]
                # Hold the bytes for the one-way delay; later reads are due later, so order holds.
                delay = due - time.monotonic()
                if delay > 0 and s._stop.wait(delay):
                    return
                if data:
                    self.dst.sendall(data)  # blocks while the receiver's window is closed
                with self.cond:
                    self.queue.popleft()
                    self.queued -= len(data)
                    self.cond.notify_all()
                if not data:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)  # pass the half-close on
                    return
        except OSError:
            self.fail()
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def fail(self) -> None:
        # A reset on either side ends the whole connection, as it would end a real one.
        for sock in (self.src, self.dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self.cond:
            self.done = True
            self.cond.notify_all()


class LinkShaper:
    """Relay ``listen_host:port`` -> ``target`` with ``delay_s`` one way and ``rate_bps`` per
    direction. Use as a context manager, or ``start()`` (returns the port) and ``close()``."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        delay_s: float = 0.010,
        rate_bps: float = 100e6,
        listen_host: str = "127.0.0.1",
        queue_bytes: int | None = None,
        max_connections: int = 16,
        connect_timeout: float = 5.0,
    ) -> None:
        _check_loopback(target[0])
        _check_loopback(listen_host)
        if delay_s < 0 or rate_bps <= 0 or max_connections < 1:
            raise ValueError("delay_s >= 0, rate_bps > 0 and max_connections >= 1 required")
        self.target = target
        self.delay_s = delay_s
        self.rate_bps = rate_bps
        self.listen_host = listen_host
        # Default bound: the bandwidth-delay product (what is "on the wire") plus slack for one
        # read, with a floor so a tiny product does not starve the reader.
        bdp = int(rate_bps / 8 * delay_s)
        self.queue_bytes = queue_bytes if queue_bytes is not None else max(4 * _READ, 2 * bdp)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.peak_queued = 0  # most bytes held in one direction's queue, for tests and reports
        self.connections = 0  # connections relayed so far
        self.refused = 0  # connections refused because max_connections were open
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._open = 0

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return int(self._listener.getsockname()[1])

    def start(self) -> int:
        fam = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        lst = socket.socket(fam, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((self.listen_host, 0))
        lst.listen(self.max_connections)
        lst.settimeout(0.2)  # so the accept loop sees close() within 0.2 s
        self._listener = lst
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="linkshaper-accept", daemon=True
        )
        self._accept_thread.start()
        return self.port

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                full = self._open >= self.max_connections
                if not full:
                    self._open += 1
            if full:
                self.refused += 1
                client.close()
                continue
            threading.Thread(
                target=self._relay, args=(client,), name="linkshaper-conn", daemon=True
            ).start()

    def _relay(self, client: socket.socket) -> None:
        server: socket.socket | None = None
        try:
            try:
                server = socket.create_connection(self.target, timeout=self.connect_timeout)
            except OSError:
                return
            client.settimeout(None)
            server.settimeout(None)
            for sock in (client, server):
                # Small writes must not wait for Nagle on top of the emulated delay.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stop.is_set():
                    return
                self._socks += [client, server]
                self.connections += 1
            dirs = (_Direction(self, client, server), _Direction(self, server, client))
            threads = [
                threading.Thread(target=fn, name=f"linkshaper-{kind}", daemon=True)
                for d in dirs
                for kind, fn in (("read", d.read_loop), ("write", d.write_loop))
            ]
            with self._lock:
                self._threads += threads
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for sock in (client, server):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            with self._lock:
                self._open -= 1
                self._socks = [x for x in self._socks if x not in (client, server)]
                self._threads = [t for t in self._threads if t.is_alive()]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut every connection, join every thread (bounded by ``timeout``)."""
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:  # wakes readers blocked in recv and writers blocked in sendall
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        # Relay threads close their own sockets on the way out; wait for them too.
        while time.monotonic() < deadline:
            with self._lock:
                if self._open == 0:
                    break
            time.sleep(0.01)

    def __enter__(self) -> LinkShaper:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
