"""Jobs: queued work run concurrently, up to ``max_jobs`` at once, persisted in the store.

States: queued -> running -> done | failed | cancelled; a job that was running when the process
died is found "running" at the next start and marked interrupted; resume puts it back in the
queue. Cancellation is cooperative: the job's progress callback raises ``Cancelled``.

Jobs run concurrently so that one that waits (a multi-party job waiting on a peer) does not
hold up the node's other jobs. A kind marked ``exclusive`` (those that measure the hardware)
runs alone: it starts only when nothing else runs, nothing starts while it runs, and while it
is the oldest queued job nothing newer overtakes it (else a stream of short jobs would starve
it). Jobs start in submission order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.errors import ApplianceError
from appliance.jobs.states import FINAL, RESUMABLE, STATES
from appliance.state.store import Store, utc_now
from appliance.trust import audit

log = logging.getLogger("pec.jobs")


def describe_error(exc: BaseException) -> str:
    """``Type: first line``: what a failed job, log line or degraded reason shows."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__



class JobError(ApplianceError, ValueError):
    """A job request is wrong (unknown kind, bad params, wrong state); the message says why."""


class CapabilityMissing(ApplianceError, PermissionError):
    """The node's profile does not carry the capability a job kind needs."""

    status = 403


class Cancelled(Exception):
    """Raised inside a job by its progress callback once cancellation was asked for."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[[JobContext, dict[str, Any]], dict[str, Any]]
    validate: Callable[[dict[str, Any]], dict[str, Any]]
    requires: str | None = None
    description: str = ""
    # run alone: nothing else runs beside it (it measures the hardware)
    exclusive: bool = False
    # called with (runner, job id, actor) when a job of this kind is cancelled before it ran
    # (a multi-party job tells its other parties)
    on_cancel: Callable[[Any, int, str], None] | None = None


class JobContext:
    """What a running job sees: progress reporting (which is where it is cancelled), a log."""

    def __init__(self, runner: JobRunner, job_id: int) -> None:
        self.runner, self.job_id, self.store = runner, job_id, runner.store
        self._last: tuple[int, str] | None = None
        self.cancel_reason: str | None = None

    def progress(self, percent: float, message: str = "") -> None:
        if self.cancel_reason is not None:
            raise Cancelled(self.cancel_reason)
        pct = max(0, min(100, int(percent)))
        if (pct, message) != self._last:
            self._last = (pct, message)
            with self.store.transaction() as db:
                db.execute(
                    "UPDATE jobs SET progress=?, message=? WHERE id=? AND state='running'",
                    (pct, message, self.job_id),
                )

    @property
    def trust(self) -> Any:
        """The node's trust root; a job needing keys fails clearly without one."""
        if self.runner.trust is None:
            raise RuntimeError("this node has no trust root open (HSM and TPM)")
        return self.runner.trust

    def log(self, line: str) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO job_logs (job_id, time, line) VALUES (?, ?, ?)",
                (self.job_id, utc_now(), str(line)),
            )


def _jsonable(value: Any) -> Any:
    # benchmark tables carry NumPy scalars and arrays
    for attr in ("tolist", "item"):
        if hasattr(value, attr):
            return getattr(value, attr)()
    return str(value)


