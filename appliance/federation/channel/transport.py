"""gRPC over mutual TLS with pinned certificates: ``ChannelServer`` and ``connect``.

No protobuf: two methods registered through a generic handler with raw-bytes (de)serialisers,
each gRPC message being one frame of ``framing``:

* ``/pec.federation.v1.Channel/Hello`` (unary): identity proof after the TLS handshake;
* ``/pec.federation.v1.Channel/Session`` (bidirectional stream): one session per stream.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc

from . import framing, identity
from .errors import ChannelError, FrameError, PeerLost, SessionClosed, Unauthorized
from .framing import Flag, Frame, Kind
from .identity import CertInfo, PrivateKeyLike
from .session import ChannelOptions, Link, Session

log = logging.getLogger("appliance.federation.channel")

SERVICE = "pec.federation.v1.Channel"
HELLO = f"/{SERVICE}/Hello"
SESSION = f"/{SERVICE}/Session"
PROTOCOL = 1
_RECENT_IDS = 4096  # closed session ids remembered, so a replayed OPEN is refused


def _grpc_options(opts: ChannelOptions) -> list[tuple[str, Any]]:
    # gRPC's own message limit sits above ours, so that a frame just over max_frame reaches
    # the framing check (which names the problem and is logged) instead of a bare gRPC status
    limit = 2 * (opts.max_frame + framing.HEADER_SIZE)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", int(opts.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(opts.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # start each stream with a window of several frames instead of 64 KiB, so a bulk
        # transfer does not wait for BDP probing to open the window
        ("grpc.http2.lookahead_bytes", 4 * (opts.max_frame + framing.HEADER_SIZE)),
    ]


class ChannelServer:
    """The interconnect listener: mTLS, client certificate required, only pinned peers.

    Two locks on the door: the TLS trust roots are exactly the pinned certificates (fetched
    again for every new connection, so add/remove take effect without a restart), and every
    call compares the SHA-256 fingerprint of the client certificate with the pinned set (so a
    peer removed while its HTTP/2 connection stays up is still refused, and its live sessions
    are cut).
    """

    def __init__(
        self,
        listen: str,
        own_key: PrivateKeyLike,
        own_cert: bytes,
        peers: Iterable[bytes] = (),
        *,
        options: ChannelOptions | None = None,
        on_session: Callable[[Session], None] | None = None,
    ) -> None:
        self.listen = listen
        self.options = options or ChannelOptions()
        self._key = identity.load_private_key(own_key)
        self._key_pem = identity.private_key_pem(self._key)
        self.identity = identity.inspect_certificate(own_cert)
        self._on_session = on_session
        self._lock = threading.Lock()
        self._pinned: dict[str, CertInfo] = {}
        self._version = 0
        self._fetched = -1
        for pem in peers:
            self.add_peer(pem)
        self._sessions: dict[bytes, Session] = {}
        self._recent: dict[bytes, None] = {}
        self._accepted: queue.Queue[Session] = queue.Queue()
        self._server: grpc.Server | None = None
        self.port = 0

    # -- pinning ---------------------------------------------------------------------------

    def add_peer(self, cert_pem: bytes) -> CertInfo:
        info = identity.inspect_certificate(cert_pem)
        with self._lock:
            self._pinned[info.fingerprint] = info
            self._version += 1
        log.info("pinned peer %s sha256:%s", info.node_id, info.fingerprint)
        return info

    def remove_peer(self, peer: str | bytes) -> bool:
        """Unpin by fingerprint or certificate; the peer's live sessions fail (Unauthorized)."""
        fp = identity.fingerprint(peer) if isinstance(peer, bytes) else peer
        with self._lock:
            info = self._pinned.pop(fp, None)
            self._version += 1
            victims = [s for s in self._sessions.values() if s.peer_fingerprint == fp]
        for s in victims:
            s._fail(Unauthorized(f"peer {s.peer_id} was unpinned by {self.identity.node_id}"), True)
        if info:
            log.info("unpinned peer %s sha256:%s", info.node_id, fp)
        return info is not None

    def pinned(self) -> list[CertInfo]:
        with self._lock:
            return list(self._pinned.values())

    def _cert_config(self) -> Any:
        with self._lock:
            roots = b"".join(i.pem for i in self._pinned.values())
            self._fetched = self._version
        # with nothing pinned the roots are our own certificate, so that no one else's
        # certificate can complete the handshake (an empty root set is not accepted by gRPC)
        return grpc.ssl_server_certificate_configuration(
            [(self._key_pem, self.identity.pem)], root_certificates=roots or self.identity.pem
        )

    def _fetch_config(self) -> Any:
        # called by gRPC before each new TLS handshake; None means "unchanged"
        with self._lock:
            changed = self._fetched != self._version
        return self._cert_config() if changed else None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> int:
        """Listen; returns the bound port (``HOST:0`` picks a free one)."""
        creds = grpc.dynamic_ssl_server_credentials(
            self._cert_config(), self._fetch_config, require_client_authentication=True
        )
        n = self.options.max_sessions
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=n + 4, thread_name_prefix="pec-channel"),
            options=[
                *_grpc_options(self.options),
                # peers ping us every keepalive_time; don't answer that with GOAWAY
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
            # one worker per stream is held for the stream's life; refuse beyond that
            maximum_concurrent_rpcs=n,
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Hello": grpc.unary_unary_rpc_method_handler(self._hello),
                "Session": grpc.stream_stream_rpc_method_handler(self._session),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_secure_port(self.listen, creds)
        if not self.port:
            raise ChannelError(f"cannot listen on {self.listen}")
        server.start()
        self._server = server
        log.info("channel listening on %s as %s", self.listen, self.identity.node_id)
        return self.port

    def stop(self, grace: float = 1.0) -> None:
        with self._lock:
            live = list(self._sessions.values())
        for s in live:
            if not s.closed:
                s.abort("server stopping")
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
            self._server = None

    def __enter__(self) -> ChannelServer:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def accept(
        self, timeout: float | None = None, *, job_id: str | None = None, topic: str | None = None
    ) -> Session:
        """The next session a peer opened (optionally only one of ``job_id``/``topic``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        skipped: list[Session] = []
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    s = self._accepted.get(timeout=left)
                except queue.Empty:
                    raise TimeoutError("no session opened within the timeout") from None
                if (job_id is None or s.job_id == job_id) and (topic is None or s.topic == topic):
                    return s
                skipped.append(s)
        finally:
            for s in skipped:
                self._accepted.put(s)

    # -- handlers --------------------------------------------------------------------------

    def _peer(self, context: grpc.ServicerContext, method: str) -> CertInfo:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        fp = identity.fingerprint(pems[0]) if pems else None
        with self._lock:
            info = self._pinned.get(fp) if fp else None
        if info is None:
            msg = f"certificate sha256:{fp} is not pinned" if fp else "no client certificate"
            log.warning("refused %s from %s: %s", method, context.peer(), msg)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, msg)
        return info

    def _hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        peer = self._peer(context, "Hello")
        try:
            body = framing.decode(request, 64 * 1024).json()
            nonce = bytes.fromhex(body["nonce"])
            if len(nonce) != 32:
                raise ValueError("nonce must be 32 bytes")
        except (FrameError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("refused Hello from %s: %s", peer.node_id, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed Hello: {e}")
        sig = identity.sign_proof(self._key, nonce, self.identity.fingerprint, peer.fingerprint)
        reply = {
            "proto": PROTOCOL,
            "node_id": self.identity.node_id,
            "fingerprint": self.identity.fingerprint,
            "client_fingerprint": peer.fingerprint,
            "signature": sig.hex(),
            "max_frame": self.options.max_frame,
        }
        return framing.encode(Frame(Kind.HELLO, framing.NO_SESSION, payload=_j(reply)))

    def _session(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        peer = self._peer(context, "Session")
        link = _ServerLink(context)
        threading.Thread(
            target=self._read, args=(requests, link, peer), name="pec-channel-rx", daemon=True
        ).start()
        return self._write(link, context)

    def _write(self, link: _ServerLink, context: grpc.ServicerContext) -> Iterator[bytes]:
        deadline = time.monotonic() + self.options.open_timeout
        while not link.ready.wait(0.1):
            if link.dead or time.monotonic() > deadline:
                link.kill()
                context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
                context.set_details("no OPEN frame within open_timeout")
                return
        if link.refusal is not None:
            exc = link.refusal
            yield framing.encode(
                Frame(Kind.ERROR, framing.NO_SESSION, payload=_j(_error_body(exc)))
            )
            context.set_code(_status_of(exc))
            context.set_details(str(exc))
            return
        session = link.session
        assert session is not None and link.accept_frame is not None
        yield link.accept_frame
        yield from session._outgoing(link)
        err = session._error
        if session._state == "failed" and err is not None:
            context.set_code(_status_of(err))
            context.set_details(str(err))

    def _read(self, requests: Iterator[bytes], link: _ServerLink, peer: CertInfo) -> None:
        session: Session | None = None
        try:
            it = iter(requests)
            try:
                first = next(it)
                frame = framing.decode(first, self.options.max_frame)
                if frame.kind != Kind.OPEN:
                    raise FrameError(f"first frame of a stream must be OPEN, not {frame.kind.name}")
                session = self._open(frame, peer, link)
            except (FrameError, Unauthorized, PeerLost) as e:
                log.warning("refused a stream from %s: %s", peer.node_id, e)
                link.refusal = e
                link.ready.set()
                return
            link.ready.set()
            for data in it:
                try:
                    session._incoming(link, data)
                except FrameError as e:
                    log.warning("refused a frame from %s on %r: %s", peer.node_id, session, e)
                    session._fail(e, tell_peer=True)
                    return
            session._link_lost(link, PeerLost(f"peer {peer.node_id} lost: stream ended"))
        except StopIteration:
            link.ready.set()
        except grpc.RpcError as e:
            if session is not None:
                why = _details(e) or "stream broken"
                session._link_lost(link, PeerLost(f"peer {peer.node_id} lost: {why}"))
            link.ready.set()
        except Exception as e:  # a stream must never take the server down with it
            log.exception("stream from %s", peer.node_id)
            if session is not None:
                session._link_lost(link, PeerLost(f"peer {peer.node_id} lost: {e}"))
            link.kill()
            link.ready.set()

    def _open(self, frame: Frame, peer: CertInfo, link: _ServerLink) -> Session:
        body = frame.json()
        if not isinstance(body, dict):
            raise FrameError("OPEN body must be a JSON object")
        job_id, topic = body.get("job_id"), body.get("topic")
        if not (isinstance(job_id, str) and job_id and isinstance(topic, str) and topic):
            raise FrameError("OPEN needs non-empty string job_id and topic")
        peer_max = body.get("max_frame")
        if not isinstance(peer_max, int) or peer_max < 1024:
            raise FrameError("OPEN needs an integer max_frame of at least 1024")
        sid = frame.session
        resumed = bool(frame.flags & Flag.RESUME)
        with self._lock:
            existing = self._sessions.get(sid)
            if resumed:
                if existing is None or existing.peer_fingerprint != peer.fingerprint:
                    raise PeerLost(f"cannot resume session {sid.hex()}: unknown or ended")
                if (existing.job_id, existing.topic) != (job_id, topic):
                    raise FrameError("RESUME names another job or topic than the session's")
                session = existing
            else:
                if sid == framing.NO_SESSION or existing is not None or sid in self._recent:
                    raise FrameError(f"replayed OPEN: session id {sid.hex()} was already used")
                session = Session(
                    session_id=sid,
                    job_id=job_id,
                    topic=topic,
                    peer_id=peer.node_id,
                    peer_fingerprint=peer.fingerprint,
                    role="server",
                    resumable=bool(body.get("resumable")),
                    options=self.options,
                    on_end=self._ended,
                )
                self._sessions[sid] = session
        rx_last = session._attach(link, frame.ack, peer_max)
        link.session = session
        reply = {"proto": PROTOCOL, "resumed": resumed, "max_frame": self.options.max_frame}
        link.accept_frame = framing.encode(Frame(Kind.ACCEPT, sid, 0, rx_last, 0, _j(reply)))
        if resumed:
            log.info("resumed %r from seq %d", session, frame.ack)
        else:
            log.info("opened %r", session)
            self._accepted.put(session)
            if self._on_session is not None:
                threading.Thread(
                    target=self._on_session,
                    args=(session,),
                    name="pec-channel-session",
                    daemon=True,
                ).start()
        return session

    def _ended(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
            self._recent[session.id] = None
            while len(self._recent) > _RECENT_IDS:
                self._recent.pop(next(iter(self._recent)))


class _ServerLink(Link):
    def __init__(self, context: grpc.ServicerContext) -> None:
        super().__init__()
        self.context = context
        self.ready = threading.Event()
        self.refusal: ChannelError | None = None
        self.session: Session | None = None
        self.accept_frame: bytes | None = None

    def _kill(self) -> None:
        # the writer notices ``dead`` within a tick and returns, which ends the RPC
        self.ready.set()
        if self.session is not None:
            with self.session._cond:
                self.session._cond.notify_all()


class _ClientLink(Link):
    def __init__(self) -> None:
        super().__init__()
        self.call: Any = None
        self.attached = threading.Event()

    def _kill(self) -> None:
        self.attached.set()
        if self.call is not None:
            self.call.cancel()


# -- client --------------------------------------------------------------------------------


class PeerChannel:
    """A client connection to one pinned peer; opens sessions, resumes them on reconnect."""

    def __init__(
        self,
        endpoint: str,
        own_key: PrivateKeyLike,
        own_cert: bytes,
        peer_cert: bytes,
        options: ChannelOptions | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.options = options or ChannelOptions()
        self.peer = identity.inspect_certificate(peer_cert)
        self.identity = identity.inspect_certificate(own_cert)
        self._peer_max_frame = self.options.max_frame
        key_pem = identity.private_key_pem(own_key)
        # the pinned certificate is the only root, and the name checked is the SAN that
        # certificate carries: no public CA, no DNS involved in who the peer is
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.peer.pem, private_key=key_pem, certificate_chain=own_cert
        )
        self._channel = grpc.secure_channel(
            endpoint,
            creds,
            options=[
                *_grpc_options(self.options),
                ("grpc.ssl_target_name_override", self.peer.san),
                ("grpc.default_authority", self.peer.san),
                # our own connection, not one shared with another PeerChannel to the same peer
                ("grpc.use_local_subchannel_pool", 1),
                # reconnect within the resume window, not after gRPC's default 1..120 s backoff
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._hello_rpc = self._channel.unary_unary(HELLO)
        self._session_rpc = self._channel.stream_stream(SESSION)
        self._sessions: set[Session] = set()
        self._lock = threading.Lock()
        self._closed = False

    def verify(self, timeout: float | None = None) -> None:
        """Check the server holds the pinned key now (signed fresh nonce, both fingerprints)."""
        nonce = os.urandom(32)
        req = framing.encode(
            Frame(Kind.HELLO, framing.NO_SESSION, payload=_j({"nonce": nonce.hex()}))
        )
        try:
            raw = self._hello_rpc(req, timeout=timeout or self.options.open_timeout)
        except grpc.RpcError as e:
            exc = self._map_rpc_error(e, "Hello")
            if isinstance(exc, PeerLost) and self._tcp_reachable():
                # TLS 1.3: a server refuses a client certificate after the client has finished
                # its half of the handshake, so the client only sees the socket close. The
                # listener being up says that the refusal was the handshake's.
                exc = Unauthorized(
                    f"{self.peer.node_id} at {self.endpoint} closed the connection during the "
                    f"TLS handshake: it does not pin our certificate "
                    f"sha256:{self.identity.fingerprint} ({_details(e)})"
                )
            raise exc from None
        body = framing.decode(raw, 64 * 1024).json()
        try:
            fp, sig = body["fingerprint"], bytes.fromhex(body["signature"])
            node_id, client_fp = body["node_id"], body["client_fingerprint"]
            max_frame = int(body["max_frame"])
        except (KeyError, TypeError, ValueError) as e:
            raise FrameError(f"malformed Hello reply from {self.endpoint}: {e}") from None
        if fp != self.peer.fingerprint or node_id != self.peer.node_id:
            raise Unauthorized(
                f"{self.endpoint} presented sha256:{fp} ({node_id}); pinned is "
                f"sha256:{self.peer.fingerprint} ({self.peer.node_id})"
            )
        if client_fp != self.identity.fingerprint:
            raise Unauthorized(f"{self.endpoint} saw another client certificate than ours")
        identity.verify_proof(self.peer.pem, nonce, fp, client_fp, sig)
        self._peer_max_frame = max_frame

    def _tcp_reachable(self) -> bool:
        host, _, port = self.endpoint.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
                return True
        except (OSError, ValueError):
            return False

    def open_session(
        self,
        job_id: str,
        topic: str,
        *,
        resumable: bool = False,
        timeout: float | None = None,
    ) -> Session:
        """Open a session (one gRPC stream). ``resumable``: survive a dropped connection by
        reconnecting and resending un-acked frames, for up to ``resume_timeout``."""
        if self._closed:
            raise SessionClosed("this PeerChannel is closed")
        session = Session(
            session_id=os.urandom(framing.SESSION_ID_SIZE),
            job_id=job_id,
            topic=topic,
            peer_id=self.peer.node_id,
            peer_fingerprint=self.peer.fingerprint,
            role="client",
            resumable=resumable,
            options=self.options,
            reconnect=self._resume,
            on_end=self._ended,
        )
        with self._lock:
            self._sessions.add(session)
        try:
            self._attach(session, resume=False, timeout=timeout)
        except ChannelError as e:
            session._fail(type(e)(str(e)), False)
            raise
        except BaseException:
            session._fail(ChannelError("open interrupted"), False)
            raise
        return session

    def close(self) -> None:
        self._closed = True
        with self._lock:
            live = list(self._sessions)
        for s in live:
            s.close(timeout=1.0)
        self._channel.close()

    def __enter__(self) -> PeerChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ended(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _attach(self, session: Session, *, resume: bool, timeout: float | None) -> None:
        link = _ClientLink()
        body = {
            "job_id": session.job_id,
            "topic": session.topic,
            "resumable": session.resumable,
            "max_frame": self.options.max_frame,
        }
        flags = Flag.RESUME if resume else 0
        open_frame = framing.encode(
            Frame(Kind.OPEN, session.id, 0, session._rx_last, flags, _j(body))
        )
        limit = timeout or self.options.open_timeout

        def requests() -> Iterator[bytes]:
            yield open_frame
            # frames of the session only once the server has accepted (and said where to
            # resume from); bounded by the open timer below, which kills the link
            link.attached.wait()
            if not link.dead:
                yield from session._outgoing(link)

        call = self._session_rpc(requests())
        link.call = call
        timer = threading.Timer(limit, lambda: link.attached.is_set() or link.kill())
        timer.daemon = True
        timer.start()
        try:
            first = next(call)
            frame = framing.decode(first, self.options.max_frame)
            if frame.kind == Kind.ERROR:
                body = frame.json()
                raise _exc_from_body(body, self.peer.node_id)
            if frame.kind != Kind.ACCEPT or frame.session != session.id:
                raise FrameError(f"expected ACCEPT, got {frame.kind.name}")
            reply = frame.json()
            session._attach(link, frame.ack, int(reply.get("max_frame", 0)) or None)
        except grpc.RpcError as e:
            link.kill()
            if link.dead and e.code() == grpc.StatusCode.CANCELLED and not resume:
                raise PeerLost(f"no ACCEPT from {self.endpoint} within {limit:g} s") from None
            raise self._map_rpc_error(e, "Session") from None
        except StopIteration:
            link.kill()
            raise PeerLost(f"{self.endpoint} ended the stream before ACCEPT") from None
        except BaseException:
            link.kill()
            raise
        finally:
            timer.cancel()
        link.attached.set()
        threading.Thread(
            target=self._read, args=(session, link, call), name="pec-channel-rx", daemon=True
        ).start()

    def _read(self, session: Session, link: _ClientLink, call: Any) -> None:
        try:
            for data in call:
                try:
                    session._incoming(link, data)
                except FrameError as e:
                    log.warning("refused a frame from %s on %r: %s", self.peer.node_id, session, e)
                    session._fail(e, tell_peer=True)
                    return
            exc: ChannelError = PeerLost(f"peer {self.peer.node_id} lost: it ended the stream")
        except grpc.RpcError as e:
            exc = self._map_rpc_error(e, "Session")
        except Exception as e:
            log.exception("stream to %s", self.peer.node_id)
            exc = PeerLost(f"peer {self.peer.node_id} lost: {e}")
        session._link_lost(link, exc)

    def _resume(self, session: Session) -> None:
        """Reconnect thread of a resumable session: retry until resumed or resume_timeout."""
        deadline = time.monotonic() + self.options.resume_timeout
        delay = 0.1
        attempts = 0
        while time.monotonic() < deadline and session._state == "open" and not self._closed:
            attempts += 1
            try:
                self.verify(timeout=min(2.0, self.options.open_timeout))
                self._attach(session, resume=True, timeout=self.options.open_timeout)
                log.info("resumed %r after %d attempt(s)", session, attempts)
                return
            except (Unauthorized, FrameError) as e:
                session._fail(e, tell_peer=False)
                return
            except PeerLost as e:
                if "cannot resume" in str(e):
                    session._fail(e, tell_peer=False)
                    return
                log.info("resume of %r: attempt %d failed: %s", session, attempts, e)
            except ChannelError as e:
                log.info("resume of %r: attempt %d failed: %s", session, attempts, e)
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        # the watchdog fails the session when its resume window closes

    def _map_rpc_error(self, e: grpc.RpcError, what: str) -> ChannelError:
        code = e.code() if hasattr(e, "code") else None
        details = _details(e)
        peer = f"{self.peer.node_id} at {self.endpoint}"
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return Unauthorized(f"{peer} refused {what}: {details}")
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return FrameError(f"{peer} refused {what}: {details}")
        low = details.lower()
        if code == grpc.StatusCode.UNAVAILABLE and any(
            k in low for k in ("handshake", "certificate", "ssl", "tls", "alert")
        ):
            return Unauthorized(
                f"TLS handshake with {peer} failed: its certificate is not the pinned "
                f"sha256:{self.peer.fingerprint}, or it does not pin ours ({details})"
            )
        return PeerLost(f"peer {peer} lost ({code.name if code else 'error'}): {details}")


def connect(
    endpoint: str,
    own_key: PrivateKeyLike,
    own_cert: bytes,
    peer_cert: bytes,
    *,
    options: ChannelOptions | None = None,
    timeout: float | None = None,
) -> PeerChannel:
    """Connect to a pinned peer at ``HOST:PORT`` and check its identity before returning."""
    channel = PeerChannel(endpoint, own_key, own_cert, peer_cert, options)
    try:
        channel.verify(timeout)
    except BaseException:
        channel.close()
        raise
    return channel


# -- helpers -------------------------------------------------------------------------------


def _j(obj: Any) -> bytes:
    return framing.encode_json(obj)


def _details(e: grpc.RpcError) -> str:
    d = e.details() if hasattr(e, "details") else None
    return str(d or e)


def _error_body(exc: ChannelError) -> dict[str, str]:
    from .session import _code_of

    return {"code": _code_of(exc), "msg": str(exc)}


def _exc_from_body(body: Any, peer: str) -> ChannelError:
    from .session import _ERROR_CODES

    code = body.get("code") if isinstance(body, dict) else None
    msg = body.get("msg") if isinstance(body, dict) else body
    cls = _ERROR_CODES.get(str(code), ChannelError)
    return cls(f"peer {peer} refused the session: {msg}")


def _status_of(exc: ChannelError) -> grpc.StatusCode:
    if isinstance(exc, Unauthorized):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, FrameError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.ABORTED
