"""The userspace link emulator: bytes intact, RTT at least twice the delay, rate a ceiling."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.federation.channel.linkshaper import LinkShaper

pytestmark = pytest.mark.timeout(30)


def _read_all(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            break
        buf += part
    return bytes(buf)


@contextlib.contextmanager
def _server(handler: str) -> Iterator[int]:
    """A one-connection loopback server: 'echo' echoes until EOF; 'sink' reads until EOF and
    answers with the SHA-256 of what it read (so a one-way transfer ends with a short reply)."""
    lst = socket.create_server(("127.0.0.1", 0))
    lst.settimeout(10)

    def run() -> None:
        with contextlib.suppress(OSError):
            conn, _ = lst.accept()
            with conn:
                digest = hashlib.sha256()
                while data := conn.recv(65536):
                    if handler == "echo":
                        conn.sendall(data)
                    else:
                        digest.update(data)
                if handler == "sink":
                    conn.sendall(digest.digest())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield lst.getsockname()[1]
    finally:
        lst.close()
        t.join(5)


def test_echo_intact_and_rtt_at_least_twice_the_delay() -> None:
    threads_before = threading.active_count()
    with (
        _server("echo") as port,
        LinkShaper(("127.0.0.1", port), delay_s=0.020, rate_bps=100e6) as shaper,
        socket.create_connection(("127.0.0.1", shaper.port), timeout=5) as c,
    ):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for i in range(5):
            msg = f"ping {i}".encode()
            t0 = time.perf_counter()
            c.sendall(msg)
            assert _read_all(c, len(msg)) == msg
            rtts.append(time.perf_counter() - t0)
        # 20 ms each way: a round trip is at least 40 ms, and not wildly more on loopback.
        assert min(rtts) >= 0.040, rtts
        assert sorted(rtts)[len(rtts) // 2] < 0.200, rtts
        blob = os.urandom(256 * 1024)  # several reads and queue refills, order must hold
        c.sendall(blob)
        assert _read_all(c, len(blob)) == blob
    # close() joined every relay thread (the echo server's thread is joined by _server).
    assert threading.active_count() <= threads_before


def test_rate_is_a_ceiling_and_queue_is_bounded() -> None:
    size, rate = 1_000_000, 4e6  # 1 MB at 4 Mbit/s: 2 s on the emulated link
    blob = os.urandom(size)
    with (
        _server("sink") as port,
        LinkShaper(("127.0.0.1", port), delay_s=0.005, rate_bps=rate) as shaper,
        socket.create_connection(("127.0.0.1", shaper.port), timeout=10) as c,
    ):
        t0 = time.perf_counter()
        c.sendall(blob)
        c.shutdown(socket.SHUT_WR)  # the half-close must travel through the relay
        got = _read_all(c, 32)
        elapsed = time.perf_counter() - t0
        assert got == hashlib.sha256(blob).digest()
        # Lower bound only (shared machines are slow, never fast): one burst may go free.
        assert elapsed >= 0.9 * size * 8 / rate, elapsed
        assert 0 < shaper.peak_queued <= shaper.queue_bytes
        assert shaper.connections == 1


def test_only_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LinkShaper(("192.0.2.1", 7443))
    with pytest.raises(ValueError, match="loopback"):
        LinkShaper(("127.0.0.1", 7443), listen_host="0.0.0.0")
