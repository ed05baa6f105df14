"""Two-party ECDH-PSI (Meadows; Huberman, Franklin and Hogg), one function per party.

Each party hashes its ids to X25519 points, multiplies them by a fresh secret scalar and sends
them (stage 1, full 32-byte points) in a secret random order. Each multiplies the points it
receives by its own scalar: the values a learner needs come back to it (stage 2, truncated to
96 bits, in the order it sent, so it can map them to its rows), and a learner keeps the
doubly-encrypted values of the peer's points it computed itself. H(x)^ab = H(y)^ba exactly
when x = y, so the learner's rows whose stage-2 value occurs among the peer's are the
intersection. Which side learns what is set by ``reveal`` (see docs/psi.md).

Wire format. A handshake JSON message each way names the protocol and its parameters (BFIA's
ECDH-PSI handshake carries the same: curve, hash, hash-to-curve, point size, truncation) and
the sender's row count. Batches are byte messages, each a 16-byte header (magic, stage, last
flag, batch index, item count) and ``count`` values; batch i of stage 2 answers batch i of
stage 1 item for item. After the exchange the learner tells the size, so that both sides'
results name the same number (reveal=both: both tell, and the sizes must agree).

Join (``join``: the guest's payload columns, ``peer_join``: the host's; reveal=both only): each
side writes its intersecting rows with its own payload columns, ordered by the doubly-encrypted
value of the id, which both sides hold for a shared id, so the two files align row for row.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import re
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.psi import ecdh_engine as engine

REVEALS = ("both", "initiator", "cardinality")
MODES = ("balanced", "unbalanced")
DEFAULT_BATCH = 1 << 16
MAX_BATCH = 1 << 20  # 32 MiB of stage-1 points: under the channel's 64 MiB byte message
HEADER = struct.Struct("<4sBBHII")  # magic, stage, last, reserved, batch index, count
MAGIC = b"PSI1"
WIDTH = {1: engine.POINT_BYTES, 2: engine.TRUNCATED_BYTES}
HELLO = {
    "protocol": "ecdh-psi", "version": 1, "curve": "curve25519", "hash": "sha256",
    "hash_to_curve": "sha256-u-coordinate", "point_bytes": engine.POINT_BYTES,
    "truncate_bytes": engine.TRUNCATED_BYTES,
}
_POLL = 0.5  # how often a wait for the peer looks at the sending thread's health
#: ids per bucket when the job does not say: each bucket's crypto state (points, doubly
#: encrypted values, order) is a few hundred MB at most, whatever the set's size
BUCKET_ROWS = 1 << 22
MAX_BUCKETS = 1 << 14
CHECKPOINT = "psi-checkpoint.json"


class ByteSession(Protocol):
    """What the operator needs of a job session: JSON messages and byte messages."""

    def send(self, obj: Any) -> None: ...

    def send_bytes(self, data: bytes | bytearray | memoryview) -> int: ...

    def recv(self, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True)
class Params:
    reveal: str
    batch_size: int
    # join mode: each role's payload columns (None: no join, the output is the id column only)
    join: dict[str, tuple[str, ...]] | None = None
    buckets: int | None = None  # None: as many as keep a bucket near BUCKET_ROWS
    resume: str | None = None  # a previous job whose finished buckets are kept

    def payload(self, role: str) -> tuple[str, ...]:
        return self.join.get(role, ()) if self.join is not None else ()


def _columns(name: str, value: Any) -> tuple[str, ...]:
    """``join``/``peer_join`` as the CLI sends them ("a,b") or the API (["a", "b"])."""
    if isinstance(value, str):
        items = [c.strip() for c in value.split(",")] if value.strip() else []
    elif isinstance(value, list | tuple) and all(isinstance(c, str) for c in value):
        items = [c.strip() for c in value]
    else:
        raise OperatorError(f"psi: {name} must be a comma-separated list of column names "
                            f"(got {value!r})")
    if any(not c for c in items):
        raise OperatorError(f"psi: {name} has an empty column name ({value!r})")
    return tuple(dict.fromkeys(items))  # a column named twice is written once


def parse_params(params: dict[str, Any]) -> Params:
    unknown = set(params) - {"reveal", "batch_size", "join", "peer_join", "mode", "buckets",
                             "resume", "provider", "protocol"}
    if "output_dir" in unknown:
        # the parameters come from the initiator: a peer must not choose where this node writes
        raise OperatorError("output_dir is not a job parameter: each node writes its result "
                            "under its own output directory")
    if unknown:
        raise OperatorError(f"psi: unknown parameter(s) {', '.join(sorted(unknown))}; known: "
                            "provider, protocol, reveal, batch_size, join, peer_join, mode, "
                            "buckets, resume")
    if params.get("mode", "balanced") not in MODES:
        raise OperatorError(f"psi: mode must be one of {', '.join(MODES)} "
                            f"(got {params.get('mode')!r})")
    reveal = params.get("reveal", "both")
    if reveal not in REVEALS:
        raise OperatorError(f"psi: reveal must be one of {', '.join(REVEALS)} (got {reveal!r})")
    join: dict[str, tuple[str, ...]] | None = None
    if "join" in params or "peer_join" in params:
        # the job's parameters come from the initiator (the guest): join names its own
        # columns, peer_join the host's; each side reads the list of its role
        join = {"guest": _columns("join", params.get("join", "")),
                "host": _columns("peer_join", params.get("peer_join", ""))}
        if reveal != "both":
            raise OperatorError(f"psi: join needs reveal=both (got reveal={reveal!r}): the "
                                "aligned rows exist only where both parties learn the "
                                "intersection")
    batch = params.get("batch_size", DEFAULT_BATCH)
    if isinstance(batch, str) and batch.isdigit():
        batch = int(batch)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise OperatorError(f"psi: batch_size must be an integer 1..{MAX_BATCH} (got {batch!r})")
    buckets = params.get("buckets")
    if buckets in (None, "", "auto"):
        buckets = None
    else:
        if isinstance(buckets, str) and buckets.isdigit():
            buckets = int(buckets)
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not (
                1 <= buckets <= MAX_BUCKETS):
            raise OperatorError(f"psi: buckets must be auto or an integer 1..{MAX_BUCKETS} "
                                f"(got {buckets!r})")
    resume = params.get("resume") or None
    if resume is not None and (not isinstance(resume, str) or len(resume) > 200):
        raise OperatorError("psi: resume names a previous psi job")
    return Params(reveal, batch, join, buckets, resume)


def _check_provider_params(provider: str, p: Params) -> None:
    """What only provider pec has: buckets and resume are its own, spu buckets by itself."""
    for name, value in (("buckets", p.buckets), ("resume", p.resume)):
        if value is not None:
            raise OperatorError(f"psi: provider {provider} has no {name} parameter (spu splits "
                                "large sets into its own buckets); use provider=pec")


def stated_for(role: str | None, params: dict[str, Any]) -> dict[str, str]:
    """What of this node's data set a run lets leave (the grade policy's psi ``reveal``).

    Without the role, reveal=initiator is stated as the host sees it ("peer": its ids that
    intersect become known to the guest), the more revealing of the two, so a policy never
    lets through more than it allowed.
    """
    # unbalanced: only the guest (the client) learns rows, so its default is initiator
    reveal = params.get("reveal",
                        "initiator" if params.get("mode") == "unbalanced" else "both")
    if reveal == "both":
        return {"reveal": "both"}
    if reveal == "cardinality":
        return {"reveal": "count"}
    if reveal == "initiator":
        return {"reveal": "self" if role == "guest" else "peer"}
    return {"reveal": str(reveal)}  # unknown: the policy refuses it by value


def stated(params: dict[str, Any]) -> dict[str, str]:
    return stated_for(None, params)


def encode_batch(stage: int, index: int, values: np.ndarray | bytes, last: bool) -> bytes:
    payload = values.tobytes() if isinstance(values, np.ndarray) else bytes(values)
    count = len(payload) // WIDTH[stage]
    return HEADER.pack(MAGIC, stage, int(last), 0, index, count) + payload


def batch_sizes(rows: int, batch: int) -> list[int]:
    """Rows per batch; an empty set still sends one empty, last batch."""
    if rows == 0:
        return [0]
    return [min(batch, rows - i) for i in range(0, rows, batch)]


def run(ctx: PartyContext) -> dict[str, Any]:
    provider = ctx.params.get("provider", "pec")
    protocol = ctx.params.get("protocol")
    if provider == "secretflow":
        from appliance.operators.psi import secretflow  # it uses this module's helpers
        return secretflow.run(ctx, parse_params(ctx.params), protocol or "rr22")
    if provider != "pec":
        raise OperatorError(f"psi: provider must be pec or secretflow (got {provider!r})")
    if protocol not in (None, "ecdh"):
        raise OperatorError(f"psi: provider pec runs protocol ecdh (got {protocol!r}); rr22 and "
                            "kkrt are provider secretflow's")
    if ctx.params.get("mode") == "unbalanced":
        # imported here: unbalanced_job uses this module's helpers
        from appliance.operators.psi import unbalanced_job
        return unbalanced_job.run(ctx)
    p = parse_params(ctx.params)
    peer, session = _peer_session(ctx)
    if ctx.role not in ("guest", "host"):
        raise OperatorError(f"psi has roles guest and host, not {ctx.role!r}")
    me_learns = p.reveal == "both" or ctx.role == "guest"
    peer_learns = p.reveal == "both" or ctx.role == "host"
    writes_rows = me_learns and p.reveal != "cardinality"
    out_dir = getattr(ctx, "output_dir", None)
    if writes_rows and out_dir is None:
        raise OperatorError("psi needs this node's output directory to write the intersection")
    id_column, ids = _read_ids(ctx)
    n = len(ids)
    ctx.progress(2, f"read {n} ids")
    payload = tuple(c for c in p.payload(ctx.role) if c != id_column)
    # opened (and its columns checked) before the handshake, so a wrong column fails the job
    # before any curve work; read again after the exchange, keeping only intersecting rows
    join_rows = _open_join(ctx, id_column, payload) if p.join is not None else None
    try:
        result = _run(ctx, p, peer, session, id_column, ids, join_rows, writes_rows,
                      me_learns, peer_learns, out_dir)
    finally:
        if join_rows is not None:
            join_rows.close()
    ctx.progress(100, f"intersection of {result['intersection_size']}")
    return result


def _run(ctx: PartyContext, p: Params, peer: str, session: ByteSession, id_column: str,
         ids: pa.Array, join_rows: _JoinRows | None,
         writes_rows: bool, me_learns: bool, peer_learns: bool,
         out_dir: Any) -> dict[str, Any]:
    n = len(ids)
    saved = _resume_state(ctx, p, n) if p.resume else None
    hello = {**HELLO, "reveal": p.reveal, "role": ctx.role, "rows": n, "buckets": p.buckets,
             "resume_at": saved["done"] if saved else None}
    if p.join is not None:
        hello["join"] = True
    session.send(hello)
    msg = session.recv(timeout=ctx.timeout)
    m = _check_hello(peer, msg, p.reveal, ctx.parties[peer], p.join is not None)
    if msg.get("buckets") != p.buckets:
        raise OperatorError(f"party {peer} runs buckets={msg.get('buckets')!r}, this node "
                            f"{p.buckets!r}")
    # both sides count the same buckets: from the stated number, or from the larger set
    k = p.buckets or max(1, -(-max(n, m) // BUCKET_ROWS))
    start = 0
    kept: list[np.ndarray] = []
    if p.resume:
        theirs_at = msg.get("resume_at")
        if not isinstance(theirs_at, int) or isinstance(theirs_at, bool) or theirs_at < 0:
            raise OperatorError(f"party {peer} has nothing to resume job {p.resume} from")
        assert saved is not None
        if saved["buckets"] != k or saved["peer_rows"] != m:
            raise OperatorError(f"psi: cannot resume job {p.resume}: it ran {saved['buckets']} "
                                f"buckets against {saved['peer_rows']} peer rows, this job "
                                f"{k} against {m}")
        # where both parties are: a bucket one finished and the other did not is run again
        start = min(saved["done"], theirs_at, k)
        kept = saved["hits"][:start]
    of = _bucket_of(ids, k)
    hits: list[np.ndarray] = list(kept)  # per bucket: this party's matching row positions
    for b in range(start, k):
        rows = np.flatnonzero(of == b) if k > 1 else np.arange(n)
        session.send({"bucket": b, "rows": len(rows)})
        mb = _bucket_rows(peer, session.recv(timeout=ctx.timeout), b, m)
        found = _bucket(ctx, p, peer, session, ids.take(pa.array(rows, pa.int64())), mb,
                        me_learns, peer_learns, join_rows is not None)
        if me_learns:
            hits.append(rows[found])
        _checkpoint(ctx, p, k, n, m, b + 1, hits if me_learns else [])
        ctx.progress(5 + 80 * (b + 1) / k, f"bucket {b + 1} of {k}")
    ctx.progress(85, "exchanged")

    result: dict[str, Any] = {"provider": "pec", "protocol": "ecdh-x25519", "reveal": p.reveal,
                              "own_rows": n, "peer_rows": m, "buckets": k}
    if p.resume:
        result["resumed_at_bucket"] = start
    # memory at 10^8 ids: what is no longer needed goes before the rows file is built (the
    # bucket numbers, the per-bucket lists), and the sort is in place
    del of
    if me_learns:
        every = np.concatenate(hits) if hits else np.empty(0, np.int64)
        hits.clear()
        size = len(every)
        if writes_rows and join_rows is not None:
            assert out_dir is not None
            # bucket by bucket, each in the order of the doubly-encrypted values: the same
            # order at both parties for the shared ids
            table = join_rows.take(ids, every)
            result.update(_write_rows(Path(out_dir), ctx, table))
            result.update(learned="rows", columns=table.column_names, order="aligned")
        elif writes_rows:
            assert out_dir is not None
            every.sort()  # the learner's rows in the data set's order
            table = pa.table({id_column: ids.take(pa.array(every, pa.int64()))})
            result.update(_write_rows(Path(out_dir), ctx, table))
            result["learned"] = "rows"
        else:
            result["learned"] = "size"
        session.send({"intersection_size": size})
        if peer_learns:  # both: the peer's count must be the same
            told = _size_from(peer, session.recv(timeout=ctx.timeout), n, m)
            if told != size:
                raise OperatorError(f"party {peer} found {told} rows in the intersection, "
                                    f"this node {size}: the parties' results disagree")
    else:
        size = _size_from(peer, session.recv(timeout=ctx.timeout), n, m)
        result["learned"] = "size"
    result["intersection_size"] = size
    _clear_checkpoint(ctx)
    return result


def _bucket(ctx: PartyContext, p: Params, peer: str, session: ByteSession, ids: pa.Array,
            m: int, me_learns: bool, peer_learns: bool, aligned: bool) -> np.ndarray:
    """One bucket's exchange; for a learner, the positions (within ``ids``) of its rows in
    the intersection: in the doubly-encrypted values' order when ``aligned`` (join), else
    in any order (reveal=cardinality: only their number means anything)."""
    n = len(ids)
    scalar = engine.new_scalar()  # fresh per bucket: a bucket's values say nothing of another
    rng = np.random.default_rng(int.from_bytes(os.urandom(32), "little"))
    # a secret order: a peer learns nothing from where a row sits in the file
    perm = rng.permutation(n)
    sizes = batch_sizes(n, p.batch_size)
    out: queue.Queue[bytes | None] = queue.Queue()
    sender = _Sender(session, ids.take(pa.array(perm, pa.int64())), scalar, sizes, out)
    if not peer_learns:
        out.put(None)
    sender.start()
    try:
        theirs, own2 = _exchange(ctx, peer, session, sender, out, scalar, n, m, sizes,
                                 me_learns, peer_learns, p.reveal == "cardinality", rng)
        sender.finish(ctx.timeout)
    except BaseException:
        sender.stop()
        raise
    if not me_learns:
        return np.empty(0, np.int64)
    mask = engine.members(own2, theirs)
    found = np.flatnonzero(mask)  # positions in the order sent
    if aligned:
        # both parties hold the same doubly-encrypted value for a shared id (H(x)^ab =
        # H(x)^ba), so ordering by it lines the two files up row for row; the value is
        # pseudorandom, so the order tells neither side anything new
        return perm[found[_byte_order(own2[found])]]
    return perm[found]


def _bucket_of(ids: pa.Array, k: int) -> np.ndarray:
    """Each id's bucket: the first four bytes of its hash to the curve, modulo ``k`` (a
    public function of the id, so a shared id lands in the same bucket at both parties)."""
    if k == 1:
        return np.zeros(len(ids), np.int32)
    out = np.empty(len(ids), np.int32)
    step = 1 << 20  # hashes of a chunk at a time: 32 MB, not 32 bytes per id at once
    for at in range(0, len(ids), step):
        h = engine.hash_to_point(ids.slice(at, step))
        out[at: at + len(h)] = (np.ascontiguousarray(h[:, :4]).view("<u4").ravel()
                                % np.uint32(k)).astype(np.int32)
    return out


def _bucket_rows(peer: str, msg: Any, b: int, m: int) -> int:
    rows = msg.get("rows") if isinstance(msg, dict) else None
    if not (isinstance(msg, dict) and msg.get("bucket") == b and isinstance(rows, int)
            and not isinstance(rows, bool) and 0 <= rows <= m):
        raise OperatorError(f"party {peer} sent a malformed announcement of bucket {b}")
    return rows


# -- checkpoints: a job interrupted resumes at a bucket ----------------------------------------

def _state_digest(p: Params, role: str, fingerprint: str) -> str:
    body = {"reveal": p.reveal, "join": {k: list(v) for k, v in (p.join or {}).items()},
            "role": role, "data": fingerprint, "v": 1}
    return hashlib.sha256(repr(sorted(body.items())).encode()).hexdigest()


def _checkpoint(ctx: PartyContext, p: Params, k: int, n: int, m: int, done: int,
                hits: list[np.ndarray]) -> None:
    """After each bucket: how many are done and (a learner's) matching rows per bucket, each
    bucket's in a file of its own, the index written last (a crash between leaves the
    previous index, which names only complete files)."""
    if ctx.output_dir is None:
        return
    d = Path(ctx.output_dir) / "psi-buckets"
    d.mkdir(parents=True, exist_ok=True)
    if hits:
        np.save(d / f"{done - 1}.npy", hits[done - 1])
    doc = {"digest": _state_digest(p, ctx.role, getattr(ctx.dataset, "fingerprint", "")),
           "buckets": k, "own_rows": n, "peer_rows": m, "done": done,
           "learner": bool(hits)}
    tmp = d / f".{CHECKPOINT}.part"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, Path(ctx.output_dir) / CHECKPOINT)


def _clear_checkpoint(ctx: PartyContext) -> None:
    """The result is complete: the per-bucket state goes (a resumed job reads its own)."""
    if ctx.output_dir is None:
        return
    import shutil

    shutil.rmtree(Path(ctx.output_dir) / "psi-buckets", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (Path(ctx.output_dir) / CHECKPOINT).unlink()


def _resume_state(ctx: PartyContext, p: Params, n: int) -> dict[str, Any]:
    """This party's checkpoint of the job it resumes, checked against this run."""
    d = ctx.other_job_dir(str(p.resume))
    if d is None:
        raise OperatorError("psi: this party keeps no checkpoints to resume from")
    try:
        doc = json.loads((d / CHECKPOINT).read_text())
        done, k = int(doc["done"]), int(doc["buckets"])
    except FileNotFoundError:
        raise OperatorError(f"psi: party {ctx.node_id} has no checkpoint of job {p.resume} "
                            "(it finished, or never started)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OperatorError(f"psi: party {ctx.node_id}'s checkpoint of job {p.resume} is "
                            f"damaged ({exc})") from None
    if doc.get("digest") != _state_digest(p, ctx.role,
                                          getattr(ctx.dataset, "fingerprint", "")):
        raise OperatorError(f"psi: party {ctx.node_id} ran job {p.resume} with other "
                            "parameters or another data set: it cannot be resumed")
    if doc.get("own_rows") != n:
        raise OperatorError(f"psi: party {ctx.node_id}'s data set changed since job {p.resume}")
    hits = []
    if doc.get("learner"):
        try:
            hits = [np.load(d / "psi-buckets" / f"{b}.npy") for b in range(done)]
        except (OSError, ValueError) as exc:
            raise OperatorError(f"psi: party {ctx.node_id}'s checkpoint of job {p.resume} "
                                f"is incomplete ({exc})") from None
    return {"done": done, "buckets": k, "peer_rows": doc.get("peer_rows"), "hits": hits}