def job_dict(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["params"] = json.loads(out["params"])
    out["result"] = json.loads(out["result"]) if out["result"] is not None else None
    return out


DEFAULT_MAX_JOBS = 4


class JobRunner:
    def __init__(self, store: Store, kinds: dict[str, JobKind],
                 max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {max_jobs}")
        self.store, self.kinds, self.max_jobs = store, kinds, max_jobs
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # guards _running and _workers, and orders claims against cancel and a job's end
        self._lock = threading.Lock()
        self._running: dict[int, JobContext] = {}
        self._exclusive: int | None = None  # the id of the exclusive job running, if one is
        self._workers: dict[int, threading.Thread] = {}
        # the node's open trust root (appliance.trust.TrustRoot), for the jobs that use keys
        self.trust: Any = None
        # the node's multi-party job service (appliance.federation.mpjobs), for operator jobs
        self.multiparty: Any = None

    # queries
    def get(self, job_id: int) -> dict[str, Any]:
        rows = self.store.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise LookupError(f"no job {job_id}")
        return job_dict(rows[0])

    def list(self, *, state: str | None = None, kind: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        if state is not None and state not in STATES:
            raise JobError(f"unknown state {state!r}; known: {', '.join(STATES)}")
        rows, total = self.store.page("jobs", {"state": state or None, "kind": kind or None},
                                      order_by="id DESC", limit=limit, offset=offset)
        return [job_dict(r) for r in rows], total

    def log_lines(self, job_id: int) -> list[str]:
        self.get(job_id)
        rows = self.store.query("SELECT line FROM job_logs WHERE job_id=? ORDER BY id", (job_id,))
        return [r[0] for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self.store.query("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state")
        return {(r[0], r[1]): r[2] for r in rows}

    # changes
    def recover(self) -> list[int]:
        """Mark jobs left running by a dead process as interrupted; returns their ids."""
        with self.store.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state='running'")]
            db.execute(
                "UPDATE jobs SET state='interrupted', finished=?, "
                "message='interrupted: the daemon stopped while it ran' WHERE state='running'",
                (utc_now(),),
            )
        for job_id in ids:
            audit.record("system", "job.interrupted", f"job:{job_id}", {})
        return ids

    def submit(self, kind: Any, params: Any, actor: str, capabilities: list[str],
               profile: str, hold: str | None = None) -> dict[str, Any]:
        """Queue a job; with `hold` (the reason) it waits in awaiting_approval instead."""
        if not isinstance(kind, str) or kind not in self.kinds:
            raise JobError(f"unknown job kind {kind!r}; known: {', '.join(sorted(self.kinds))}")
        spec = self.kinds[kind]
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise JobError("params must be an object")
        if spec.requires and spec.requires not in capabilities:
            raise CapabilityMissing(
                f"job kind {kind!r} needs capability {spec.requires!r}, which profile "
                f"{profile!r} does not carry"
            )
        try:
            params = spec.validate(dict(params))
        except (ValueError, TypeError) as exc:
            raise JobError(f"bad params for {kind}: {exc}") from None
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO jobs (kind, state, progress, message, params, created, actor) "
                "VALUES (?, ?, 0, ?, ?, ?, ?)",
                (kind, "awaiting_approval" if hold else "queued", hold or "queued",
                 json.dumps(params), utc_now(), actor),
            )
            job_id = cur.lastrowid
            # read in the same transaction: the job as queued, before the worker may take it
            job = job_dict(db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        audit.record(actor, "job.submit", f"job:{job_id}", {"kind": kind, "params": params})
        self._wake.set()
        return job

    def cancel(self, job_id: int, actor: str) -> dict[str, Any]:
        with self._lock, self.store.transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise LookupError(f"no job {job_id}")
            state = row[0]
            if state in FINAL:
                raise JobError(f"job {job_id} is already {state}")
            if state in ("queued", "awaiting_approval"):
                db.execute(
                    "UPDATE jobs SET state='cancelled', finished=?, message=? WHERE id=?",
                    (utc_now(), f"cancelled by {actor} before it started", job_id),
                )
            elif job_id in self._running:
                self._running[job_id].cancel_reason = f"cancelled by {actor}"
                db.execute("UPDATE jobs SET message='cancelling' WHERE id=?", (job_id,))
        audit.record(actor, "job.cancel", f"job:{job_id}", {"state_was": state})
        job = self.get(job_id)
        hook = self.kinds[job["kind"]].on_cancel if job["kind"] in self.kinds else None
        if hook is not None and job["state"] == "cancelled":
            try:
                hook(self, job_id, actor)
            except Exception:  # the cancel stands; telling the others is best effort
                log.exception("on_cancel of job %s", job_id)
        return job

    def approve(self, job_id: int, actor: str) -> dict[str, Any]:
        """An admin's approval of a job awaiting it: it joins the queue."""
        with self.store.transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise LookupError(f"no job {job_id}")
            if row[0] != "awaiting_approval":
                raise JobError(f"job {job_id} is {row[0]}, not awaiting approval")
            db.execute("UPDATE jobs SET state='queued', message=? WHERE id=?",
                       (f"approved by {actor}", job_id))
        audit.record(actor, "job.approve", f"job:{job_id}", {})
        self._wake.set()
        return self.get(job_id)

    def resume(self, job_id: int, actor: str) -> dict[str, Any]:
        """Put a failed, cancelled or interrupted job back in the queue (it starts over)."""
        with self.store.transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise LookupError(f"no job {job_id}")
            if row[0] not in RESUMABLE:
                raise JobError(
                    f"job {job_id} is {row[0]}; only {', '.join(RESUMABLE)} jobs can be resumed"
                )
            db.execute(
                "UPDATE jobs SET state='queued', progress=0, message='queued again', "
                "result=NULL, error=NULL, started=NULL, finished=NULL WHERE id=?",
                (job_id,),
            )
            job = job_dict(db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        audit.record(actor, "job.resume", f"job:{job_id}", {"state_was": row[0]})
        self._wake.set()
        return job

    # the dispatcher and the workers
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="pec-jobs", daemon=True)
        self._thread.start()

    def running(self) -> list[int]:
        """The ids of the jobs running now."""
        with self._lock:
            return sorted(self._running)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running jobs are asked to stop and end as interrupted."""
        self._stopping.set()
        with self._lock:
            for ctx in self._running.values():
                ctx.cancel_reason = "shutdown"
        self._wake.set()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            stuck = [job_id for job_id, w in self._workers.items() if w.is_alive()]
            for job_id in stuck:
                # forget it, so that its end (if it ever comes) is not recorded over this
                self._running.pop(job_id, None)
                self._workers.pop(job_id, None)
                if self._exclusive == job_id:
                    self._exclusive = None
        if stuck:
            log.warning("%d job(s) did not stop within %.0f s; they are marked interrupted",
                        len(stuck), timeout)
            self.recover()

    def _claim(self) -> tuple[int, str, dict[str, Any]] | None:
        """Mark the next job that may start now running, or None when none may."""
        with self._lock:
            if self._exclusive is not None or len(self._running) >= self.max_jobs:
                return None
            with self.store.transaction() as db:
                row = db.execute(
                    "SELECT id, kind, params FROM jobs WHERE state='queued' ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                spec = self.kinds.get(row[1])
                exclusive = spec is not None and spec.exclusive
                if exclusive and self._running:
                    return None  # it waits for the running ones, and holds the queue meanwhile
                db.execute(
                    "UPDATE jobs SET state='running', started=?, message='started' WHERE id=?",
                    (utc_now(), row[0]),
                )
            self._running[row[0]] = JobContext(self, row[0])
            if exclusive:
                self._exclusive = row[0]
            return row[0], row[1], json.loads(row[2])

    def _work(self) -> None:
        while not self._stopping.is_set():
            claimed = self._claim()
            if claimed is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            job_id = claimed[0]
            worker = threading.Thread(target=self._run, args=claimed,
                                      name=f"pec-job-{job_id}", daemon=True)
            with self._lock:
                self._workers[job_id] = worker
            worker.start()

    def _run(self, job_id: int, kind: str, params: dict[str, Any]) -> None:
        with self._lock:
            ctx = self._running[job_id]
        log.info("job %d (%s) started", job_id, kind)
        state, result, error, message = "done", None, None, "done"
        try:
            spec = self.kinds.get(kind)
            if spec is None:
                raise JobError(f"this daemon has no job kind {kind!r}")
            result = spec.run(ctx, params)
        except Cancelled as exc:
            if exc.reason == "shutdown":
                state, message = "interrupted", "interrupted: the daemon was stopped"
            else:
                state, message = "cancelled", exc.reason
        except Exception as exc:  # a failing job must never take the worker down
            state, error = "failed", describe_error(exc)
            message = "failed"
            log.warning("job %d (%s) failed: %s", job_id, kind, error)
        with self._lock:
            if self._running.get(job_id) is not ctx:
                return  # stop() gave up on this job and already marked it
            del self._running[job_id]
            self._workers.pop(job_id, None)
            if self._exclusive == job_id:
                self._exclusive = None
            self._wake.set()  # a slot is free: the dispatcher may start the next job
            try:
                with self.store.transaction() as db:
                    db.execute(
                        "UPDATE jobs SET state=?, progress=CASE WHEN ?='done' THEN 100 "
                        "ELSE progress END, message=?, result=?, error=?, finished=? WHERE id=?",
                        (state, state, message,
                         None if result is None else json.dumps(result, default=_jsonable),
                         error, utc_now(), job_id),
                    )
            except Exception as exc:
                log.error("cannot record the end of job %d: %s", job_id, exc)
                return
        log.info("job %d (%s) %s", job_id, kind, state)
        audit.record("system", f"job.{state}", f"job:{job_id}", {"kind": kind, "error": error})
