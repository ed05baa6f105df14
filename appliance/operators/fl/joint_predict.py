"""Joint inference with a vertical model (``hetero_lr``, ``hetero_secureboost``): every party
computes its part on its own rows and only partial results move (docs/fl.md).

1. Each data party loads its part of the model (trained by the same parties, in the same
   roles) and its rows ordered by the model's key; the parties check that the rows align.
2. Each host sends the guest, for every row: ``x_h . w_h`` (logistic regression), or the side
   of each of its tree splits (SecureBoost: left or right, not the threshold).
3. The guest adds its own part (routes the rows through the trees), and writes each row's id,
   probability and prediction on this node. If its data set holds the label, it also reports
   AUC, KS, log loss, accuracy, precision and recall at the threshold.

Who learns what (semi-honest): the guest learns the hosts' partial scores, or the sides of
their splits, for the rows (as in FATE's inference) and the predictions; a host learns how
many rows there were.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.operators.base import OperatorError, PartyContext, job_dir
from appliance.operators.fl import hetero_lr, metrics, secureboost, vertical

#: hetero_lr-<the federation job id>; no "." or "/" that could name another directory
MODEL_ID = re.compile(r"(hetero_lr|hetero_secureboost)-([A-Za-z0-9][A-Za-z0-9_:-]{0,127})")
PART_KEYS = {"algorithm", "role", "job", "key", "features", "parties"}


def model_file(models_root: Path, model: Any) -> Path:
    """Where this node keeps its part of ``model`` (the training job's output directory)."""
    m = MODEL_ID.fullmatch(model) if isinstance(model, str) else None
    if m is None:
        raise OperatorError(f"predict: model must be a vertical model id such as "
                            f"hetero_lr-JOB (got {model!r})")
    return job_dir(models_root, m.group(2)) / "model.json"


def check_part(doc: Any, model: str) -> dict[str, Any]:
    """A stored part whose pieces fit together, or OperatorError (a damaged file)."""
    bad = OperatorError(f"predict: this node's part of {model} is damaged")
    if not (isinstance(doc, dict) and set(doc) >= PART_KEYS
            and doc["algorithm"] in (hetero_lr.ALGORITHM, secureboost.ALGORITHM)
            and doc["role"] in ("guest", "host") and isinstance(doc["parties"], dict)
            and isinstance(doc["features"], list)):
        raise bad
    d = len(doc["features"])
    guest = doc["role"] == "guest"
    if guest and not isinstance(doc.get("classes"), list):
        raise bad
    if doc["algorithm"] == hetero_lr.ALGORITHM:
        if not (all(isinstance(doc.get(k), list) and len(doc[k]) == d
                    for k in ("mean", "scale", "weights"))
                and (not guest or isinstance(doc.get("intercept"), float))):
            raise bad
    elif guest:
        if not (isinstance(doc.get("trees"), list) and isinstance(doc.get("init"), float)
                and all(isinstance(t, dict) and isinstance(t.get("nodes"), dict)
                        for t in doc["trees"])):
            raise bad
    elif not (isinstance(doc.get("records"), dict) and all(
            isinstance(r, dict) and r.get("feature") in doc["features"]
            and isinstance(r.get("threshold"), float) for r in doc["records"].values())):
        raise bad
    return doc


def load_part(models_root: Path, model: str) -> dict[str, Any]:
    path = model_file(models_root, model)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise OperatorError(f"predict: this node holds no part of model {model}") from None
    except ValueError:
        raise OperatorError(f"predict: this node's part of {model} is damaged") from None
    return check_part(doc, model)


def partial_scores(doc: dict[str, Any], x: np.ndarray) -> np.ndarray:
    z = (x - np.asarray(doc["mean"])) / np.asarray(doc["scale"])
    return z @ np.asarray(doc["weights"]) + (doc.get("intercept") or 0.0)


def run(ctx: PartyContext) -> dict[str, Any]:
    started = time.perf_counter()
    model = ctx.params.get("model")
    roles = vertical.roles_of(ctx, "predict")
    if roles.arbiter is not None:
        raise OperatorError("predict: joint inference needs no arbiter (name the data "
                            "parties only)")
    guest = ctx.node_id == roles.guest
    try:
        threshold = float(ctx.params.get("threshold", 0.5))
    except (TypeError, ValueError):
        raise OperatorError("predict: threshold is a number in (0, 1)") from None
    if not 0 < threshold < 1:
        raise OperatorError("predict: threshold is a number in (0, 1)")
    label = ctx.params.get("label") if guest else None
    rows, doc, problem = None, None, None
    try:
        root = ctx.output_dir.parent if ctx.output_dir is not None else None
        if root is None:
            raise OperatorError("predict: this party keeps no models")
        doc = load_part(root, model)
        if doc["role"] != ctx.role:
            raise OperatorError(f"predict: party {ctx.node_id} was the {doc['role']} of "
                                f"{model}, not the {ctx.role}")
        trained = {n: r for n, r in doc["parties"].items() if r != "arbiter"}
        if trained != dict(ctx.parties):
            raise OperatorError(f"predict: {model} was trained by "
                                f"{', '.join(f'{n} ({r})' for n, r in sorted(trained.items()))}"
                                "; the same parties in the same roles predict with it")
        rows = vertical.load(ctx, "predict", doc["key"], label or None, doc["features"])
        if label and rows.classes != doc["classes"]:
            raise OperatorError(f"predict: label {label!r} holds {rows.classes}, the model "
                                f"was trained on {doc['classes']}")
    except OperatorError as exc:
        problem = f"party {ctx.node_id}: {exc}" if ctx.node_id not in str(exc) else str(exc)
    vertical.check_alignment(ctx, roles, rows, "predict", problem)
    assert rows is not None and doc is not None
    x = rows.matrix(doc["features"])
    if not guest:
        vertical.send(ctx, roles.guest, {"t": "predict/scores", **host_part(doc, x)})
        vertical.recv(ctx, roles.guest, "predict/done")
        return {"model": model, "rows": rows.n,
                "seconds": round(time.perf_counter() - started, 3)}
    p = combine(doc, x, {h: vertical.recv(ctx, h, "predict/scores") for h in roles.hosts})
    for h in roles.hosts:
        vertical.send(ctx, h, {"t": "predict/done"})
    classes = doc["classes"]
    hit = p >= threshold
    out: dict[str, Any] = {"model": model, "rows": rows.n, "threshold": threshold,
                           "counts": {str(classes[1]): int(hit.sum()),
                                      str(classes[0]): int((~hit).sum())}}
    if rows.y is not None:
        out["metrics"] = metrics.summary(rows.y, p, threshold)
    if ctx.output_dir is not None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([doc["key"], "score", "prediction"])
        for i, s, h in zip(rows.ids, p.tolist(), hit.tolist(), strict=True):
            w.writerow([i, f"{s:.9g}", classes[1] if h else classes[0]])
        data = buf.getvalue().encode()
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.output_dir / "predictions.csv.tmp"
        tmp.write_bytes(data)
        tmp.rename(ctx.output_dir / "predictions.csv")
        out |= {"rows_file": str(ctx.output_dir / "predictions.csv"),
                "rows_sha256": hashlib.sha256(data).hexdigest()}
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def host_part(doc: dict[str, Any], x: np.ndarray) -> dict[str, Any]:
    """What a host sends the guest for its rows ``x``: partial scores, or split sides."""
    if doc["algorithm"] == hetero_lr.ALGORITHM:
        return {"z": partial_scores(doc, x).tolist()}
    return {"left": {rec: secureboost.pack_bits(
        x[:, doc["features"].index(r["feature"])] < r["threshold"])
        for rec, r in doc["records"].items()}}


def host_sides(msg: Any, n: int, peer: str) -> dict[str, np.ndarray]:
    left = msg.get("left") if isinstance(msg, dict) else None
    if not isinstance(left, dict):
        raise OperatorError(f"party {peer} sent malformed split sides")
    return {str(rec): secureboost.bits_of(bits, n, peer) for rec, bits in left.items()}


def tree_scores(doc: dict[str, Any], x: np.ndarray,
                decisions: dict[str, np.ndarray]) -> np.ndarray:
    """The boosted trees' raw score of every row from the guest's own splits and the hosts'
    split sides (``decisions``: each host record's left mask over the rows)."""
    n = len(x)
    names = doc["features"]
    z = np.full(n, doc["init"])
    for tree in doc["trees"]:
        nodes = tree["nodes"]
        missing = [v["record"] for v in nodes.values()
                   if "record" in v and v["record"] not in decisions]
        if missing:
            raise OperatorError(f"predict: no party sent the sides of split(s) "
                                f"{', '.join(missing[:5])}: a host's part is incomplete")

        def own(k: str, rows: np.ndarray, nodes: dict[str, Any] = nodes) -> np.ndarray:
            node = nodes[k]
            return x[rows, names.index(node["feature"])] < node["threshold"]

        z = z + secureboost.route(tree, own, decisions, n)
    return z


def combine(doc: dict[str, Any], x: np.ndarray, parts: dict[str, Any]) -> np.ndarray:
    """The guest's probability of every row from its own features ``x`` and each host's
    message (``parts``: host -> what ``host_part`` sent)."""
    if doc["algorithm"] == hetero_lr.ALGORITHM:
        z = partial_scores(doc, x)
        for h, msg in parts.items():
            z = z + vertical.floats(msg, len(x), h)
    else:
        decisions: dict[str, np.ndarray] = {}
        for h, msg in parts.items():
            decisions |= host_sides(msg, len(x), h)
        z = tree_scores(doc, x, decisions)
    return metrics.sigmoid(z)
