"""Every registered operator is a job kind of the node.

Submitted locally (`jobs submit count --peer bank-b --param dataset=mine
--param peer_datasets=bank-b=theirs`) the job initiates: it attests the peers and creates the
job at each. Created by a peer's `job.create` the job carries a `federation` block instead and
runs this node's side. Either way it needs the `mpc` capability and a running federation.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from appliance.federation.datasets import NAME_PATTERN
from appliance.federation.peers import NAME
from appliance.jobs.registry import register
from appliance.jobs.runner import JobContext, JobError, JobKind
from appliance.operators.base import REGISTRY, Operator

DATASET_NAME = re.compile(NAME_PATTERN)

# operator modules whose import registers them
OPERATOR_MODULES = ("appliance.operators.count", "appliance.operators.psi",
                    "appliance.operators.stats", "appliance.operators.fl")

_INITIATOR_KEYS = {"peers", "dataset", "peer_datasets", "params", "approval_timeout_s"}
MAX_APPROVAL_WAIT_S = 7 * 24 * 3600
_PARTY_KEYS = {"federation", "dataset", "params"}


def _name(value: Any, what: str, pattern: re.Pattern[str] = NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"{what} must be a name of a-z, 0-9, '-', '_' (got {value!r})")
    return value


def _dataset(value: Any, what: str = "dataset") -> str:
    return _name(value, what, DATASET_NAME)


def _peer_datasets(value: Any) -> dict[str, str]:
    """`P=DS,Q=DS` (the CLI's form) or {P: DS}."""
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("peer_datasets is PEER=DATASET[,PEER=DATASET...]")
        value = dict(pairs)
    if not isinstance(value, dict):
        raise ValueError("peer_datasets maps each peer to its data set")
    return {_name(k, "a peer"): _dataset(v, "a data set") for k, v in value.items()}


def validate(params: dict[str, Any], op_params: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check a job's params. `op_params`: the operator's own parameter names, which the CLI
    passes at the top level (`--param reveal=both`) and are moved into `params`."""
    inner = params.get("params", {})
    if not isinstance(inner, dict):
        raise ValueError("params must be an object of the operator's parameters")
    params = dict(params)
    for key in sorted(op_params & set(params)):
        if key in inner:
            raise ValueError(f"{key} is given twice (at the top and in params)")
        inner = {**inner, key: params.pop(key)}
    if "peer_dataset" in params:
        # one peer's data set, the common two-party form of peer_datasets
        one, peers = params.pop("peer_dataset"), params.get("peers")
        peers = peers.split(",") if isinstance(peers, str) else peers
        if "peer_datasets" in params or not isinstance(peers, list) or len(peers) != 1:
            raise ValueError("peer_dataset names the data set of the only peer; with several "
                             "peers use peer_datasets=P=DS,Q=DS")
        params["peer_datasets"] = {peers[0]: one}
    if "federation" in params:
        unknown = set(params) - _PARTY_KEYS
        if unknown:
            raise ValueError(f"unknown param(s) {', '.join(sorted(unknown))}")
        fed = params["federation"]
        if not (isinstance(fed, dict) and isinstance(fed.get("job_id"), str)
                and isinstance(fed.get("initiator"), str)
                and isinstance(fed.get("parties"), dict)):
            raise ValueError("federation must carry job_id, initiator and parties")
        # an arbiter's side has no data set (run_party checks the role)
        dataset = params.get("dataset")
        return {"federation": fed, "dataset": None if dataset is None else _dataset(dataset),
                "params": inner}
    unknown = set(params) - _INITIATOR_KEYS
    if unknown:
        raise ValueError(f"unknown param(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(_INITIATOR_KEYS | op_params | {'peer_dataset'}))}")
    peers = params.get("peers")
    if isinstance(peers, str):
        peers = [p for p in peers.split(",") if p]
    if not isinstance(peers, list) or not peers:
        raise ValueError("name at least one peer (--peer NAME)")
    peers = [_name(p, "a peer") for p in peers]
    if len(set(peers)) != len(peers):
        raise ValueError("a peer is named twice")
    datasets = _peer_datasets(params.get("peer_datasets", {}))
    arbiter = inner.get("arbiter")
    if arbiter is not None:
        # the arbiter of a vertical job holds keys, not data: it is a peer without a data set
        if arbiter not in peers:
            raise ValueError(f"arbiter {arbiter!r} must be one of the job's peers (--peer)")
        if arbiter in datasets:
            raise ValueError(f"the arbiter {arbiter} holds no data: give it no data set")
    missing = [p for p in peers if p not in datasets and p != arbiter]
    extra = [p for p in datasets if p not in peers]
    if missing or extra:
        raise ValueError("peer_datasets must name one data set for each peer and no other "
                         f"(missing: {', '.join(missing) or '-'}; not a peer of this job: "
                         f"{', '.join(extra) or '-'})")
    out = {"peers": peers, "dataset": _dataset(params.get("dataset")),
           "peer_datasets": datasets, "params": inner}
    if "approval_timeout_s" in params:
        wait = params["approval_timeout_s"]
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not (
                0 < wait <= MAX_APPROVAL_WAIT_S):
            raise ValueError(f"approval_timeout_s must be seconds in (0, {MAX_APPROVAL_WAIT_S}]")
        out["approval_timeout_s"] = wait
    return out


def runner_for(op: Operator) -> Any:
    def run(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        mp = getattr(ctx.runner, "multiparty", None)
        if mp is None:
            raise JobError("this node's federation is not running: it needs a provisioned "
                           "trust root (the interconnect key is sealed by the HSM)")
        if "federation" in params:
            return mp.run_party(ctx, op, params)
        return mp.run_initiator(ctx, op, params)
    return run


def _on_cancel(runner: Any, job_id: int, actor: str) -> None:
    mp = getattr(runner, "multiparty", None)
    if mp is not None:
        mp.cancelled_before_start(job_id, actor)


def register_operators() -> None:
    for module in OPERATOR_MODULES:
        importlib.import_module(module)
    for op in REGISTRY.values():
        if not op.kind:
            continue
        own = frozenset(op.params) - {"dataset"}
        register(JobKind(op.name, runner_for(op),
                         lambda params, own=own: validate(params, own), "mpc",
                         f"{op.description} (operator {op.provider}/{op.name} {op.version})",
                         on_cancel=_on_cancel))


register_operators()