def _peer_session(ctx: PartyContext) -> tuple[str, ByteSession]:
    if len(ctx.parties) != 2 or len(ctx.sessions) != 1:
        raise OperatorError(f"psi (pec) runs between exactly two parties; this job has "
                            f"{len(ctx.parties)}")
    if sorted(ctx.parties.values()) != ["guest", "host"]:
        raise OperatorError("psi needs one guest and one host, not "
                            f"{', '.join(sorted(ctx.parties.values()))}")
    (peer, session), = ctx.sessions.items()
    if not hasattr(session, "send_bytes"):
        raise OperatorError("this node's job session cannot carry byte messages (send_bytes)")
    return peer, session  # type: ignore[return-value]


def _read_ids(ctx: PartyContext) -> tuple[str, pa.Array]:
    ds = ctx.dataset
    if ds is None:
        raise OperatorError("psi needs a data set on each party")
    column = getattr(ds, "id_column", None)
    if not column:
        raise OperatorError("psi needs the data set's id column")
    chunks = [b.column(0) for b in ds.batches([column]) if b.num_rows]
    if not chunks:
        return column, pa.array([], pa.string())
    ids = pa.chunked_array(chunks).combine_chunks()
    if ids.null_count:
        raise OperatorError(f"the id column {column!r} has {ids.null_count} null id(s)")
    return column, ids


