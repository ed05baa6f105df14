"""Multi-party jobs: an operator run by several appliances, each party as a local job.

The initiator (role `guest`) re-attests every peer, sends `job.create` to each (BFIA shape:
job id, operator, the parties and their roles, each party's data set, the parameters); a peer
that accepts queues its side as a local job of its own daemon (role `host`). Every party then
opens the job's sessions, runs the operator, and records in its signed ledger: which peers,
which job, which data set (by fingerprint), which operator, the hash of its outputs. A party
that is not the initiator reports each state change back with `task.callback`, so the
initiator's job shows every party.

Faults end the job everywhere with a reason: a party that fails or is cancelled aborts its
sessions, so the others' next receive fails at once; a party that dies or disconnects is found
by the channel's heartbeat within its liveness bound. Outputs are written only when a party's
side completed, so a failed job leaves none.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.federation.channel import ChannelError, RecvTimeout, Session
from appliance.federation.datasets import DatasetError, DatasetRegistry
from appliance.federation.grade_policy import GradePolicy, PolicyRefused
from appliance.federation.kinds import DATASET_NAME
from appliance.federation.peers import PeerError
from appliance.federation.service import Federation
from appliance.jobs.runner import Cancelled, JobContext, JobError
from appliance.operators.base import REGISTRY, Operator, PartyContext, job_dir, output_hash
from appliance.state.store import Store, utc_now
from appliance.trust import audit

log = logging.getLogger("pec.federation.jobs")

SETUP_TIMEOUT = 30.0  # for every party to open its sessions
APPROVAL_TIMEOUT = 24 * 3600.0  # default wait for parties whose admins must approve the job
APPROVAL_POLL = 1.0
_JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,96}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS federated_jobs (
    job_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    role TEXT NOT NULL,
    initiator TEXT NOT NULL,
    operator TEXT NOT NULL,
    local_job INTEGER,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    output_hash TEXT,
    updated TEXT NOT NULL,
    PRIMARY KEY (job_id, node_id)
);
"""


class Datasets:
    """The node's data set registry behind a lock: the daemon's API threads and job threads
    share one SQLite connection of its own."""

    def __init__(self, db_path: str) -> None:
        import sqlite3

        self._conn = sqlite3.connect(db_path, check_same_thread=False, timeout=30)
        self._registry = DatasetRegistry(self._conn)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._registry, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return locked

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Reader:
    """An operator's view of one registered data set: batches, and its fingerprint."""

    def __init__(self, datasets: Datasets, name: str) -> None:
        self._datasets, self.name = datasets, name
        ds = datasets.show(name)
        self.fingerprint, self.grade, self.id_column = ds.fingerprint, ds.grade, ds.id_column

    def batches(self, columns: list[str] | None = None) -> Any:
        yield from self._datasets.open(self.name, columns)


