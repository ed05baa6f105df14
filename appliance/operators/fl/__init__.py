"""Federated learning, provider ``pec``. Built: horizontal learning (FedAvg) of logistic
regression, a multi-layer perceptron and k-means among two or more parties, with secure
aggregation by pairwise masks or Paillier (``accel``); and, of vertical learning, logistic
regression (``hetero_lr``, with or without an arbiter) and SecureBoost
(``hetero_secureboost``), Paillier through ``accel``, their joint inference, and the
information value of every feature across a vertical split (``iv``). docs/fl.md says who
learns what.
"""

from __future__ import annotations

from typing import Any

from appliance.operators.base import Operator, OperatorError, PartyContext, register
from appliance.operators.fl import hetero_lr, homo, iv, joint_predict, secureboost


def run(ctx: PartyContext) -> dict[str, Any]:
    if ctx.params.get("algorithm") == hetero_lr.ALGORITHM:
        return hetero_lr.run(ctx)
    if ctx.params.get("algorithm") == secureboost.ALGORITHM:
        return secureboost.run(ctx)
    if ctx.role == "arbiter":
        raise OperatorError("train: only hetero_lr has an arbiter")
    return homo.run(ctx)


def stated_for(role: str | None, params: dict[str, Any]) -> dict[str, str]:
    """The grade policy's fl ``aggregation``: secure unless the job asks for none."""
    mode = params.get("secure_aggregation") or "mask"
    return {"aggregation": "plain" if mode == "none" else "secure"}


TRAIN = register(Operator(
    name="train", provider="pec", version="0.1", roles=("guest", "host", "arbiter"),
    description="federated training: horizontal FedAvg of logistic regression, an MLP or "
                "k-means, with secure aggregation (pairwise masks or Paillier); vertical "
                "logistic regression (Paillier, with or without an arbiter) and SecureBoost",
    params={
        "dataset": "this party's data set",
        "algorithm": "homo_lr, homo_nn, homo_kmeans, hetero_lr or hetero_secureboost",
        "label": "the class column (lr, nn; hetero_lr: the guest's binary label)",
        "key": "hetero_lr: the column that aligns the parties' rows",
        "arbiter": "hetero_lr: the peer that holds the key and decrypts masked gradients "
                   "(it needs no data set); without one, guest and host each hold a key",
        "epochs": "hetero_lr: passes over the training rows (default 10)",
        "penalty": "hetero_lr: l2 (default), l1 or none",
        "early_stopping": "hetero_lr: stop after this many epochs without a better "
                          "validation loss (default 3; 0: off)",
        "tol": "hetero_lr: the smallest validation loss gain that counts (default 1e-4)",
        "precision": "hetero_lr: bits of each feature in the encrypted products (default 20)",
        "resume": "hetero_lr, hetero_secureboost: a previous job's id, to go on from its "
                  "last finished epoch or tree",
        "trees": "hetero_secureboost: boosting rounds (default 5)",
        "depth": "hetero_secureboost: tree depth (default 3)",
        "min_child_weight": "hetero_secureboost: the least hessian sum of a child (default 1)",
        "bins": "hetero_secureboost: bins per feature (default 32)",
        "reg_lambda": "hetero_secureboost: L2 regularisation of leaf weights (default 1)",
        "gamma": "hetero_secureboost: the least gain of a split (default 0)",
        "features": "the feature columns, C1[,C2...] (default: every numeric column but the "
                    "label and the id column), the same at every party",
        "rounds": "federated rounds (default 10)",
        "local_epochs": "passes over the local rows per round (default 1)",
        "learning_rate": "step size (default 0.1)",
        "batch_size": "mini-batch rows (default 64)",
        "alpha": "the penalty's weight (default 0.0001; hetero_lr 0.01)",
        "hidden": "homo_nn's hidden layers, e.g. 64 or 64x32 (default 32)",
        "clusters": "homo_kmeans' k (default 3)",
        "init": "homo_kmeans' starting centroids (k lists of d numbers)",
        "secure_aggregation": "mask (default), paillier or none",
        "validation": "fraction of the rows held out (default 0.2)",
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

PREDICT = register(Operator(
    name="predict", provider="pec", version="0.1", roles=("guest", "host"),
    description="joint inference with a vertical model: each party scores its own "
                "features, the guest combines the partial scores",
    params={
        "dataset": "this party's data set (the model's features and key column)",
        "model": "the vertical model's id (hetero_lr-JOB or hetero_secureboost-JOB), trained "
                 "by the same parties",
        "label": "the guest's label column, to evaluate the model (AUC, KS, precision, "
                 "recall; optional)",
        "threshold": "the probability at which a row is predicted positive (default 0.5)",
    },
    inputs=("dataset", "model"),
    outputs=("predictions", "metrics"),
    # partial scores reach the guest in the clear, as in inference everywhere
    run=joint_predict.run, family="fl", stated=lambda role, params: {"aggregation": "secure"},
    kind=False,  # the node's predict job kind runs it when peers are named
))

__all__ = ["IV", "PREDICT", "TRAIN", "stated_for"]
