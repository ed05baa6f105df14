"""What every vertical (feature-split) protocol shares: this party's rows ordered by the key
column, checked to name the same people in the same order at every party, its numeric
features and (at the guest) the binary label; and the roles of a vertical job.

Alignment does not reveal the ids: each party sends SHA-256 of its key-ordered ids, which
must be equal everywhere (the data sets come aligned, e.g. from psi's ``join``; what the
digest tells a party that does not hold the same ids is only that they differ).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from appliance.operators.base import OperatorError, PartyContext, canonical
from appliance.operators.psi.ecdh_engine import id_bytes

#: every vertical protocol's Paillier keys
PAILLIER_BITS = 2048


@dataclass
class Rows:
    """This party's rows, ordered by key."""

    digest: str  # SHA-256 of the ordered keys (hex)
    ids: list[Any]
    features: dict[str, np.ndarray] = field(default_factory=dict)
    y: np.ndarray | None = None  # 0/1 at the guest
    classes: list[str] | None = None  # the label's [negative, positive] values

    @property
    def n(self) -> int:
        return len(self.ids)

    def matrix(self, names: list[str] | None = None) -> np.ndarray:
        names = list(self.features) if names is None else names
        if not names:
            return np.zeros((self.n, 0))
        return np.column_stack([self.features[f] for f in names])


@dataclass(frozen=True)
class Roles:
    guest: str
    hosts: list[str]
    arbiter: str | None

    def others(self, me: str) -> list[str]:
        return [p for p in [self.guest, *self.hosts, *([self.arbiter] if self.arbiter else [])]
                if p != me]


def roles_of(ctx: PartyContext, what: str) -> Roles:
    guests = [p for p, r in ctx.parties.items() if r == "guest"]
    arbiters = [p for p, r in ctx.parties.items() if r == "arbiter"]
    hosts = sorted(p for p, r in ctx.parties.items() if r == "host")
    if len(guests) != 1 or not hosts or len(arbiters) > 1:
        raise OperatorError(f"{what} needs one guest (the label holder, the initiator), one or "
                            "more hosts and at most one arbiter")
    return Roles(guests[0], hosts, arbiters[0] if arbiters else None)


def binary_label(col: pa.ChunkedArray, what: str) -> tuple[np.ndarray, list[str]]:
    """0/1 of a two-valued column (``1`` is positive where present, else the larger value)."""
    if col.null_count:
        raise OperatorError(f"{what}: the label has {col.null_count} empty values")
    values = [str(v) for v in col.to_pylist()]
    kinds = sorted(set(values))
    if len(kinds) != 2:
        raise OperatorError(f"{what}: the label must be binary; it has {len(kinds)} "
                            f"value{'s' if len(kinds) != 1 else ''}")
    positive = "1" if "1" in kinds else kinds[1]
    negative = kinds[0] if kinds[1] == positive else kinds[1]
    return np.array([v == positive for v in values], dtype=np.float64), [negative, positive]


