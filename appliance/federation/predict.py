"""`predict`: a stored horizontal model applied to one of this node's data sets, locally; the
same for rows sent to the API (online prediction); and, when peers are named, joint inference
with a vertical model (the ``predict`` operator: each party scores its own features). The
models this node holds: list, show, delete."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from appliance.federation import kinds
from appliance.jobs.registry import job_kind
from appliance.jobs.runner import JobContext, JobError
from appliance.operators.base import REGISTRY, OperatorError, job_dir
from appliance.operators.fl.predict import check_model, features_of, predict
from appliance.trust import audit

# a job id as the federation writes them: no "." or ".." that could name another directory
MODEL_ID = re.compile(r"(homo_lr|homo_nn|homo_kmeans|hetero_lr|hetero_secureboost)-"
                      r"([A-Za-z0-9][A-Za-z0-9_:-]{0,127})")
VERTICAL = ("hetero_lr", "hetero_secureboost")
MAX_ONLINE_ROWS = 10_000


def model_path(output_root: Path, model: Any) -> Path:
    if not isinstance(model, str) or not MODEL_ID.fullmatch(model):
        raise JobError(f"model must be a model id such as homo_lr-JOB (got {model!r})")
    return job_dir(output_root, MODEL_ID.fullmatch(model).group(2)) / "model.json"


def _read(output_root: Path, model: str) -> Any:
    """The model file's JSON; 404 when this node holds none, 500 when it is corrupt."""
    try:
        return json.loads(model_path(output_root, model).read_text())
    except FileNotFoundError:
        raise JobError(f"no model {model} on this node", 404) from None
    except ValueError as exc:
        raise JobError(f"model {model}'s file is corrupt: {exc}", 500) from None


def load_model(output_root: Path, model: str) -> dict[str, Any]:
    """A horizontal model, whole at this node."""
    if model.split("-", 1)[0] in VERTICAL:
        raise JobError(f"{model} is a vertical model: each party holds a part; predict with "
                       "it jointly (jobs submit predict --peer P --param model=... "
                       "--param peer_dataset=..., or POST /v1/models/MODEL/predict at the "
                       "guest)")
    doc = _read(output_root, model)
    try:
        doc = check_model(doc)
    except OperatorError as exc:
        raise JobError(str(exc), 500) from None
    if model.split("-", 1)[0] != doc["algorithm"]:
        raise JobError(f"model {model} is a {doc['algorithm']} model", 404)
    return doc


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    vertical = doc["algorithm"] in VERTICAL
    return {"model": f"{doc['algorithm']}-{doc['job']}", "algorithm": doc["algorithm"],
            "kind": "vertical" if vertical else "horizontal",
            "role": doc.get("role") if vertical else None,
            "features": len(doc["features"]), "classes": doc.get("classes"),
            "parties": list(doc.get("parties") or []),
            "secure_aggregation": doc.get("secure_aggregation")}