class _Guarded:
    """A job session whose receive notices a local cancel within a quarter second."""

    def __init__(self, session: Session, ctx: JobContext) -> None:
        self._s, self._ctx = session, ctx

    def send(self, obj: Any) -> None:
        self._s.send(obj)

    def send_bytes(self, data: Any) -> int:
        return self._s.send_bytes(data)

    def recv(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ctx.cancel_reason is not None:
                raise Cancelled(self._ctx.cancel_reason)
            left = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            if left <= 0:
                raise RecvTimeout(f"party {self._s.peer_id} sent nothing within {timeout} s")
            try:
                return self._s.recv(timeout=left)
            except RecvTimeout:
                continue


class MultiParty:
    def __init__(self, fed: Federation, store: Store, datasets: Datasets,
                 policy: Callable[[], GradePolicy],
                 submit: Callable[..., dict],
                 cancel: Callable[[int, str], Any],
                 job: Callable[[int], dict[str, Any]],
                 sign: Callable[[bytes], bytes] | None, output_root: Path,
                 secrets: Any = None) -> None:
        self.fed, self.store, self.datasets, self.policy = fed, store, datasets, policy
        self._submit, self._cancel, self._job, self._sign = submit, cancel, job, sign
        # row-level outputs of this node's sides (an intersection's ids), one folder a job
        self.output_root = output_root
        self._secrets = secrets
        with store.transaction() as db:
            db.execute(_SCHEMA)
        fed.handlers.update({
            "job.create": self._on_create, "job.start": self._on_start,
            "job.stop": self._on_stop, "job.status": self._on_status,
            "task.callback": self._on_callback,
        })

    # ---------------------------------------------------------------- bookkeeping
    def _note(self, job_id: str, node_id: str, *, role: str, initiator: str, operator: str,
              state: str, message: str = "", local_job: int | None = None,
              output: str | None = None) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO federated_jobs (job_id, node_id, role, initiator, operator, "
                "local_job, state, message, output_hash, updated) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (job_id, node_id) DO UPDATE SET state=excluded.state, "
                "message=excluded.message, updated=excluded.updated, "
                "local_job=COALESCE(excluded.local_job, local_job), "
                "output_hash=COALESCE(excluded.output_hash, output_hash)",
                (job_id, node_id, role, initiator, operator, local_job, state, message, output,
                 utc_now()),
            )

    def parties(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT * FROM federated_jobs WHERE job_id=? ORDER BY role DESC, node_id", (job_id,))
        return [dict(r) for r in rows]

    def for_local_job(self, local_job: int) -> dict[str, Any] | None:
        rows = self.store.query(
            "SELECT job_id FROM federated_jobs WHERE local_job=? AND node_id=?",
            (local_job, self.fed.ident.node_id))
        if not rows:
            return None
        return {"job_id": rows[0]["job_id"], "parties": self.parties(rows[0]["job_id"])}

    # ---------------------------------------------------------------- the initiator
    def run_initiator(self, ctx: JobContext, op: Operator, params: dict[str, Any]) -> dict:
        me = self.fed.ident.node_id
        peers = []
        for name in params["peers"]:
            try:
                peers.append(self.fed.peers.require_active(name))
            except PeerError as exc:
                raise JobError(str(exc)) from None
        ctx.progress(1, "attesting peers")
        for peer in peers:
            verdict = self.fed.attest_peer(peer["name"])
            if not verdict["ok"]:
                raise JobError(f"peer {peer['name']} failed attestation and is quarantined: "
                               f"{verdict['reason']}")
        job_id = f"{me}:{ctx.job_id}:{uuid.uuid4().hex[:8]}"
        arbiter = params.get("params", {}).get("arbiter")
        parties = {me: "guest", **{p["node_id"]: "arbiter" if p["name"] == arbiter else "host"
                                   for p in peers}}
        for node_id, role in parties.items():
            self._note(job_id, node_id, role=role, initiator=me, operator=op.name,
                       state="created", local_job=ctx.job_id if node_id == me else None)
        ctx.progress(3, "creating the job at every party")
        accepted = []
        try:
            for peer in peers:
                data = self.fed.request(peer, "job.create", {
                    "job_id": job_id, "operator": op.name, "initiator": me,
                    "parties": parties, "dataset": params["peer_datasets"].get(peer["name"]),
                    "params": params.get("params", {})})
                accepted.append(peer)
                local = data.get("local_job") if isinstance(data, dict) else None
                self._note(job_id, peer["node_id"], role=parties[peer["node_id"]], initiator=me,
                           operator=op.name, state="accepted",
                           local_job=local if isinstance(local, int) else None)
        except PeerError as exc:
            self._stop_all(accepted, job_id, f"job setup failed: {exc}")
            self._note(job_id, me, role="guest", initiator=me, operator=op.name,
                       state="failed", message=str(exc))
            raise JobError(f"job {job_id} refused: {exc}") from None
        try:
            self._await_approvals(ctx, job_id, peers, params)
        except BaseException as exc:
            self._stop_all(peers, job_id, f"the initiator's side ended: {exc}")
            self._note(job_id, me, role="guest", initiator=me, operator=op.name,
                       state="failed", message=str(exc))
            raise
        party_params = {"federation": {"job_id": job_id, "initiator": me, "parties": parties},
                        "dataset": params["dataset"], "params": params.get("params", {})}
        try:
            return self.run_party(ctx, op, party_params)
        except BaseException as exc:
            self._stop_all(peers, job_id, f"the initiator's side ended: {exc}")
            raise

    def _await_approvals(self, ctx: JobContext, job_id: str, peers: list[dict[str, Any]],
                         params: dict[str, Any]) -> None:
        """Wait while parties' admins have the job in their approval queue. A party whose
        admin cancels it ends the job; so does the timeout (param approval_timeout_s)."""
        waiting = {p["node_id"]: p for p in peers}
        deadline = time.monotonic() + params.get("approval_timeout_s", APPROVAL_TIMEOUT)
        while waiting:
            for node_id, peer in list(waiting.items()):
                row = self.fed.request(peer, "job.status", {"job_id": job_id})
                state = row.get("state") if isinstance(row, dict) else None
                if state in ("failed", "cancelled", "interrupted"):
                    raise JobError(f"party {node_id} ended the job before it started ({state}"
                                   f": {row.get('message', '')})")
                if state != "awaiting_approval":
                    del waiting[node_id]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise JobError(f"not approved in time by {', '.join(sorted(waiting))}")
            ctx.progress(4, f"waiting for {', '.join(sorted(waiting))} to approve the job")
            time.sleep(APPROVAL_POLL)

    def _stop_all(self, peers: list[dict[str, Any]], job_id: str, reason: str) -> None:
        for peer in peers:
            try:
                self.fed.request(peer, "job.stop", {"job_id": job_id, "reason": reason},
                                 timeout=5)
            except PeerError as exc:
                log.info("job.stop to %s: %s", peer["name"], exc)

    # ---------------------------------------------------------------- every party
    def run_party(self, ctx: JobContext, op: Operator, params: dict[str, Any]) -> dict:
        me = self.fed.ident.node_id
        fedp = params["federation"]
        job_id, initiator, parties = fedp["job_id"], fedp["initiator"], fedp["parties"]
        role = parties[me]
        note = dict(role=role, initiator=initiator, operator=op.name)
        try:
            self._initiator_still_on(job_id, initiator)
            if me != initiator:
                # the initiator attested every party when it began; a host attests the other
                # hosts itself: no party runs with a node it has not checked this session
                for node_id in parties:
                    if node_id not in (me, initiator):
                        name = self.fed.peers.by_node_id(node_id)["name"]
                        verdict = self.fed.attest_peer(name)
                        if not verdict["ok"]:
                            raise PeerError(f"party {node_id} failed attestation and is "
                                            f"quarantined: {verdict['reason']}", 403)
            reader = None
            if role == "arbiter":
                # it holds keys and sees masked values only: no data set, no grade to check
                if params["dataset"] is not None or "arbiter" not in op.roles:
                    raise PeerError(f"operator {op.name} has no arbiter role here", 400)
            else:
                if params["dataset"] is None:
                    raise PeerError(f"party {me} was given no data set", 400)
                reader = _Reader(self.datasets, params["dataset"])
                self.policy().check_use(reader.grade, op.family,
                                        op.stated(role, params["params"]),
                                        dataset=reader.name)
        except (DatasetError, PeerError) as exc:
            # what the other parties are told: a policy rule or a peer's state, never a local
            # file's path or a value from it (those stay in this node's job error)
            public = str(exc) if isinstance(exc, (PolicyRefused, PeerError)) else (
                f"party {me}'s data set {params['dataset']!r} is not usable (its "
                "administrator has the details)")
            self.fed.end_job(job_id, f"party {me} failed: {public}")
            self._report(job_id, me, initiator, note, "failed", public, ctx.job_id)
            raise JobError(str(exc)) from None
        self._report(job_id, me, initiator, note, "running", "", ctx.job_id)
        others = [n for n in parties if n != me]
        sessions: dict[str, Session] = {}
        try:
            ctx.progress(5, "opening the job's sessions")
            sessions = self.fed.job_sessions(job_id, others, SETUP_TIMEOUT)
            peer_keys = {n: self.fed.peers.by_node_id(n)["policy"]["node_public_pem"]
                         for n in others}
            pctx = PartyContext(
                job_id=job_id, role=role, node_id=me, parties=dict(parties),
                sessions={n: _Guarded(s, ctx) for n, s in sessions.items()},
                params=dict(params["params"]), dataset=reader,
                progress=lambda pct, msg="": ctx.progress(10 + 0.9 * pct, msg),
                sign=self._sign, peer_keys=peer_keys,
                output_dir=job_dir(self.output_root, job_id),
                state_dir=self.output_root.parent, secrets=self._secrets)
            outputs = op.run(pctx)
        except Cancelled as exc:
            self.fed.end_job(job_id, f"party {me} cancelled: {exc.reason}")
            self._abort(sessions, f"party {me} cancelled: {exc.reason}")
            self._report(job_id, me, initiator, note, "cancelled", exc.reason, ctx.job_id)
            raise
        except Exception as exc:
            reason = _reason(exc)
            self.fed.end_job(job_id, f"party {me} failed: {reason}")
            self._abort(sessions, f"party {me} failed: {reason}")
            self._report(job_id, me, initiator, note, "failed", reason, ctx.job_id)
            audit.record(audit.SYSTEM, "federation.job.failed", f"job:{job_id}",
                         {"operator": op.name, "role": role, "local_job": ctx.job_id,
                          "reason": reason})
            raise JobError(reason) from None
        if reader is not None and outputs.get("rows_file") and outputs.get("intersection_size"):
            # row-level outputs become a data set of this node, of the input's grade, for
            # the next job (vertical learning aligns on it); an empty result stays a file
            name = f"{op.name}-{ctx.job_id}"
            try:
                ds = self.datasets.add(name, outputs["rows_file"], reader.id_column,
                                       reader.grade, actor=audit.SYSTEM)
            except DatasetError as exc:
                self._abort(sessions, f"party {me} failed: its output could not be kept")
                self._report(job_id, me, initiator, note, "failed", "output not kept",
                             ctx.job_id)
                raise JobError(f"the output {outputs['rows_file']} could not be registered "
                               f"as data set {name}: {exc}") from None
            outputs["dataset"] = ds.name
        digest = output_hash(outputs)
        audit.record(audit.SYSTEM, "federation.job.done", f"job:{job_id}", {
            "operator": op.name, "provider": op.provider, "role": role,
            "peers": {n: parties[n] for n in others}, "local_job": ctx.job_id,
            "dataset": reader.name if reader else None,
            "dataset_fingerprint": reader.fingerprint if reader else None,
            "output_hash": digest,
            # a differentially private release says what noise it carries, in the ledger
            **({"dp": outputs["dp"]} if isinstance(outputs.get("dp"), dict) else {})})
        for s in sessions.values():
            # the outputs are complete; a peer gone by now changes nothing
            with contextlib.suppress(ChannelError):
                s.close()
        self._report(job_id, me, initiator, note, "done", "", ctx.job_id, digest)
        return {"job_id": job_id, "role": role, "parties": parties, "outputs": outputs,
                "output_hash": digest}

    def _initiator_still_on(self, job_id: str, initiator: str) -> None:
        """A party's side may start long after job.create (a queue, a restart after a crash):
        ask the initiator first whether the job still runs there."""
        if initiator == self.fed.ident.node_id:
            return
        peer = self.fed.peers.by_node_id(initiator)
        row = self.fed.request(peer, "job.status", {"job_id": job_id})
        state = row.get("state") if isinstance(row, dict) else None
        if state not in ("created", "accepted", "running"):
            message = row.get("message", "") if isinstance(row, dict) else ""
            raise PeerError(f"the initiator {initiator} has ended job {job_id} ({state}"
                            + (f": {message}" if message else "") + ")", 409)

    def _abort(self, sessions: dict[str, Session], reason: str) -> None:
        for s in sessions.values():
            with contextlib.suppress(ChannelError):
                s.abort(reason)

    def _report(self, job_id: str, me: str, initiator: str, note: dict[str, str], state: str,
                message: str, local_job: int, digest: str | None = None) -> None:
        self._note(job_id, me, state=state, message=message, local_job=local_job,
                   output=digest, **note)
        if initiator == me:
            return
        try:
            peer = self.fed.peers.by_node_id(initiator)
            self.fed.request(peer, "task.callback", {
                "job_id": job_id, "state": state, "message": message,
                "output_hash": digest, "local_job": local_job}, timeout=5)
        except PeerError as exc:
            log.info("task.callback to %s: %s", initiator, exc)

    # ---------------------------------------------------------------- control handlers
    def _on_create(self, peer: dict[str, Any], body: dict[str, Any]) -> Any:
        job_id, op_name = body.get("job_id"), body.get("operator")
        parties, dataset = body.get("parties"), body.get("dataset")
        me = self.fed.ident.node_id
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise PeerError("job.create: job_id must be 1-96 characters of A-Z a-z 0-9 . _ : -")
        if body.get("initiator") != peer["node_id"]:
            raise PeerError("job.create: the initiator must be the peer that asks", 403)
        if op_name not in REGISTRY:
            raise PeerError(f"job.create: this node has no operator {op_name!r}", 404)
        if (not isinstance(parties, dict) or parties.get(me) not in ("host", "arbiter")
                or parties.get(peer["node_id"]) != "guest"
                or not all(isinstance(v, str) for v in parties.values())):
            raise PeerError("job.create: parties must name the initiator as guest and this "
                            "node as host or arbiter")
        for node_id in parties:
            if node_id != me:
                self.fed.peers.require_active(self.fed.peers.by_node_id(node_id)["name"])
        if parties[me] == "arbiter" and dataset is not None:
            raise PeerError("job.create: an arbiter is given no data set")
        if parties[me] != "arbiter" and (not isinstance(dataset, str)
                                         or not DATASET_NAME.match(dataset)):
            raise PeerError("job.create: dataset must name one of this node's data sets")
        # mutual: the initiator proved itself to us just now, not only when it was enrolled
        verdict = self.fed.attest_peer(peer["name"])
        if not verdict["ok"]:
            raise PeerError(f"you failed this node's attestation: {verdict['reason']}", 403)
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        # a peer an admin approved for automatic acceptance gets its job queued at once;
        # any other waits in the approval queue (the panel's Jobs page, `jobs approve`)
        hold = None if peer.get("auto_accept") else (
            f"awaiting an admin's approval: {op_name} job {job_id} from peer {peer['name']}")
        job = self._submit(op_name, {
            "federation": {"job_id": job_id, "initiator": peer["node_id"], "parties": parties},
            "dataset": dataset, "params": params}, f"peer:{peer['name']}", hold)
        self._note(job_id, me, role=parties[me], initiator=peer["node_id"], operator=op_name,
                   state="awaiting_approval" if hold else "accepted", local_job=job["id"])
        return {"local_job": job["id"], "state": job["state"]}

    def _on_start(self, peer: dict[str, Any], body: dict[str, Any]) -> Any:
        # a created job starts at once; start answers its state, for schedulers that send it
        return self._on_status(peer, body)

    def _row(self, peer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        job_id = body.get("job_id")
        rows = self.store.query(
            "SELECT * FROM federated_jobs WHERE job_id=? AND node_id=?",
            (job_id, self.fed.ident.node_id)) if isinstance(job_id, str) else []
        members = {r["node_id"] for r in self.parties(job_id)} | {r["initiator"] for r in rows}
        if not rows or peer["node_id"] not in members:
            raise PeerError(f"no job {job_id!r} with you as a party", 404)
        return dict(rows[0])

    def cancelled_before_start(self, local_job: int, actor: str) -> None:
        """This node's side was cancelled before it ran (an admin declined it, or cancelled it
        in the queue): tell the other parties now rather than let them time out."""
        rows = self.store.query(
            "SELECT * FROM federated_jobs WHERE local_job=? AND node_id=?",
            (local_job, self.fed.ident.node_id))
        if not rows:
            return
        row = dict(rows[0])
        reason = f"party {row['node_id']} declined or cancelled the job before it started"
        self.fed.end_job(row["job_id"], reason)
        note = dict(role=row["role"], initiator=row["initiator"], operator=row["operator"])
        self._report(row["job_id"], row["node_id"], row["initiator"], note, "cancelled",
                     f"cancelled by {actor} before it started", local_job)

    def _on_stop(self, peer: dict[str, Any], body: dict[str, Any]) -> Any:
        row = self._row(peer, body)
        if row["local_job"] is None or row["state"] not in ("awaiting_approval", "accepted",
                                                            "running"):
            return {"state": row["state"]}
        try:
            job = self._cancel(row["local_job"], f"peer:{peer['name']}")
        except (JobError, LookupError) as exc:
            return {"state": row["state"], "note": str(exc)}
        # a side that had not started is reported by the kind's on_cancel hook; a running one
        # by run_party when the cancel reaches it
        return {"state": job["state"]}

    def _on_status(self, peer: dict[str, Any], body: dict[str, Any]) -> Any:
        row = self._row(peer, body)
        out = {k: row[k] for k in ("job_id", "node_id", "role", "state", "message",
                                   "output_hash")}
        if row["local_job"] is not None and row["state"] in ("awaiting_approval", "accepted"):
            # the local job moves on its own (an admin approves or cancels it): say where
            local = self._job(row["local_job"])
            if local["state"] in ("queued",):
                out["state"] = "accepted"
            elif local["state"] != "running":
                out["state"], out["message"] = local["state"], local.get("error") or \
                    local.get("message", "")
        return out

    def _on_callback(self, peer: dict[str, Any], body: dict[str, Any]) -> Any:
        job_id, state = body.get("job_id"), body.get("state")
        rows = self.store.query(
            "SELECT * FROM federated_jobs WHERE job_id=? AND node_id=?",
            (job_id, peer["node_id"])) if isinstance(job_id, str) else []
        if not rows or rows[0]["initiator"] != self.fed.ident.node_id:
            raise PeerError(f"no job {job_id!r} that this node initiated with you", 404)
        if state not in ("running", "done", "failed", "cancelled"):
            raise PeerError(f"task.callback: unknown state {state!r}")
        digest = body.get("output_hash")
        if state in ("failed", "cancelled"):
            # this node's side stops waiting for that party's sessions
            self.fed.end_job(job_id, f"party {peer['node_id']} {state}: "
                                     f"{str(body.get('message', ''))[:300]}")
        self._note(job_id, peer["node_id"], role=rows[0]["role"], initiator=rows[0]["initiator"],
                   operator=rows[0]["operator"], state=state,
                   message=str(body.get("message", ""))[:500],
                   output=digest if isinstance(digest, str) else None)
        return {"ok": True}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ChannelError):
        return f"channel: {exc}"
    return str(exc) or type(exc).__name__