def _check_hello(peer: str, msg: Any, reveal: str, peer_role: str, join: bool = False) -> int:
    if not isinstance(msg, dict):
        raise OperatorError(f"party {peer} did not open with a psi handshake")
    if bool(msg.get("join")) != join:
        # one side aligned by the encrypted values and the other in file order would give
        # files that look aligned and are not
        raise OperatorError(f"party {peer} runs {'with' if msg.get('join') else 'without'} "
                            f"join, this node {'with' if join else 'without'}")
    for key, want in HELLO.items():
        if msg.get(key) != want:
            raise OperatorError(f"party {peer} runs {key}={msg.get(key)!r}, this node {want!r}")
    if msg.get("reveal") != reveal:
        raise OperatorError(f"party {peer} runs reveal={msg.get('reveal')!r}, this node "
                            f"reveal={reveal!r}")
    return _role_and_rows(peer, msg, peer_role)


def _role_and_rows(peer: str, msg: dict[str, Any], peer_role: str) -> int:
    """A handshake's role (the one the job gave the peer) and row count, checked."""
    if msg.get("role") != peer_role:
        raise OperatorError(f"party {peer} claims role {msg.get('role')!r}; the job made it "
                            f"the {peer_role}")
    rows = msg.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise OperatorError(f"party {peer} announced an impossible row count {rows!r}")
    return rows


