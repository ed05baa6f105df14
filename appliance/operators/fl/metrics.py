"""Binary-classification metrics of a vertical model's scores, computed where the label is
(the guest): AUC, KS, log loss, precision and recall at a threshold."""

from __future__ import annotations

import numpy as np


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None when
    one class is absent."""
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sp = p[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sp)) + 1]
    ends = np.r_[starts[1:], len(sp)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def ks(y: np.ndarray, p: np.ndarray) -> float | None:
    """Kolmogorov-Smirnov: the largest gap between the positives' and the negatives'
    cumulative score distributions."""
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    sp, sy = p[order], y[order]
    tpr = np.cumsum(sy) / pos
    fpr = np.cumsum(1 - sy) / neg
    last = np.r_[np.diff(sp) != 0, True]  # only where the score changes
    return float(np.abs(tpr - fpr)[last].max())


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())


def summary(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float | None]:
    """Every metric of ``p`` (the positive class's probability) against ``y`` (0/1)."""
    if len(y) == 0:
        return {}
    hit = p >= threshold
    tp = int((hit & (y == 1)).sum())
    return {"loss": log_loss(y, p), "auc": auc(y, p), "ks": ks(y, p),
            "accuracy": float((hit == (y == 1)).mean()),
            "precision": tp / int(hit.sum()) if hit.any() else None,
            "recall": tp / int(y.sum()) if y.any() else None,
            "threshold": threshold, "rows": len(y)}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|
