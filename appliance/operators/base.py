"""What every operator gets and describes: the party context and the component description.

The description follows the shape of a BFIA component description (name, provider, version,
roles, parameters, inputs, outputs), so a node can tell a peer or an outside scheduler what it
runs. Operators register themselves in `REGISTRY`; the daemon turns each into a job kind.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ROLES = ("guest", "host", "arbiter")


class OperatorError(Exception):
    """The protocol cannot go on: bad parameters, a peer's malformed or dishonest message.
    The message says which party and what was wrong; the job fails with it on every side."""


class Session(Protocol):
    """A framed, ordered, authenticated message stream to one other party of a job."""

    def send(self, obj: Any) -> None: ...

    def recv(self, timeout: float | None = None) -> Any: ...


class Dataset(Protocol):
    """A registered data set, read in batches; rows never leave the node."""

    fingerprint: str

    def batches(self, columns: list[str] | None = None) -> Iterator[Any]: ...


def job_dir(root: Path, job_id: str) -> Path:
    """A job's output directory under a node's output root (job ids are checked
    A-Z a-z 0-9 . _ : -, so replacing ':' leaves a plain directory name)."""
    return root / job_id.replace(":", "_")


@dataclass
class PartyContext:
    job_id: str
    role: str
    node_id: str
    parties: dict[str, str]  # node id -> role, this node included
    sessions: dict[str, Session]  # other party's node id -> its session for this job
    params: dict[str, Any]
    dataset: Dataset | None = None
    progress: Callable[[float, str], None] = lambda pct, msg="": None
    sign: Callable[[bytes], bytes] | None = None
    peer_keys: dict[str, str] = field(default_factory=dict)  # node id -> node public key PEM
    timeout: float = 60.0
    # where this party writes row-level outputs (an intersection's ids): chosen by the node,
    # never by a job parameter, so a peer cannot steer where this node writes
    output_dir: Path | None = None
    # this node's state directory (caches an operator keeps across jobs, e.g. an unbalanced
    # PSI server's table) and its sealed-secret store (store_secret/load_secret, the HSM KEK)
    state_dir: Path | None = None
    secrets: Any = None

    def other_job_dir(self, job_id: str) -> Path | None:
        """Another job's output directory at this node (a checkpoint to resume from, a
        model to predict with), beside this job's own; None where nothing is kept."""
        return job_dir(self.output_dir.parent, job_id) if self.output_dir is not None else None


@dataclass(frozen=True)
class Operator:
    name: str
    provider: str
    version: str
    roles: tuple[str, ...]
    description: str
    params: Mapping[str, str]  # name -> what it means
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[PartyContext], dict[str, Any]]
    # grade policy: the operator family, and what a run with these params lets leave this
    # node (the output parameters the policy table judges, e.g. psi's reveal)
    family: str = "count"
    stated: Callable[[str, dict[str, Any]], dict[str, str]] = lambda role, params: {}
    # whether the daemon makes it a job kind of its own name; False where a kind of that
    # name wraps it (predict: a horizontal model predicts locally, a vertical one jointly)
    kind: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "componentName": self.name, "provider": self.provider, "version": self.version,
            "description": self.description, "roleList": list(self.roles),
            "inputParam": [{"name": k, "description": v} for k, v in self.params.items()],
            "inputData": list(self.inputs), "outputData": list(self.outputs),
        }


REGISTRY: dict[str, Operator] = {}


def register(op: Operator) -> Operator:
    if op.name in REGISTRY:
        raise ValueError(f"operator {op.name!r} is registered twice")
    REGISTRY[op.name] = op
    return op


def local_contexts(names: list[str], params: Mapping[str, Any], datasets: Mapping[str, Any], *,
                   job_id: str = "local", timeout: float = 60.0,
                   output_root: Path | None = None,
                   roles: Mapping[str, str] | None = None) -> list[PartyContext]:
    """The parties of one job in this process (tests and the benchmarks): the first name is
    the guest, the others hosts (unless ``roles`` says otherwise, e.g. an arbiter), an
    in-memory session between every pair (the real session code), each with its own copy of
    ``params`` and, under ``output_root``, a directory."""
    from appliance.federation.channel import memory_pair

    sessions: dict[str, dict[str, Any]] = {n: {} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sessions[a][b], sessions[b][a] = memory_pair(job_id, "job", names=(a, b))
    roles = dict(roles or {n: ("guest" if i == 0 else "host") for i, n in enumerate(names)})
    return [PartyContext(job_id=job_id, role=roles[n], node_id=n, parties=dict(roles),
                         sessions=sessions[n], params=dict(params), dataset=datasets.get(n),
                         timeout=timeout,
                         output_dir=output_root / n if output_root is not None else None)
            for n in names]


def run_parties(run: Callable[[PartyContext], dict[str, Any]], ctxs: list[PartyContext],
                timeout: float | None = None) -> dict[str, Any]:
    """Every party of a protocol in this process, one thread each (tests and the benchmarks;
    real jobs run one party per daemon): node id -> its outputs, or the exception it raised."""
    results: dict[str, Any] = {}

    def one(ctx: PartyContext) -> None:
        try:
            results[ctx.node_id] = run(ctx)
        except Exception as exc:  # the caller looks at each party's outcome
            results[ctx.node_id] = exc

    threads = [threading.Thread(target=one, args=(c,), name=f"party-{c.node_id}")
               for c in ctxs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def output_hash(outputs: Mapping[str, Any]) -> str:
    """What the ledger records of a job's outputs: SHA-256 of their canonical JSON."""
    return hashlib.sha256(canonical(dict(outputs))).hexdigest()