def _size_from(peer: str, msg: Any, n: int, m: int) -> int:
    size = msg.get("intersection_size") if isinstance(msg, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= min(n, m):
        raise OperatorError(f"party {peer} told an impossible intersection size {size!r}")
    return size


class _Sender(threading.Thread):
    """Encrypts and sends stage 1 batch by batch, then whatever stage-2 batches the receiving
    side queues.

    Sending on its own thread keeps the receiving loop from ever blocking on a full window:
    each side always drains what the other sends, so two sides sending at once cannot
    deadlock on the channel's backpressure. Encrypting per batch here lets the peer start on
    the first batch while later ones are still being computed (the C calls release the GIL).
    """

    def __init__(self, session: ByteSession, ids: pa.Array, scalar: bytes, sizes: list[int],
                 out: queue.Queue[bytes | None]) -> None:
        super().__init__(name="psi-sender", daemon=True)
        self.session, self.ids, self.scalar, self.sizes, self.out = (
            session, ids, scalar, sizes, out)
        self.error: BaseException | None = None
        self._stop_now = threading.Event()

    def run(self) -> None:
        try:
            at = 0
            for i, c in enumerate(self.sizes):
                if self._stop_now.is_set():
                    return
                points = engine.mul(engine.hash_to_point(self.ids.slice(at, c)), self.scalar)
                self.session.send_bytes(encode_batch(1, i, points, i == len(self.sizes) - 1))
                at += c
            while not self._stop_now.is_set():
                item = self.out.get()
                if item is None:
                    return
                self.session.send_bytes(item)
        except BaseException as exc:  # handed to the receiving thread, which raises it
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        if self.is_alive():
            raise OperatorError(f"psi could not send its batches within {timeout} s")
        self.check()

    def stop(self) -> None:
        self._stop_now.set()
        self.out.put(None)


def _exchange(ctx: PartyContext, peer: str, session: ByteSession, sender: _Sender,
              out: queue.Queue[bytes | None], scalar: bytes, n: int, m: int, sizes: list[int],
              me_learns: bool, peer_learns: bool, shuffle_back: bool,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Receives the peer's stage 1 (answering it) and, for a learner, its stage 2.

    Returns (the peer's ids doubly encrypted and truncated, this node's own likewise in the
    order it sent them); empty arrays for what this side does not learn.
    """
    theirs: list[np.ndarray] = []
    own: list[np.ndarray] = []
    held: list[np.ndarray] = []  # cardinality: the answers, shuffled as a whole before sending
    held_sizes: list[int] = []
    got1 = got2 = 0  # items received per stage
    next1 = next2 = 0  # batch index expected per stage
    done1, done2 = False, not me_learns
    while not (done1 and done2):
        stage, index, last, values = _next_batch(ctx, peer, session, sender)
        if stage == 1:
            if done1:
                raise OperatorError(f"party {peer} sent stage-1 batch {index} after its last")
            if index != next1:
                raise OperatorError(f"party {peer} sent stage-1 batch {index} where batch "
                                    f"{next1} was due")
            count = len(values) // engine.POINT_BYTES
            if count == 0 and not (m == 0 and last):
                # only an empty set sends an empty batch (its one and last): anything else
                # could keep this side waiting for ever
                raise OperatorError(f"party {peer} sent an empty stage-1 batch {index}")
            if count > MAX_BATCH or got1 + count > m:
                raise OperatorError(f"party {peer} sent more than the {m} points it announced "
                                    f"(batch {index})")
            if last and got1 + count != m:
                raise OperatorError(f"party {peer} announced {m} points but sent "
                                    f"{got1 + count} before its last batch")
            try:
                enc = engine.truncate(engine.mul(values, scalar))
            except engine.LowOrderPoint as exc:
                raise OperatorError(
                    f"party {peer} sent a low-order point (stage-1 batch {index}, item "
                    f"{exc.index}): it is not the hash of an id on Curve25519's main "
                    "subgroup or its twist's; the peer is faulty or dishonest") from None
            if me_learns:
                theirs.append(enc)
            if peer_learns and shuffle_back:
                held.append(enc)
                held_sizes.append(count)
            elif peer_learns:
                out.put(encode_batch(2, index, enc, last))
            got1 += count
            next1 += 1
            done1 = last
            if last and peer_learns:
                if shuffle_back:
                    _send_shuffled(out, held, held_sizes, rng)
                out.put(None)
        else:
            if not me_learns or done2:
                raise OperatorError(f"party {peer} sent an unexpected stage-2 batch {index}")
            if index != next2 or index >= len(sizes):
                raise OperatorError(f"party {peer} sent stage-2 batch {index} where batch "
                                    f"{next2} was due")
            count = len(values) // engine.TRUNCATED_BYTES
            if count != sizes[index]:
                raise OperatorError(f"party {peer} answered stage-1 batch {index} of "
                                    f"{sizes[index]} points with {count} values")
            if last != (index == len(sizes) - 1):
                raise OperatorError(f"party {peer} marked stage-2 batch {index} "
                                    f"{'last' if last else 'not last'} of {len(sizes)}")
            own.append(np.frombuffer(values, np.uint8).reshape(count, engine.TRUNCATED_BYTES))
            got2 += count
            next2 += 1
            done2 = last
        ctx.progress(20 + 60 * (got1 + got2) / max(1, m + (n if me_learns else 0)),
                     f"{got1} of {m} peer points, {got2} of {n if me_learns else 0} answers")
    empty = np.empty((0, engine.TRUNCATED_BYTES), np.uint8)
    return (np.concatenate(theirs) if theirs else empty, np.concatenate(own) if own else empty)


def _send_shuffled(out: queue.Queue[bytes | None], held: list[np.ndarray], sizes: list[int],
                   rng: np.random.Generator) -> None:
    """reveal=cardinality: the answers in an order the learner cannot map to its rows, so it
    can count the matches but not tell which rows they are."""
    allv = np.concatenate(held) if held else np.empty((0, engine.TRUNCATED_BYTES), np.uint8)
    allv = allv[rng.permutation(len(allv))]
    at = 0
    for i, c in enumerate(sizes):
        out.put(encode_batch(2, i, allv[at:at + c], i == len(sizes) - 1))
        at += c


def _next_batch(ctx: PartyContext, peer: str, session: ByteSession,
                sender: _Sender) -> tuple[int, int, bool, memoryview]:
    msg = _recv(ctx, peer, session, sender)
    if not isinstance(msg, bytes | bytearray):
        raise OperatorError(f"party {peer} sent a control message where a batch was due")
    if len(msg) < HEADER.size:
        raise OperatorError(f"party {peer} sent a batch of {len(msg)} bytes, shorter than its "
                            "header")
    magic, stage, last, _, index, count = HEADER.unpack_from(msg)
    if magic != MAGIC or stage not in WIDTH or last not in (0, 1):
        raise OperatorError(f"party {peer} sent a malformed batch header")
    payload = memoryview(msg)[HEADER.size:]
    if len(payload) != count * WIDTH[stage]:
        raise OperatorError(f"party {peer}'s stage-{stage} batch {index} says {count} values "
                            f"but carries {len(payload)} bytes, not {count * WIDTH[stage]}")
    return stage, index, bool(last), payload


def _recv(ctx: PartyContext, peer: str, session: ByteSession, sender: _Sender) -> Any:
    deadline = time.monotonic() + ctx.timeout
    while True:
        sender.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise OperatorError(f"party {peer} sent nothing within {ctx.timeout} s")
        try:
            return session.recv(timeout=min(_POLL, left))
        except TimeoutError:  # the channel's RecvTimeout is one
            continue


def _byte_order(values: np.ndarray) -> np.ndarray:
    """The order that sorts (N, 12) uint8 rows as byte strings (big-endian words)."""
    if len(values) == 0:
        return np.empty(0, np.int64)
    v = np.ascontiguousarray(values)
    hi = v[:, :8].copy().view(">u8").ravel()
    lo = v[:, 8:].copy().view(">u4").ravel()
    return np.lexsort((lo, hi))


class _JoinRows:
    """The data set's id and payload columns, read batch by batch, for the join output."""

    def __init__(self, batches: Iterator[Any], columns: list[str], source: Any) -> None:
        # source: the reader's own iterator, closed at the end (it may hold the file open)
        self._batches, self.columns, self._source = batches, columns, source

    def take(self, ids: pa.Array, rows: np.ndarray) -> pa.Table:
        """Rows ``rows`` (file positions, in the wanted order), keeping in memory only those.

        The ids read now must be the ids read before the exchange: a file changed in between
        would put another row's payload beside an id.
        """
        wanted = np.sort(rows)
        pieces: list[pa.RecordBatch] = []
        at = 0
        for batch in self._batches:
            lo, hi = np.searchsorted(wanted, [at, at + batch.num_rows])
            pieces.append(batch.take(pa.array(wanted[lo:hi] - at, pa.int64())))
            at += batch.num_rows
        if at != len(ids):
            raise OperatorError(f"the data set gave {at} rows on the second read, {len(ids)} on "
                                "the first: it changed while psi ran")
        if pieces:
            table = pa.Table.from_batches(pieces).combine_chunks()
        else:  # a set with no rows: no batch, so no schema to copy; ids only
            table = pa.table({c: pa.array([], pa.string()) for c in self.columns})
        got = table.column(0)
        if not got.equals(pa.chunked_array([ids.take(pa.array(wanted, pa.int64()))],
                                           got.type)):
            raise OperatorError("the data set's ids differ between its two reads: it changed "
                                "while psi ran")
        # from file order to the wanted order
        return table.take(pa.array(np.searchsorted(wanted, rows), pa.int64()))

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def _open_join(ctx: PartyContext, id_column: str, payload: tuple[str, ...]) -> _JoinRows:
    assert ctx.dataset is not None  # _read_ids refused a party without one
    columns = [id_column, *payload]
    it = iter(ctx.dataset.batches(columns))
    try:
        first = next(it, None)
    except Exception as exc:  # the registry's DatasetError: it names the column(s)
        raise OperatorError(f"psi: join columns {', '.join(payload)}: {exc}") from None
    if first is not None and first.schema.names != columns:
        missing = [c for c in columns if c not in first.schema.names]
        raise OperatorError(f"psi: the data set has no column {', '.join(map(repr, missing))}"
                            " named in join")
    rest = itertools.chain([] if first is None else [first], it)
    return _JoinRows(rest, columns, it)


def _write_rows(out_dir: Path, ctx: PartyContext, table: pa.Table) -> dict[str, Any]:
    """This party's rows in the intersection (its ids, and in join mode its payload columns)
    as a new CSV file.

    Written under a temporary name and renamed, so a failed job leaves no partial output.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"psi-{ctx.job_id}-{ctx.node_id}")
    path = out_dir / f"{stem}.csv"
    tmp = out_dir / f".{stem}.csv.part"
    try:
        pacsv.write_csv(table, tmp)
        digest = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return {"rows_file": str(path), "rows_sha256": digest.hexdigest()}