def list_models(output_root: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(output_root.glob("*/model.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(doc, dict) and "algorithm" in doc and "job" in doc
                and isinstance(doc.get("features"), list)):
            out.append(_summary(doc))
    return out


def show_model(output_root: Path, model: str) -> dict[str, Any]:
    """This node's model (or its part of a vertical one): the summary, the features with
    their weights' magnitudes where it is linear, and its final metrics."""
    doc = _read(output_root, model)
    if not (isinstance(doc, dict) and f"{doc.get('algorithm')}-{doc.get('job')}" == model
            and isinstance(doc.get("features"), list)):
        raise JobError(f"model {model}'s file is not one this node's training wrote", 500)
    out = _summary(doc) | {"feature_names": doc["features"], "final": doc.get("final")}
    if doc["algorithm"] == "hetero_lr" and isinstance(doc.get("weights"), list):
        out["importance"] = {f: abs(float(w)) for f, w in zip(doc["features"], doc["weights"],
                                                               strict=False)}
    elif doc["algorithm"] == "hetero_secureboost":
        # splits per feature of this node (a guest's own splits; a host's records)
        used: dict[str, float] = {}
        splits = (doc.get("records") or {}).values() if doc.get("role") == "host" else [
            n for t in doc.get("trees") or [] for n in t.get("nodes", {}).values()
            if "feature" in n]
        for s in splits:
            used[s["feature"]] = used.get(s["feature"], 0) + 1
        out["importance"] = used
    return out


def delete_model(output_root: Path, model: str, actor: str) -> dict[str, Any]:
    """Remove this node's model file (a vertical model's other parts stay with their
    parties: each administrator deletes its own)."""
    path = model_path(output_root, model)
    if not path.exists():
        raise JobError(f"no model {model} on this node", 404)
    path.unlink()
    for extra in ("checkpoint.json",):
        (path.parent / extra).unlink(missing_ok=True)
    audit.record(actor, "model.delete", f"model:{model}", {})
    return {"model": model, "deleted": True}


def _joint(params: dict[str, Any]) -> bool:
    return "peers" in params or "federation" in params


def validate_predict(params: dict[str, Any]) -> dict[str, Any]:
    if _joint(params):
        op = REGISTRY["predict"]
        return kinds.validate(params, frozenset(op.params) - {"dataset"})
    unknown = set(params) - {"model", "dataset"}
    if unknown:
        raise JobError(f"unknown param(s) {', '.join(sorted(unknown))}; known: model, dataset")
    model, dataset = params.get("model"), params.get("dataset")
    model_path(Path("."), model)
    if not isinstance(dataset, str) or not dataset:
        raise JobError("name the data set to predict on: --param dataset=NAME")
    return {"model": model, "dataset": dataset}


@job_kind("predict", validate=validate_predict,
          description="apply a stored federated model to one of this node's data sets: "
                      "locally (a horizontal model), or with --peer jointly (a vertical one)")
def run_predict(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    if _joint(params):
        return kinds.runner_for(REGISTRY["predict"])(ctx, params)
    mp = getattr(ctx.runner, "multiparty", None)
    if mp is None:
        raise JobError("this node's federation is not running: models live with it")
    doc = load_model(mp.output_root, params["model"])
    ds = mp.datasets.show(params["dataset"])
    table = mp.datasets.open(params["dataset"]).read_all()
    try:
        x = features_of(doc, table)
    except OperatorError as exc:
        raise JobError(f"data set {params['dataset']}: {exc}") from None
    ctx.progress(50, f"predicting {table.num_rows} rows")
    labels, scores = predict(doc, x)
    out_dir = job_dir(mp.output_root, f"predict-{ctx.job_id}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = table.column(ds.id_column).to_pylist()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([ds.id_column, "prediction", "score"])
    for i, label, score in zip(ids, labels, scores.tolist(), strict=True):
        w.writerow([i, label, f"{score:.6g}"])
    data = buf.getvalue().encode()
    tmp = out_dir / "predictions.csv.tmp"
    tmp.write_bytes(data)
    tmp.rename(out_dir / "predictions.csv")
    counts: dict[str, int] = {}
    for label in labels:
        counts[str(label)] = counts.get(str(label), 0) + 1
    audit.record("system", "model.predict", f"model:{params['model']}",
                 {"job": ctx.job_id, "dataset": params["dataset"],
                  "fingerprint": ds.fingerprint, "rows": len(labels)})
    # under "outputs", as a multi-party job's, so that `jobs result --out` finds the rows
    return {"outputs": {"model": params["model"], "dataset": params["dataset"],
                        "rows": len(labels), "counts": counts,
                        "rows_file": str(out_dir / "predictions.csv"),
                        "rows_sha256": hashlib.sha256(data).hexdigest()}}


def predict_online(output_root: Path, model: str, rows: Any) -> dict[str, Any]:
    """Predictions for rows sent as JSON objects ({feature: number, ...})."""
    doc = load_model(output_root, model)
    if not isinstance(rows, list) or not rows or len(rows) > MAX_ONLINE_ROWS:
        raise JobError(f"rows is a list of 1..{MAX_ONLINE_ROWS} objects of feature values")
    if not all(isinstance(r, dict) for r in rows):
        raise JobError("each row is an object of feature values")
    try:
        table = pa.Table.from_pylist(rows)
        x = features_of(doc, table)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise JobError(f"rows do not form a table: {exc}") from None
    except OperatorError as exc:
        raise JobError(str(exc)) from None
    labels, scores = predict(doc, x)
    return {"model": model, "predictions": [
        {"prediction": label, "score": float(s)} for label, s in zip(labels, scores.tolist(),
                                                                    strict=True)]}
