"""Federated learning, provider ``pec``. Built: horizontal learning (FedAvg) of logistic
regression, a multi-layer perceptron and k-means among two or more parties, with secure
aggregation by pairwise masks or Paillier (``accel``); and, of vertical learning, the
information value of every feature across a vertical split (``iv``). Vertical training
(hetero_lr, hetero_secureboost) is refused by name: not built yet. docs/fl.md says who learns
what.
"""

from __future__ import annotations

from typing import Any

from appliance.operators.base import Operator, register
from appliance.operators.fl import iv
from appliance.operators.fl.homo import run


def stated_for(role: str | None, params: dict[str, Any]) -> dict[str, str]:
    """The grade policy's fl ``aggregation``: secure unless the job asks for none."""
    mode = params.get("secure_aggregation") or "mask"
    return {"aggregation": "plain" if mode == "none" else "secure"}


TRAIN = register(Operator(
    name="train", provider="pec", version="0.1", roles=("guest", "host"),
    description="federated training: horizontal FedAvg of logistic regression, an MLP or "
                "k-means, with secure aggregation (pairwise masks or Paillier)",
    params={
        "dataset": "this party's data set",
        "algorithm": "homo_lr, homo_nn or homo_kmeans (hetero_lr and hetero_secureboost are "
                     "not built yet)",
        "label": "the class column (lr, nn)",
        "features": "the feature columns, C1[,C2...] (default: every numeric column but the "
                    "label and the id column), the same at every party",
        "rounds": "federated rounds (default 10)",
        "local_epochs": "passes over the local rows per round (default 1)",
        "learning_rate": "step size (default 0.1)",
        "batch_size": "mini-batch rows (default 64)",
        "alpha": "L2 penalty (default 0.0001)",
        "hidden": "homo_nn's hidden layers, e.g. 64 or 64x32 (default 32)",
        "clusters": "homo_kmeans' k (default 3)",
        "init": "homo_kmeans' starting centroids (k lists of d numbers)",
        "secure_aggregation": "mask (default), paillier or none",
        "validation": "fraction of each party's rows held out (default 0.2)",
        "seed": "seed of the split, the shuffles and the initial model (default 7)",
    },
    inputs=("dataset",),
    outputs=("model", "history", "final"),
    run=run, family="fl", stated=stated_for,
))

IV = register(Operator(
    name="iv", provider="pec", version="0.1", roles=("guest", "host"),
    description="information value and WOE of every feature across a vertical split: the "
                "guest's label encrypted (Paillier, accel), summed per host bin",
    params={
        "dataset": "this party's data set",
        "label": "the guest's binary label column",
        "key": "the column that aligns the parties' rows (the same ids at every party)",
        "bins": "equal-frequency bins per feature (default 10)",
    },
    inputs=("dataset",),
    outputs=("iv", "woe"),
    # the label leaves only encrypted; a host learns per-bin counts, the guest IVs
    run=iv.run, family="fl", stated=lambda role, params: {"aggregation": "secure"},
))

__all__ = ["IV", "TRAIN", "stated_for"]
