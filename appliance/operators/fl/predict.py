"""Prediction with a stored horizontal model (``model.json``), on this node only: the model is
at every party, so a party predicts on its own rows without asking anyone (docs/fl.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from appliance.operators.base import OperatorError
from appliance.operators.fl import homo, models

MODEL_KEYS = {"algorithm", "features", "classes", "mean", "scale", "weights"}


def check_model(doc: Any) -> dict[str, Any]:
    """A stored model whose parts fit together, or OperatorError (a damaged file)."""
    bad = OperatorError("predict: the model file is not one this node's training wrote")
    if not (isinstance(doc, dict) and set(doc) >= MODEL_KEYS
            and doc["algorithm"] in homo.ALGORITHMS and isinstance(doc["features"], list)
            and all(isinstance(doc[k], list) for k in ("weights", "mean", "scale"))):
        raise bad
    d = len(doc["features"])
    classes = doc["classes"] if isinstance(doc["classes"], list) else []
    if doc["algorithm"] == "homo_kmeans":
        clusters = doc.get("clusters")
        size = clusters * d if isinstance(clusters, int) else -1
    elif doc["algorithm"] == "homo_lr":
        size = (d + 1) * len(classes)
    else:
        size = len(doc["weights"])  # the MLP checks its layers when the weights are set
    if (len(doc["mean"]) != d or len(doc["scale"]) != d or len(doc["weights"]) != size
            or (doc["algorithm"] != "homo_kmeans" and len(classes) < 2)):
        raise bad
    return doc


def features_of(doc: dict[str, Any], table: pa.Table) -> np.ndarray:
    """The model's feature columns of ``table`` as float64, or OperatorError naming what is
    missing or not numeric (never a silent zero)."""
    missing = [f for f in doc["features"] if f not in table.column_names]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise OperatorError(f"predict: the rows lack {len(missing)} of the model's "
                            f"{len(doc['features'])} feature columns: "
                            f"{', '.join(missing[:10])}{more}")
    cols = []
    for f in doc["features"]:
        arr = table.column(f)
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            raise OperatorError(f"predict: column {f!r} is {arr.type}, not numeric")
        if arr.null_count:
            raise OperatorError(f"predict: column {f!r} has {arr.null_count} empty values")
        cols.append(pc.cast(arr, pa.float64()).to_numpy())
    x = np.column_stack(cols) if cols else np.zeros((table.num_rows, 0))
    if not np.isfinite(x).all():
        raise OperatorError("predict: a feature has NaN or infinite values")
    return x


def predict(doc: dict[str, Any], x: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """Each row's prediction (a class value, or a cluster index) and its score (the class's
    probability, or the squared distance to the cluster)."""
    w = np.asarray(doc["weights"], dtype=np.float64)
    if doc["algorithm"] == "homo_kmeans":
        centroids = w.reshape(int(doc["clusters"]), -1)
        d2 = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        nearest = d2.argmin(axis=1)
        return nearest.tolist(), d2[np.arange(len(x)), nearest]
    z = (x - np.asarray(doc["mean"])) / np.asarray(doc["scale"])
    classes = doc["classes"]
    params = {**homo.DEFAULTS, "hidden": doc.get("hidden") or "32"}
    model = models.make(doc["algorithm"], len(doc["features"]), len(classes), params)
    p = model.proba(w, z)
    best = p.argmax(axis=1)
    return [classes[i] for i in best], p[np.arange(len(x)), best]
