"""The federation channel: pinned mTLS, framing checks, liveness, resume, memory pair."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from appliance.federation.channel import (
    ChannelError,
    ChannelOptions,
    ChannelServer,
    FrameError,
    PeerLost,
    SessionClosed,
    Unauthorized,
    connect,
    framing,
    generate_key,
    inspect_certificate,
    make_node_certificate,
    memory_pair,
)
from appliance.federation.channel.framing import Frame, Kind
from appliance.federation.channel.session import Session

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
OPTS = ChannelOptions(
    max_frame=1 * MiB,
    chunk_size=256 * 1024,
    window_bytes=4 * MiB,
    recv_buffer_bytes=4 * MiB,
    heartbeat_interval=0.3,
    peer_timeout=1.5,
    keepalive_time=1.0,
    keepalive_timeout=1.0,
    resume_timeout=8.0,
    open_timeout=5.0,
    close_timeout=2.0,
)


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.key = generate_key()
        self.cert = make_node_certificate(self.key, name)
        self.key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@pytest.fixture(scope="module")
def nodes() -> dict[str, Node]:
    return {n: Node(n) for n in ("node-a", "node-b", "node-x")}


@pytest.fixture
def server(nodes: dict[str, Node]) -> Iterator[ChannelServer]:
    srv = ChannelServer(
        "127.0.0.1:0", nodes["node-b"].key, nodes["node-b"].cert, [nodes["node-a"].cert],
        options=OPTS,
    )  # fmt: skip
    srv.start()
    yield srv
    srv.stop(0.2)


def _connect(srv_or_port: ChannelServer | int, me: Node, peer: Node, **kw: object):
    port = srv_or_port if isinstance(srv_or_port, int) else srv_or_port.port
    return connect(f"127.0.0.1:{port}", me.key, me.cert, peer.cert, options=OPTS, timeout=5, **kw)


@contextlib.contextmanager
def grpc_pair(server: ChannelServer, nodes: dict[str, Node], **kw: object):
    ch = _connect(server, nodes["node-a"], nodes["node-b"])
    try:
        a = ch.open_session("job-1", "topic-1", **kw)
        b = server.accept(timeout=5, job_id="job-1")
        yield a, b
    finally:
        ch.close()


@contextlib.contextmanager
def any_pair(kind: str, server: ChannelServer, nodes: dict[str, Node]):
    if kind == "memory":
        a, b = memory_pair("job-1", "topic-1", OPTS)
        try:
            yield a, b
        finally:
            a.abort("test over")
    else:
        with grpc_pair(server, nodes) as pair:
            yield pair


def _still_serves(server: ChannelServer, nodes: dict[str, Node]) -> None:
    with grpc_pair(server, nodes) as (a, b):
        a.send({"still": "serving"})
        assert b.recv(timeout=5) == {"still": "serving"}


# -- identity ------------------------------------------------------------------------------


def test_node_certificate_shape(nodes: dict[str, Node]) -> None:
    info = inspect_certificate(nodes["node-a"].cert)
    assert info.node_id == "node-a" and info.san == "node-a.pec"
    assert len(info.fingerprint) == 64
    with pytest.raises(ValueError, match="DNS label"):
        make_node_certificate(nodes["node-a"].key, "Bad_Name")
    # PEM bytes are accepted as the key as well
    assert inspect_certificate(make_node_certificate(nodes["node-a"].key_pem, "node-a")).node_id


# -- authentication --------------------------------------------------------------------------


def test_mutual_tls_with_pinned_certificates(server, nodes) -> None:
    with grpc_pair(server, nodes) as (a, b):
        assert a.peer_id == "node-b" and b.peer_id == "node-a"
        assert b.peer_fingerprint == inspect_certificate(nodes["node-a"].cert).fingerprint
        a.send({"hello": 1})
        assert b.recv(timeout=5) == {"hello": 1}
        b.send("back")
        assert a.recv(timeout=5) == "back"


def test_unknown_client_refused_and_server_keeps_serving(server, nodes, caplog) -> None:
    with pytest.raises(Unauthorized, match="does not pin our certificate"):
        _connect(server, nodes["node-x"], nodes["node-b"])
    _still_serves(server, nodes)


def test_unpinned_peer_is_cut_and_refused_by_fingerprint(server, nodes, caplog) -> None:
    # the TLS connection stays up after remove_peer: the per-call fingerprint check refuses
    caplog.set_level(logging.WARNING, "appliance.federation.channel")
    ch = _connect(server, nodes["node-a"], nodes["node-b"])
    try:
        a = ch.open_session("job-1", "t")
        server.accept(timeout=5)
        assert server.remove_peer(nodes["node-a"].cert)
        with pytest.raises(Unauthorized, match="unpinned"):
            a.recv(timeout=5)
        with pytest.raises(Unauthorized, match="not pinned"):
            ch.open_session("job-2", "t")
        assert "is not pinned" in caplog.text
    finally:
        ch.close()
    server.add_peer(nodes["node-a"].cert)
    _still_serves(server, nodes)


def test_client_pinning_the_wrong_server_certificate_fails(server, nodes) -> None:
    with pytest.raises(Unauthorized, match="TLS handshake"):
        _connect(server, nodes["node-a"], nodes["node-x"])  # expects node-x at node-b's port
    _still_serves(server, nodes)


# -- shared body: memory pair and the real channel behave alike ----------------------------

KINDS = ["memory", "grpc"]


@pytest.mark.parametrize("kind", KINDS)
def test_session_contract(kind, server, nodes) -> None:
    with any_pair(kind, server, nodes) as (a, b):
        a.send({"op": "start", "n": [1, 2.5, None, "x"]})
        payload = os.urandom(3 * OPTS.chunk_size + 17)
        assert a.send_bytes(payload) == len(payload)
        a.send_bytes(iter([b"ab", b"", b"cd" * 300_000]))
        a.send_bytes(b"")
        assert b.recv(timeout=5) == {"op": "start", "n": [1, 2.5, None, "x"]}
        assert b.recv(timeout=5) == payload
        assert b"".join(b.recv_chunks(timeout=5)) == b"ab" + b"cd" * 300_000
        assert b.recv(timeout=5) == b""
        with pytest.raises(TimeoutError):
            b.recv(timeout=0.2)
        b.send({"op": "reply"})
        assert a.recv(timeout=5) == {"op": "reply"}
        with pytest.raises(FrameError, match="exceeds the frame limit"):
            a.send("x" * (OPTS.max_frame + 1))
        a.close()
        with pytest.raises(SessionClosed):
            b.recv(timeout=5)
        with pytest.raises(SessionClosed):
            b.send({"too": "late"})
        with pytest.raises(SessionClosed):
            a.send({"too": "late"})


def _refused(kind, server, nodes, raw: bytes, match: str, caplog) -> None:
    caplog.set_level(logging.WARNING, "appliance.federation.channel")
    with any_pair(kind, server, nodes) as (a, b):
        a.send({"before": True})
        assert b.recv(timeout=5) == {"before": True}
        a._inject_raw(raw)
        with pytest.raises(FrameError, match=match):
            b.recv(timeout=5)
        with pytest.raises(FrameError, match=match):  # the sender is told why
            a.recv(timeout=5)
    assert match.split()[0] in caplog.text
    if kind == "grpc":
        _still_serves(server, nodes)


@pytest.mark.parametrize("kind", KINDS)
def test_oversize_frame_refused(kind, server, nodes, caplog) -> None:
    big = framing.encode_parts(Kind.BYTES, bytes(16), 2, 0, 0, bytes(OPTS.max_frame + 1))
    _refused(kind, server, nodes, big, "oversize frame", caplog)


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_frame_refused(kind, server, nodes, caplog) -> None:
    _refused(kind, server, nodes, b"PF\x01garbage", "malformed frame", caplog)


@pytest.mark.parametrize("kind", KINDS)
def test_replayed_sequence_refused(kind, server, nodes, caplog) -> None:
    caplog.set_level(logging.WARNING, "appliance.federation.channel")
    with any_pair(kind, server, nodes) as (a, b):
        # a frame that reuses seq 1 of the session, already delivered as "before"
        replay = framing.encode(Frame(Kind.JSON, a.id, 1, 0, 0, b'{"before":true}'))
        a.send({"before": True})
        assert b.recv(timeout=5) == {"before": True}
        a._inject_raw(replay)
        with pytest.raises(FrameError, match="replayed frame: seq 1"):
            b.recv(timeout=5)
        with pytest.raises(FrameError, match="replayed"):
            a.recv(timeout=5)
    assert "replayed frame" in caplog.text
    with any_pair(kind, server, nodes) as (a, b):
        skip = framing.encode(Frame(Kind.JSON, a.id, 5, 0, 0, b"{}"))
        a._inject_raw(skip)
        with pytest.raises(FrameError, match="out-of-order frame: seq 5, expected 1"):
            b.recv(timeout=5)


def test_replayed_open_refused(server, nodes) -> None:
    ch = _connect(server, nodes["node-a"], nodes["node-b"])
    try:
        s = ch.open_session("job-1", "t")
        server.accept(timeout=5)
        s.close()
        # a second OPEN with the id of a used session
        dup = Session(
            session_id=s.id, job_id="job-1", topic="t", peer_id="node-b", peer_fingerprint="",
            role="client", resumable=False, options=OPTS,
        )  # fmt: skip
        with pytest.raises(FrameError, match="replayed OPEN"):
            ch._attach(dup, resume=False, timeout=5)
    finally:
        ch.close()


# -- bulk ----------------------------------------------------------------------------------


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_large_transfer_intact_in_bounded_memory(server, nodes) -> None:
    size, chunk = 64 * MiB, 1 * MiB
    sent_hash = hashlib.sha256()

    def produce() -> Iterator[bytes]:
        for i in range(size // chunk):
            c = (i.to_bytes(4, "big") * (chunk // 4))[:chunk]
            sent_hash.update(c)
            yield c

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss())

    with grpc_pair(server, nodes) as (a, b):
        base = _rss()
        threading.Thread(target=sample, daemon=True).start()
        t = threading.Thread(target=a.send_bytes, args=(produce(),), daemon=True)
        t.start()
        got = hashlib.sha256()
        n = 0
        for c in b.recv_chunks(timeout=10):
            got.update(c)
            n += len(c)
        t.join(10)
        stop.set()
    assert n == size and got.hexdigest() == sent_hash.hexdigest()
    # sender window + receive buffer + gRPC's buffers; far below the 64 MiB moved
    assert peak[0] - base < 40 * MiB, f"RSS grew by {(peak[0] - base) / MiB:.0f} MiB"


# -- liveness --------------------------------------------------------------------------------


@pytest.fixture
def server_process(nodes, tmp_path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    for n in ("node-a", "node-b"):
        (tmp_path / f"{n}.key").write_bytes(nodes[n].key_pem)
        (tmp_path / f"{n}.crt").write_bytes(nodes[n].cert)
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance.federation.channel.bench", "serve", "--dir",
         str(tmp_path), "--me", "node-b", "--peer", "node-a", "--lifetime", "50",
         "--peer-timeout", "1.5", "--heartbeat", "0.3"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, GRPC_VERBOSITY="NONE"),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("RESULT "), line
        yield proc, json.loads(line[7:])["port"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_peer_killed_or_frozen_raises_peer_lost_in_bound(server_process, nodes, sig) -> None:
    proc, port = server_process
    ch = _connect(port, nodes["node-a"], nodes["node-b"])
    try:
        s = ch.open_session("job-1", "t")
        s.send({"op": "ping", "i": 1})
        assert s.recv(timeout=5) == {"op": "ping", "i": 1}
        t0 = time.monotonic()
        os.kill(proc.pid, sig)  # SIGKILL: the socket resets; SIGSTOP: silence, heartbeats stop
        with pytest.raises(PeerLost):
            s.recv(timeout=30)
        elapsed = time.monotonic() - t0
        assert elapsed <= OPTS.liveness_bound + 0.5, elapsed
        with pytest.raises(PeerLost):
            s.send({"op": "ping"})
    finally:
        if sig == signal.SIGSTOP:
            proc.kill()
        ch.close()


# -- reconnect and resume ----------------------------------------------------------------------


class DroppingProxy:
    """TCP forwarder whose connections the test can cut at will."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [c, u]
            for x, y in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(x, y), daemon=True).start()

    @staticmethod
    def _pump(x: socket.socket, y: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := x.recv(256 * 1024):
                y.sendall(data)
        for s in (x, y):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                s.close()  # RST, as a broken path would

    def close(self) -> None:
        self.closed = True
        self.lsock.close()
        self.drop()


def test_reconnect_and_resume_deliver_every_frame_exactly_once(server, nodes, caplog) -> None:
    caplog.set_level(logging.INFO, "appliance.federation.channel")
    proxy = DroppingProxy(server.port)
    n_msgs = 400
    try:
        ch = _connect(proxy.port, nodes["node-a"], nodes["node-b"])
        a = ch.open_session("job-1", "t", resumable=True)
        b = server.accept(timeout=5)
        got_b: list[object] = []
        got_a: list[object] = []

        def reader(sess, out, n) -> None:
            with contextlib.suppress(ChannelError):
                for _ in range(n):
                    out.append(sess.recv(timeout=20))

        threads = [
            threading.Thread(target=reader, args=(b, got_b, n_msgs + 1), daemon=True),
            threading.Thread(target=reader, args=(a, got_a, n_msgs), daemon=True),
        ]
        for t in threads:
            t.start()
        blob = os.urandom(600 * 1024)
        for i in range(n_msgs):
            a.send({"i": i})
            b.send({"j": i})
            if i in (100, 250):
                # drop once the stream is flowing again, so that each drop hits live traffic
                # (frames in flight both ways, some acked and some not)
                deadline = time.monotonic() + 10
                while len(got_b) < i - 60 and time.monotonic() < deadline:
                    time.sleep(0.005)
                proxy.drop()
            if i % 20 == 0:
                time.sleep(0.005)
            if i == 200:
                a.send_bytes(blob)
        for t in threads:
            t.join(30)
        want_b = [{"i": i} for i in range(201)] + [blob] + [{"i": i} for i in range(201, n_msgs)]
        assert got_b == want_b
        assert got_a == [{"j": i} for i in range(n_msgs)]
        a.close()
        with pytest.raises(SessionClosed):
            b.recv(timeout=5)
        ch.close()
    finally:
        proxy.close()
    resumes = [r for r in caplog.records if r.getMessage().startswith("resumed <Session")]
    assert len([r for r in resumes if "client" in r.getMessage()]) == 2


def test_non_resumable_session_fails_on_drop(server, nodes) -> None:
    proxy = DroppingProxy(server.port)
    try:
        ch = _connect(proxy.port, nodes["node-a"], nodes["node-b"])
        a = ch.open_session("job-1", "t")
        b = server.accept(timeout=5)
        proxy.drop()
        with pytest.raises(PeerLost):
            a.recv(timeout=10)
        with pytest.raises(PeerLost):
            b.recv(timeout=10)
        ch.close()
    finally:
        proxy.close()
