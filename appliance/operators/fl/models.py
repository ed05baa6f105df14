"""The models horizontal learning trains, each as a flat parameter vector that FedAvg averages
(docs/fl.md).

- ``homo_lr``: multinomial logistic regression (softmax; two classes is the binary case), in
  NumPy: mini-batch gradient descent with an L2 penalty.
- ``homo_nn``: a multi-layer perceptron, scikit-learn's ``MLPClassifier`` (Adam, ReLU). Why
  scikit-learn: the appliance's models are small tabular ones on the CPU; its MLP is a
  well-kept, exactly specified implementation whose weights are plain arrays (``coefs_``,
  ``intercepts_``) to average, and it costs the image tens of megabytes where a deep-learning
  framework costs gigabytes (PyTorch's default wheels carry CUDA).
- ``homo_kmeans``: Lloyd's iteration; a round's update is each cluster's sum and count.

Local training is the same function for a party and for the pooled baseline the tests
compare against, so "the same model on the pooled data" means the same code.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from appliance.operators.base import OperatorError


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class SoftmaxLR:
    """Weights ``(features + 1) x classes`` (the last row is the bias), flattened."""

    def __init__(self, features: int, classes: int, params: dict[str, Any]) -> None:
        self.d, self.k = features, classes
        self.lr = float(params["learning_rate"])
        self.alpha = float(params["alpha"])
        self.batch = int(params["batch_size"])
        self.epochs = int(params["local_epochs"])

    def size(self) -> int:
        return (self.d + 1) * self.k

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.size())

    def _wb(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = w.reshape(self.d + 1, self.k)
        return m[:-1], m[-1]

    def proba(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        weights, bias = self._wb(w)
        return softmax(x @ weights + bias)

    def fit(self, w: np.ndarray, x: np.ndarray, y: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
        """``epochs`` passes of mini-batch gradient descent from ``w``."""
        m = w.reshape(self.d + 1, self.k).copy()
        onehot = np.eye(self.k)[y]
        n = len(x)
        for _ in range(self.epochs):
            order = rng.permutation(n)
            for at in range(0, n, self.batch):
                idx = order[at: at + self.batch]
                p = softmax(x[idx] @ m[:-1] + m[-1])
                err = (p - onehot[idx]) / len(idx)
                grad_w = x[idx].T @ err + self.alpha * m[:-1]
                m[:-1] -= self.lr * grad_w
                m[-1] -= self.lr * err.sum(axis=0)
        return m.reshape(-1)


class MLP:
    """scikit-learn's MLPClassifier; the vector is its coefs_ and intercepts_ in order."""

    def __init__(self, features: int, classes: int, params: dict[str, Any]) -> None:
        from sklearn.neural_network import MLPClassifier

        self.d, self.k = features, classes
        hidden = tuple(int(h) for h in str(params["hidden"]).split("x") if h)
        self.layers = [features, *hidden, classes if classes > 2 else 1]
        self.epochs = int(params["local_epochs"])
        self.net = MLPClassifier(hidden_layer_sizes=hidden, learning_rate_init=float(
            params["learning_rate"]), alpha=float(params["alpha"]),
            batch_size=int(params["batch_size"]), random_state=int(params["seed"]))
        # shape the network once on a stand-in batch holding every class, then every weight
        # comes from the federation's vector
        xs = np.zeros((classes, features))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.net.partial_fit(xs, np.arange(classes), classes=np.arange(classes))

    def size(self) -> int:
        return sum((a + 1) * b for a, b in zip(self.layers[:-1], self.layers[1:], strict=True))

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        parts = []
        for a, b in zip(self.layers[:-1], self.layers[1:], strict=True):
            bound = np.sqrt(6.0 / (a + b))  # Glorot, as scikit-learn initialises
            parts += [rng.uniform(-bound, bound, (a, b)).ravel(), np.zeros(b)]
        return np.concatenate(parts)

    def set(self, w: np.ndarray) -> None:
        at, coefs, intercepts = 0, [], []
        for a, b in zip(self.layers[:-1], self.layers[1:], strict=True):
            coefs.append(w[at: at + a * b].reshape(a, b).copy())
            at += a * b
            intercepts.append(w[at: at + b].copy())
            at += b
        self.net.coefs_, self.net.intercepts_ = coefs, intercepts

    def get(self) -> np.ndarray:
        return np.concatenate([p for c, i in zip(self.net.coefs_, self.net.intercepts_,
                                                 strict=True) for p in (c.ravel(), i)])

    def proba(self, w: np.ndarray, x: np.ndarray) -> np.ndarray:
        self.set(w)
        p = self.net.predict_proba(x)
        return p if p.shape[1] == self.k else np.column_stack([1 - p[:, 0], p[:, 0]])

    def fit(self, w: np.ndarray, x: np.ndarray, y: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
        self.set(w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes of a one-epoch partial_fit
            for _ in range(self.epochs):
                self.net.partial_fit(x, y)
        return self.get()


def make(algorithm: str, features: int, classes: int, params: dict[str, Any]) -> Any:
    if algorithm == "homo_lr":
        return SoftmaxLR(features, classes, params)
    if algorithm == "homo_nn":
        return MLP(features, classes, params)
    raise OperatorError(f"fl: no classifier for {algorithm}")


def evaluate(model: Any, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """(sum of log losses, correct predictions) over ``x``: sums, so parties' add up."""
    if len(x) == 0:
        return 0.0, 0
    p = np.clip(model.proba(w, x), 1e-12, 1.0)
    return float(-np.log(p[np.arange(len(y)), y]).sum()), int((p.argmax(axis=1) == y).sum())


# -- k-means -------------------------------------------------------------------------------------

def kmeans_stats(centroids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Each cluster's sum and count over ``x`` under the nearest-centroid assignment, and the
    sum of squared distances (the inertia)."""
    d2 = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    nearest = d2.argmin(axis=1)
    k = len(centroids)
    sums = np.zeros_like(centroids)
    np.add.at(sums, nearest, x)
    counts = np.bincount(nearest, minlength=k).astype(np.float64)
    return sums, counts, float(d2[np.arange(len(x)), nearest].sum())


def kmeans_step(centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Lloyd's update; a cluster that lost every point keeps its centroid."""
    out = centroids.copy()
    hit = counts > 0
    out[hit] = sums[hit] / counts[hit, None]
    return out
