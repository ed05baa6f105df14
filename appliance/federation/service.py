"""The node's federation service: the interconnect listener, control requests between nodes,
session attestation and the sessions of multi-party jobs.

Control messages between nodes keep the shapes of the BFIA InterOp scheduling API: a request
names a method (`job.create`, `job.start`, `job.stop`, `job.status`, `task.callback`, and our
`attest`) and a body; every reply is `{code, msg, data}` with code 0 for success. Each request
travels on its own short session of the pinned mTLS channel (topic `control`), so a slow job
never holds up a control message.

Every control request a node accepts starts from the channel's answer to "who is this": the
client certificate's fingerprint, pinned at enrolment. A quarantined peer gets only `attest`
answered (so it can prove itself again) and `job.stop`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.federation.channel import (
    ChannelError,
    ChannelOptions,
    ChannelServer,
    PeerChannel,
    RecvTimeout,
    Session,
    connect,
)
from appliance.federation.peers import PeerError, Peers
from appliance.trust import audit
from appliance.trust.bundle import verify_bundle

log = logging.getLogger("pec.federation")

CONTROL = "control"
JOB = "job"
CONTROL_TIMEOUT = 15.0
#: a peer attested longer ago than this is attested again before a session of a service
#: (private query, online prediction) that does not go through a job's own attestation
ATTEST_MAX_AGE = 300.0
METHODS = ("attest", "job.create", "job.start", "job.stop", "job.status", "task.callback")


@dataclass
class Identity:
    """What this node is on the interconnect."""

    node_id: str
    organisation: str
    endpoint: str  # what peers dial, as written in this node's card
    key: Any  # the TLS private key (unsealed from the HSM KEK into memory)
    cert_pem: bytes


Handler = Callable[[dict[str, Any], dict[str, Any]], Any]  # (peer row, body) -> data
TopicHandler = Callable[[Session, dict[str, Any]], None]  # (session, peer row), own thread


class Federation:
    def __init__(self, ident: Identity, peers: Peers, *, listen: str | None,
                 attest: Callable[[bytes], dict[str, Any]],
                 options: ChannelOptions | None = None) -> None:
        self.ident, self.peers, self.listen = ident, peers, listen
        self._attest = attest
        self.options = options or ChannelOptions()
        self.handlers: dict[str, Handler] = {"attest": self._on_attest}
        # services with their own session topic (private query): each session a peer opens
        # on one is handed, after the peer checks, to its handler on a thread of its own
        self.topics: dict[str, TopicHandler] = {}
        self._server: ChannelServer | None = None
        self._channels: dict[str, PeerChannel] = {}
        self._lock = threading.Lock()
        self._attested_at: dict[str, float] = {}
        # job sessions opened by peers, waiting for this node's side of the job to take them
        self._mailbox: dict[tuple[str, str], queue.Queue[Session]] = {}
        # jobs this node's side ended before its sessions were made: a session a peer opens
        # for one later is aborted at once with the reason, so the peer does not wait
        self._ended: dict[str, str] = {}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> int | None:
        if not self.listen:
            return None
        pins = [p["card"]["certificate_pem"].encode() for p in self.peers.list()]
        self._server = ChannelServer(self.listen, self.ident.key, self.ident.cert_pem, pins,
                                     options=self.options, on_session=self._on_session)
        port = self._server.start()
        log.info("interconnect listening on %s (port %d), %d pinned peers", self.listen, port,
                 len(pins))
        return port

    def stop(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def port(self) -> int | None:
        return self._server.port if self._server is not None else None

    def pin(self, cert_pem: str) -> None:
        if self._server is not None:
            self._server.add_peer(cert_pem.encode())

    def unpin(self, peer: dict[str, Any]) -> None:
        with self._lock:
            ch = self._channels.pop(peer["name"], None)
        if ch is not None:
            ch.close()
        if self._server is not None:
            self._server.remove_peer(peer["card"]["certificate_pem"].encode())

    # ---------------------------------------------------------------- outgoing
    def _channel(self, peer: dict[str, Any]) -> PeerChannel:
        with self._lock:
            ch = self._channels.get(peer["name"])
        if ch is not None:
            return ch
        ch = connect(peer["endpoint"], self.ident.key, self.ident.cert_pem,
                     peer["card"]["certificate_pem"].encode(), options=self.options,
                     timeout=self.options.open_timeout)
        with self._lock:
            other = self._channels.setdefault(peer["name"], ch)
        if other is not ch:
            ch.close()
        return other

    def _drop_channel(self, peer: dict[str, Any]) -> None:
        with self._lock:
            ch = self._channels.pop(peer["name"], None)
        if ch is not None:
            ch.close()

    def fresh_peer(self, name: str, max_age: float = ATTEST_MAX_AGE) -> dict[str, Any]:
        """The active peer ``name``, attested within the last ``max_age`` seconds (again now
        if not); PeerError when it is not active or fails attestation (then quarantined)."""
        peer = self.peers.require_active(name)
        with self._lock:
            last = self._attested_at.get(name, -1e9)
        if time.monotonic() - last > max_age:
            verdict = self.attest_peer(name)
            if not verdict["ok"]:
                raise PeerError(f"peer {name} failed attestation and is quarantined: "
                                f"{verdict['reason']}", 403)
            with self._lock:
                self._attested_at[name] = time.monotonic()
        return peer

    def open_session(self, peer: dict[str, Any], topic: str,
                     timeout: float = CONTROL_TIMEOUT) -> Session:
        """A new session to ``peer`` on ``topic``, or PeerError when it cannot be reached."""
        try:
            return self._channel(peer).open_session(uuid.uuid4().hex, topic, timeout=timeout)
        except ChannelError as exc:
            self._drop_channel(peer)  # a fresh connection next time
            raise PeerError(f"peer {peer['name']} ({peer['endpoint']}) unreachable: {exc}",
                            502) from exc

    def request(self, peer: dict[str, Any], method: str, body: dict[str, Any],
                timeout: float = CONTROL_TIMEOUT) -> Any:
        """One control request; the peer's answer's `data`, or PeerError with its `msg`."""
        session = self.open_session(peer, CONTROL, timeout)
        try:
            session.send({"method": method, "body": body})
            reply = session.recv(timeout=timeout)
        except ChannelError as exc:
            raise PeerError(f"peer {peer['name']} did not answer {method}: {exc}", 502) from exc
        finally:
            if not session.closed:
                session.abort("request done")
        if not (isinstance(reply, dict) and isinstance(reply.get("code"), int)
                and isinstance(reply.get("msg"), str)):
            raise PeerError(f"peer {peer['name']} sent a malformed reply to {method}", 502)
        if reply["code"] != 0:
            status = reply["code"] if 400 <= reply["code"] < 600 else 502
            raise PeerError(f"peer {peer['name']} refused {method}: {reply['msg']}", status)
        return reply.get("data")

    def attest_peer(self, name: str) -> dict[str, Any]:
        """Re-attest a peer with a fresh nonce against what was pinned at enrolment. A verdict
        that fails quarantines the peer; the verdict is recorded either way."""
        peer = self.peers.get(name)
        nonce = os.urandom(32)
        try:
            bundle = self.request(peer, "attest", {"nonce": nonce.hex()})
        except PeerError as exc:
            raise PeerError(f"attestation of {name} failed: {exc}", exc.status) from exc
        if not isinstance(bundle, dict) or bundle.get("node_id") != peer["node_id"]:
            verdict = {"ok": False, "failed_check": "node_id",
                       "reason": "node_id: the bundle names another node"}
        else:
            verdict = verify_bundle(bundle, peer["policy"], nonce)
        peer = self.peers.record_attestation(name, verdict)
        audit.record(audit.SYSTEM, "federation.attest", f"peer:{name}",
                     {"node_id": peer["node_id"], "ok": verdict["ok"],
                      "reason": verdict["reason"], "ledger_head": bundle.get("ledger_head")
                      if isinstance(bundle, dict) else None})
        if not verdict["ok"]:
            log.warning("peer %s quarantined: %s", name, verdict["reason"])
        return verdict

    # ---------------------------------------------------------------- job sessions
    def job_sessions(self, job_id: str, others: list[str], timeout: float) -> dict[str, Session]:
        """A session to every other party (by node id) of a job. Of two parties the one with
        the smaller node id opens the session; the other waits for it."""
        sessions: dict[str, Session] = {}
        try:
            for node_id in sorted(others):
                if self.ident.node_id < node_id:
                    peer = self.peers.require_active(self.peers.by_node_id(node_id)["name"])
                    sessions[node_id] = self._channel(peer).open_session(job_id, JOB,
                                                                         timeout=timeout)
                else:
                    sessions[node_id] = self._await_session(job_id, node_id, timeout)
        except BaseException:
            for s in sessions.values():
                s.abort("job setup failed")
            raise
        finally:
            with self._lock:
                for node_id in others:
                    self._mailbox.pop((job_id, node_id), None)
        return sessions

    def _await_session(self, job_id: str, node_id: str, timeout: float) -> Session:
        box = self._box(job_id, node_id)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                ended = self._ended.get(job_id)
            if ended is not None:
                raise PeerError(ended, 409)
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"party {node_id} did not open its session for job {job_id} "
                                f"within {timeout:.0f} s", 504)
            try:
                return box.get(timeout=min(0.5, left))
            except queue.Empty:
                continue

    def end_job(self, job_id: str, reason: str) -> None:
        """This node's side of `job_id` is over: abort the sessions peers opened for it and
        those they will open, each with `reason`."""
        with self._lock:
            self._ended[job_id] = reason
            while len(self._ended) > 1024:  # a bounded memory of recent jobs is enough
                self._ended.pop(next(iter(self._ended)))
            boxes = [q for (j, _), q in self._mailbox.items() if j == job_id]
        for box in boxes:
            while not box.empty():
                box.get_nowait().abort(reason)

    def _box(self, job_id: str, node_id: str) -> queue.Queue[Session]:
        with self._lock:
            return self._mailbox.setdefault((job_id, node_id), queue.Queue())

    # ---------------------------------------------------------------- incoming
    def _on_session(self, session: Session) -> None:
        if session.topic == JOB:
            with self._lock:
                ended = self._ended.get(session.job_id)
            try:
                peer = self.peers.by_node_id(session.peer_id)
            except PeerError:
                peer = None
            if peer is None or peer["state"] != "active":
                ended = f"this node does not run jobs with {session.peer_id} (not active)"
            if ended is not None:
                session.abort(ended)
            else:
                self._box(session.job_id, session.peer_id).put(session)
        elif session.topic == CONTROL:
            threading.Thread(target=self._serve_control, args=(session,), daemon=True,
                             name=f"control-{session.peer_id}").start()
        elif session.topic in self.topics:
            threading.Thread(target=self._serve_topic, args=(session,), daemon=True,
                             name=f"{session.topic}-{session.peer_id}").start()
        else:
            log.warning("peer %s opened a session on unknown topic %r", session.peer_id,
                        session.topic)
            session.abort(f"unknown topic {session.topic!r}")

    def _serve_control(self, session: Session) -> None:
        try:
            msg = session.recv(timeout=CONTROL_TIMEOUT)
        except (ChannelError, RecvTimeout) as exc:
            log.info("control session from %s ended before a request: %s", session.peer_id, exc)
            return
        reply = self.answer(session.peer_id, session.peer_fingerprint, msg)
        try:
            session.send(reply)
            session.close()
        except ChannelError as exc:
            log.info("could not answer %s: %s", session.peer_id, exc)

    def _serve_topic(self, session: Session) -> None:
        try:
            peer = self._checked_peer(session.peer_id, session.peer_fingerprint, session.topic)
        except PeerError as exc:
            log.info("refused a %s session from %s: %s", session.topic, session.peer_id, exc)
            session.abort(str(exc))
            return
        try:
            self.topics[session.topic](session, peer)
        except Exception:  # a bug in one service must not kill the listener
            log.exception("%s session from %s failed", session.topic, session.peer_id)
            session.abort(f"{session.topic} failed at this node (its administrator has the "
                          "details in the daemon's log)")

    def _checked_peer(self, node_id: str, fingerprint: str, method: str) -> dict[str, Any]:
        """The peer row of a caller that holds the pinned certificate and is active (or asks
        only for what a quarantined peer may: ``attest``, ``job.stop``)."""
        peer = self.peers.by_node_id(node_id)
        if fingerprint and peer["policy"]["certificate_sha256"] != fingerprint:
            raise PeerError("the connection's certificate is not the one pinned", 403)
        if method in ("attest", "job.stop"):
            return peer
        return self.active_peer(node_id, peer)

    def active_peer(self, node_id: str, peer: dict[str, Any] | None = None) -> dict[str, Any]:
        """The peer row of ``node_id`` as it stands now, or PeerError (403) when this node
        has quarantined it: asked again before each request a service serves."""
        peer = peer if peer is not None else self.peers.by_node_id(node_id)
        if peer["state"] != "active":
            raise PeerError(f"this node has quarantined you: {peer['state_reason']}", 403)
        return peer

    def answer(self, node_id: str, fingerprint: str, msg: Any) -> dict[str, Any]:
        """The `{code, msg, data}` reply to one control request from peer `node_id`."""
        if not (isinstance(msg, dict) and isinstance(msg.get("method"), str)
                and isinstance(msg.get("body"), dict)):
            return {"code": 400, "msg": "a control request is {method, body}", "data": None}
        method = msg["method"]
        try:
            peer = self._checked_peer(node_id, fingerprint, method)
            handler = self.handlers.get(method)
            if handler is None:
                raise PeerError(f"unknown method {method!r}; known: {', '.join(METHODS)}", 404)
            return {"code": 0, "msg": "ok", "data": handler(peer, msg["body"])}
        except PeerError as exc:
            log.info("refused %s from %s: %s", method, node_id, exc)
            return {"code": exc.status, "msg": str(exc), "data": None}
        except Exception as exc:  # a bug or a failing device must not kill the listener
            # the text may name local paths or values: it stays in this node's log
            log.exception("%s from %s failed", method, node_id)
            return {"code": 500, "msg": f"{method} failed at this node ({type(exc).__name__}; "
                    "its administrator has the details in the daemon's log)", "data": None}

    def _on_attest(self, peer: dict[str, Any], body: dict[str, Any]) -> Any:
        nonce = body.get("nonce")
        try:
            raw = bytes.fromhex(nonce) if isinstance(nonce, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise PeerError("attest wants a 32-byte hex nonce", 400)
        return self._attest(raw)