def load(ctx: PartyContext, what: str, key: Any, label: str | None = None,
         features: list[str] | None = None) -> Rows:
    """This party's rows ordered by ``key``: numeric features (``features`` or every numeric
    column but the key and the label) and the label; OperatorError naming what is wrong."""
    if not isinstance(key, str) or not key:
        raise OperatorError(f"{what} needs key=ID_COLUMN (the column that aligns the rows)")
    if ctx.dataset is None:
        raise OperatorError(f"{what} needs a data set at party {ctx.node_id}")
    batches = list(ctx.dataset.batches())
    if not batches:
        raise OperatorError(f"{what}: party {ctx.node_id}'s data set has no rows")
    table = pa.Table.from_batches(batches)
    if key not in table.column_names:
        raise OperatorError(f"{what}: party {ctx.node_id} has no key column {key!r}")
    keys = id_bytes(table.column(key)).to_pylist()
    if len(set(keys)) != len(keys):
        raise OperatorError(f"{what}: party {ctx.node_id}'s key column {key!r} has duplicate "
                            "ids (a key names one row)")
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    table = table.take(pa.array(order))
    ordered = [keys[i] for i in order]
    digest = hashlib.sha256(b"".join(len(k).to_bytes(4, "little") + k for k in ordered))
    rows = Rows(digest.hexdigest(), table.column(key).to_pylist())
    if label is not None:
        if label not in table.column_names:
            raise OperatorError(f"{what}: the guest has no label column {label!r}")
        rows.y, rows.classes = binary_label(table.column(label), what)
    if features is not None:
        missing = [f for f in features if f not in table.column_names]
        if missing:
            raise OperatorError(f"{what}: party {ctx.node_id} lacks the feature column(s) "
                                f"{', '.join(missing[:10])}")
        names = features
    else:
        names = [f.name for f in table.schema if f.name not in (key, label)
                 and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    for name in names:
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise OperatorError(f"{what}: feature {name!r} at {ctx.node_id} is {col.type}, "
                                "not numeric")
        if col.null_count:
            raise OperatorError(f"{what}: feature {name!r} at {ctx.node_id} has "
                                f"{col.null_count} empty values")
        x = pc.cast(col, pa.float64()).to_numpy()
        if not np.isfinite(x).all():
            raise OperatorError(f"{what}: feature {name!r} at {ctx.node_id} has NaN or "
                                "infinite values")
        rows.features[name] = x
    return rows


def send(ctx: PartyContext, peer: str, msg: Any) -> None:
    """``msg`` to ``peer``; a party that is gone is this party's OperatorError naming it."""
    _deliver(ctx, peer, "send", msg)


def send_bytes(ctx: PartyContext, peer: str, blob: bytes) -> None:
    _deliver(ctx, peer, "send_bytes", blob)


def _deliver(ctx: PartyContext, peer: str, how: str, payload: Any) -> None:
    try:
        getattr(ctx.sessions[peer], how)(payload)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(f"party {peer} cannot be reached: {exc}") from exc


def store(ctx: PartyContext, name: str, doc: dict[str, Any]) -> str:
    """``doc`` as ``name`` in this party's output directory, whole or not at all (written
    under a temporary name and renamed); its SHA-256 (of the canonical JSON)."""
    if ctx.output_dir is not None:
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.output_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.rename(ctx.output_dir / name)
    return hashlib.sha256(canonical(doc)).hexdigest()


def recv(ctx: PartyContext, peer: str, tag: str) -> Any:
    """The next message from ``peer``: a dict tagged ``tag``, or bytes for ``bytes:WHAT``;
    a peer's error message (``{"t": tag, "error": ...}``) becomes this party's error."""
    try:
        msg = ctx.sessions[peer].recv(timeout=ctx.timeout)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(f"party {peer} did not send its {tag.removeprefix('bytes:')}: "
                            f"{exc}") from exc
    if tag.startswith("bytes:"):
        if isinstance(msg, dict) and msg.get("error"):
            raise OperatorError(str(msg["error"])[:500])
        if not isinstance(msg, bytes):
            raise OperatorError(f"party {peer} sent a malformed {tag[6:]}")
        return msg
    if not (isinstance(msg, dict) and msg.get("t") == tag):
        if isinstance(msg, dict) and msg.get("error"):
            raise OperatorError(str(msg["error"])[:500])
        raise OperatorError(f"party {peer} sent a malformed {tag}")
    if msg.get("error"):
        raise OperatorError(str(msg["error"])[:500])
    return msg


def recv_encrypted(ctx: PartyContext, peer: str, what: str, pk: Any, length: int) -> Any:
    """The next byte message from ``peer`` as an EncryptedArray of ``length`` values under
    ``pk``; OperatorError naming the peer for anything else."""
    from accel.paillier import EncryptedArray

    blob = recv(ctx, peer, f"bytes:{what}")
    try:
        ea = EncryptedArray.from_bytes(blob, pk)
    except ValueError as exc:
        raise OperatorError(f"party {peer} sent a malformed {what} ({exc})") from None
    if ea.shape != (length,):
        raise OperatorError(f"party {peer} sent {ea.shape} {what}, not ({length},)")
    return ea


def public_key(msg: dict[str, Any], peer: str) -> Any:
    """A peer's Paillier public key from its ``{"n": ...}`` message, of PAILLIER_BITS."""
    from accel import paillier

    try:
        pk = paillier.PublicKey(int(msg["n"]))
    except (KeyError, TypeError, ValueError):
        raise OperatorError(f"party {peer} sent a malformed public key") from None
    if pk.n.bit_length() != PAILLIER_BITS:
        raise OperatorError(f"party {peer} sent a {pk.n.bit_length()}-bit key, not "
                            f"{PAILLIER_BITS}")
    return pk


def floats(msg: dict[str, Any], length: int, peer: str) -> np.ndarray:
    """A peer's partial scores (``"z"``): ``length`` finite numbers, or OperatorError."""
    v = msg.get("z")
    if not (isinstance(v, list) and len(v) == length and all(
            isinstance(a, int | float) and not isinstance(a, bool) for a in v)):
        raise OperatorError(f"party {peer} sent malformed partial scores")
    out = np.array(v, dtype=np.float64)
    if not np.isfinite(out).all():
        raise OperatorError(f"party {peer} sent non-finite partial scores")
    return out


def check_alignment(ctx: PartyContext, roles: Roles, rows: Rows | None, what: str,
                    problem: str | None = None) -> None:
    """Every data holder sends its digest (or its problem) to the guest, which answers each
    with ``ok`` or the reason the job stops; the guest raises too. The arbiter holds no rows:
    it only hears the verdict."""
    tag = f"{what}/align"
    if ctx.node_id == roles.arbiter:
        recv(ctx, roles.guest, f"{what}/aligned")
        return
    if ctx.node_id != roles.guest:
        send(ctx, roles.guest, {"t": tag, "digest": rows.digest if rows else None,
                                        "problem": problem})
        recv(ctx, roles.guest, f"{what}/aligned")
        return
    problems = [problem] if problem else []
    differ = []
    for h in roles.hosts:
        msg = recv(ctx, h, tag)
        if msg.get("problem"):
            problems.append(str(msg["problem"])[:500])
        elif rows is not None and msg.get("digest") != rows.digest:
            differ.append(h)
    reason = "; ".join(problems) or (
        f"{what}: the parties' keys do not align ({', '.join(differ)} differ from the "
        "guest's): align the data sets first, e.g. with psi mode=join" if differ else "")
    for p in roles.others(ctx.node_id):
        send(ctx, p, {"t": f"{what}/aligned", **({"error": reason} if reason else {})})
    if reason:
        raise OperatorError(reason)


def resume(ctx: PartyContext, roles: Roles, prev: Any, digest: str, progress: str,
           what: str) -> dict[str, Any]:
    """With a previous job ``prev``: this party's checkpoint of it (``checkpoint.json`` in
    that job's output directory), once every data party has one of the same parameters
    (``digest``) at the same ``progress`` (the epoch, the trees); the guest checks and tells
    everyone, the arbiter included. Without ``prev``: {}. OperatorError naming the party
    otherwise."""
    if not prev:
        return {}
    if ctx.node_id == roles.arbiter:
        recv(ctx, roles.guest, f"{what}/resumed")
        return {}
    problem, state = None, {}
    d = ctx.other_job_dir(str(prev))
    if d is None:
        problem = f"party {ctx.node_id} keeps no checkpoints"
    else:
        path = d / "checkpoint.json"
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict) or not isinstance(state.get(progress), int):
                raise ValueError("no progress recorded")
            if state.get("digest") != digest:
                problem = (f"party {ctx.node_id}: job {prev} was trained with other "
                           "parameters or data layout")
        except FileNotFoundError:
            problem = f"party {ctx.node_id} has no checkpoint of job {prev}"
        except (OSError, ValueError) as exc:
            problem = f"party {ctx.node_id}'s checkpoint of job {prev} is damaged ({exc})"
    at = state.get(progress, -1) if not problem else -1
    if ctx.node_id != roles.guest:
        send(ctx, roles.guest, {"t": f"{what}/resume", "at": at, "problem": problem})
        try:
            recv(ctx, roles.guest, f"{what}/resumed")
        except OperatorError as exc:
            raise OperatorError(f"train: cannot resume: {exc}") from None
    else:
        problems = [problem] if problem else []
        for h in roles.hosts:
            msg = recv(ctx, h, f"{what}/resume")
            if msg.get("problem"):
                problems.append(str(msg["problem"])[:300])
            elif msg.get("at") != at and not problem:
                problems.append(f"party {h} finished {progress} {msg.get('at')} of job "
                                f"{prev}, the guest {at}")
        reason = "; ".join(problems)
        for p in roles.others(ctx.node_id):
            send(ctx, p, {"t": f"{what}/resumed", **({"error": reason} if reason
                                                             else {})})
        if reason:
            raise OperatorError(f"train: cannot resume: {reason}")
    if problem:
        raise OperatorError(f"train: cannot resume: {problem}")
    return state
