"""Vertical logistic regression (hetero_lr) and joint inference in one process: breast cancer
split by columns, against the same descent on pooled plaintext and against scikit-learn;
with and without an arbiter; faults, bad input and resuming from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from appliance.operators.base import OperatorError, local_contexts, run_parties
from appliance.operators.fl import PREDICT, TRAIN, hetero_lr, metrics
from tests.appliance.operators.faults import Faulty, vanish_at
from tests.appliance.operators.readers import TableReader

GUEST_COLS, HOST_COLS = list(range(15)), list(range(15, 30))
BASE = {"algorithm": "hetero_lr", "label": "label", "key": "id", "epochs": 30,
        "batch_size": 64, "alpha": 0.01, "validation": 0.0}


@pytest.fixture(scope="module")
def cancer() -> dict[str, Any]:
    x, y = load_breast_cancer(return_X_y=True)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0,
                                   stratify=y)
    return {"x": x, "y": y, "train": train, "test": test}


def split_tables(x: np.ndarray, y: np.ndarray, rows: np.ndarray,
                 host_cols: list[list[int]] = (HOST_COLS,), label: bool = True,
                 guest_cols: list[int] = GUEST_COLS) -> dict[str, pa.Table]:
    """The guest's table (id, label, its columns) and each host's (id, its columns), each
    host's rows in another order."""
    ids = [f"p{i:04d}" for i in range(len(y))]
    g = {"id": pa.array([ids[i] for i in rows])}
    if label:
        g["label"] = pa.array(y[rows].astype(np.int64))
    g |= {f"f{j}": pa.array(x[rows, j]) for j in guest_cols}
    out = {"node-a": pa.table(g)}
    for k, cols in enumerate(host_cols):
        order = np.random.default_rng(3 + k).permutation(rows)
        out[f"node-{'bcd'[k]}"] = pa.table(
            {"id": pa.array([ids[i] for i in order])}
            | {f"f{j}": pa.array(x[order, j]) for j in cols})
    return out


def parties(data: dict[str, pa.Table], params: dict[str, Any], root: Path | None = None,
            arbiter: str | None = None, job_id: str = "job-v") -> list:
    names = list(data) + ([arbiter] if arbiter else [])
    roles = {n: "guest" if i == 0 else "host" for i, n in enumerate(data)}
    if arbiter:
        roles[arbiter] = "arbiter"
    ctxs = local_contexts(names, params, {n: TableReader(t) for n, t in data.items()},
                          job_id=job_id, timeout=120, roles=roles)
    for c in ctxs:  # as a daemon lays them out: <node>/<job>/
        c.output_dir = root / c.node_id / job_id if root is not None else None
    return ctxs


def ok(results: dict[str, Any]) -> dict[str, Any]:
    for name, r in results.items():
        assert not isinstance(r, BaseException), f"{name}: {r!r}"
    return results


def train(data, params, root=None, arbiter=None, job_id="job-v") -> dict[str, Any]:
    return run_parties(TRAIN.run, parties(data, params, root, arbiter, job_id), timeout=300)


def model_parts(root: Path, job_id: str = "job-v") -> dict[str, dict[str, Any]]:
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in root.glob(f"*/{job_id}/model.json")}


def pooled_taylor_descent(x: np.ndarray, y: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The same descent in the clear on the pooled columns: [guest features, intercept,
    host features] standardised, the Taylor residual, the same batches."""
    xg = x[:, GUEST_COLS]
    xh = x[:, HOST_COLS]
    std = [(a - a.mean(0)) / a.std(0) for a in (xg, xh)]
    z = np.column_stack([std[0], np.ones(len(y)), std[1]])
    w = np.zeros(z.shape[1])
    reg = np.ones(z.shape[1], dtype=bool)
    reg[len(GUEST_COLS)] = False
    for epoch in range(params["epochs"]):
        for b in hetero_lr.batches(np.arange(len(y)), params["batch_size"], 7, epoch):
            d = 0.25 * (z[b] @ w) + 0.5 - y[b]
            g = z[b].T @ d / len(b)
            g[reg] += params["alpha"] * w[reg]
            w -= 0.15 * g
    return w


def test_two_party_descent_equals_the_pooled_plaintext_descent(cancer, tmp_path):
    x, y, rows = cancer["x"], cancer["y"], cancer["train"]
    # rows ordered by id at every party: the pooled reference uses that order too
    order = rows[np.argsort([f"p{i:04d}" for i in rows])]
    results = ok(train(split_tables(x, y, rows), BASE, tmp_path))
    parts = model_parts(tmp_path)
    w = pooled_taylor_descent(x[order], y[order].astype(float), BASE)
    g, h = parts["node-a"], parts["node-b"]
    # features enter the encrypted products on 20 bits: after 180 steps the weights differ
    # by about 2e-6 (measured); a protocol error would be of the weights' own size
    np.testing.assert_allclose(g["weights"], w[:15], atol=1e-5)
    assert g["intercept"] == pytest.approx(w[15], abs=1e-5)
    np.testing.assert_allclose(h["weights"], w[16:], atol=1e-5)
    assert results["node-a"]["variant"] == "two-party"
    assert results["node-a"]["he_seconds"] > 0 and results["node-b"]["he_seconds"] > 0
    # each party's importance names its own features only
    assert set(results["node-b"]["importance"]) == {f"f{j}" for j in HOST_COLS}


def test_auc_within_0005_of_scikit_learn_and_joint_inference_equals_the_assembled_model(
        cancer, tmp_path):
    x, y, tr, te = cancer["x"], cancer["y"], cancer["train"], cancer["test"]
    ok(train(split_tables(x, y, tr), BASE, tmp_path))
    # joint inference on the test rows, labelled at the guest
    test_data = split_tables(x, y, te)
    out = ok(run_parties(PREDICT.run, parties(test_data, {"model": "hetero_lr-job-v",
                                                          "label": "label"}, tmp_path,
                                              job_id="job-p"), timeout=120))
    guest = out["node-a"]
    assert out["node-b"] == {"model": "hetero_lr-job-v", "rows": len(te),
                             "seconds": out["node-b"]["seconds"]}
    lines = Path(guest["rows_file"]).read_text().splitlines()
    assert lines[0] == "id,score,prediction" and len(lines) == len(te) + 1
    got = {r.split(",")[0]: float(r.split(",")[1]) for r in lines[1:]}
    # the model assembled in one place
    parts = model_parts(tmp_path)
    g, h = parts["node-a"], parts["node-b"]
    zg = (x[te][:, GUEST_COLS] - g["mean"]) / g["scale"] @ g["weights"] + g["intercept"]
    zh = (x[te][:, HOST_COLS] - h["mean"]) / h["scale"] @ h["weights"]
    assembled = metrics.sigmoid(zg + zh)
    np.testing.assert_allclose([got[f"p{i:04d}"] for i in te], assembled, rtol=1e-8)
    auc = roc_auc_score(y[te], assembled)
    assert guest["metrics"]["auc"] == pytest.approx(auc, abs=1e-12)
    assert guest["metrics"]["rows"] == len(te) and 0 < guest["metrics"]["ks"] <= 1
    scaler = StandardScaler().fit(x[tr])
    ref = LogisticRegression(C=1 / (BASE["alpha"] * len(tr)), max_iter=5000).fit(
        scaler.transform(x[tr]), y[tr])
    ref_auc = roc_auc_score(y[te], ref.decision_function(scaler.transform(x[te])))
    assert abs(auc - ref_auc) <= 0.005, (auc, ref_auc)


def test_with_an_arbiter_and_two_hosts(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"]
    data = split_tables(x, y, tr, host_cols=[list(range(15, 22)), list(range(22, 30))])
    params = {**BASE, "epochs": 8, "validation": 0.2, "early_stopping": 0}
    results = ok(train(data, params, tmp_path, arbiter="node-z"))
    assert results["node-z"]["role"] == "arbiter" and results["node-z"]["decrypted"] > 0
    assert "importance" not in results["node-z"]
    guest = results["node-a"]
    assert guest["variant"] == "arbiter" and len(guest["history"]) == 8
    assert all(0.95 < r["auc"] <= 1 for r in guest["history"])
    # the hosts hear the pooled validation figures, nothing of the guest's weights
    assert results["node-c"]["history"] == guest["history"]
    parts = model_parts(tmp_path)
    assert {n: p["role"] for n, p in parts.items()} == {
        "node-a": "guest", "node-b": "host", "node-c": "host"}


def test_arbiter_and_two_party_variants_train_the_same_model(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:200]
    params = {**BASE, "epochs": 3}
    ok(train(split_tables(x, y, tr), params, tmp_path / "two"))
    ok(train(split_tables(x, y, tr), params, tmp_path / "arb", arbiter="node-z"))
    two, arb = model_parts(tmp_path / "two"), model_parts(tmp_path / "arb")
    for n in ("node-a", "node-b"):
        np.testing.assert_allclose(two[n]["weights"], arb[n]["weights"], atol=1e-9)


def test_early_stopping_keeps_the_best_epoch(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"]
    params = {**BASE, "epochs": 40, "batch_size": 32, "validation": 0.2,
              "early_stopping": 2, "tol": 0.01}
    r = ok(train(split_tables(x, y, tr), params, tmp_path))["node-a"]
    assert r["epochs_run"] < 40
    assert r["epochs_run"] == r["best_epoch"] + 2
    assert r["final"] == r["history"][r["best_epoch"] - 1]


@pytest.mark.parametrize("penalty", ["l1", "none"])
def test_penalties(cancer, penalty, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"]
    params = {**BASE, "epochs": 5, "penalty": penalty, "alpha": 0.3}
    ok(train(split_tables(x, y, tr), params, tmp_path))
    w = model_parts(tmp_path)["node-b"]["weights"]
    zeros = sum(1 for v in w if v == 0.0)
    assert (zeros > 0) if penalty == "l1" else (zeros == 0)


def test_a_host_that_disconnects_mid_epoch_fails_both_and_the_job_resumes(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:256]
    data = split_tables(x, y, tr)
    params = {**BASE, "epochs": 4}
    ctxs = parties(data, params, tmp_path, job_id="job-1")
    real = ctxs[1].sessions["node-a"]
    # in epoch 3 (4 batches of 2 byte messages each)
    ctxs[1].sessions["node-a"] = Faulty(real, vanish_at(real, "node-b", 2 * 4 * 2 + 3))
    results = run_parties(TRAIN.run, ctxs, timeout=120)
    assert isinstance(results["node-b"], OperatorError)
    assert isinstance(results["node-a"], OperatorError)
    assert "node-b" in str(results["node-a"])
    assert not (tmp_path / "node-a" / "job-1" / "model.json").exists()  # nothing half-written
    # resume from the last finished epoch (2) and end where an uninterrupted run ends
    resumed = ok(train(data, {**params, "resume": "job-1"}, tmp_path, job_id="job-2"))
    assert resumed["node-a"]["epochs_run"] == 4
    ok(train(data, params, tmp_path, job_id="job-3"))
    a, b = model_parts(tmp_path, "job-2"), model_parts(tmp_path, "job-3")
    for n in ("node-a", "node-b"):
        np.testing.assert_allclose(a[n]["weights"], b[n]["weights"], atol=1e-12)
    # a job trained with other parameters does not resume
    bad = train(data, {**params, "alpha": 0.5, "resume": "job-1"}, tmp_path, job_id="job-4")
    for r in bad.values():
        assert isinstance(r, OperatorError) and "other parameters" in str(r)


@pytest.mark.parametrize("case,error", [
    ("not_binary", "must be binary"),
    ("misaligned", "do not align"),
    ("constant", "constant on the training rows"),
    ("nan", "NaN"),
    ("no_label", "no label column 'label'"),
])
def test_bad_input_fails_every_party_with_the_reason(cancer, case, error):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:100]
    x = x.copy()
    if case == "not_binary":
        y = np.arange(len(y)) % 3
    if case == "constant":
        x[:, 20] = 4.0
    if case == "nan":
        x[tr[5], 3] = np.nan
    data = split_tables(x, y, tr, label=case != "no_label")
    if case == "misaligned":
        data["node-b"] = data["node-b"].slice(0, 99)
    results = train(data, {**BASE, "epochs": 1})
    for r in results.values():
        assert isinstance(r, OperatorError) and error in str(r), r


def test_a_malformed_ciphertext_names_the_sender(cancer):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:100]
    ctxs = parties(split_tables(x, y, tr), {**BASE, "epochs": 1})
    for c in ctxs:  # in one process nobody aborts the host's session: it waits this long
        c.timeout = 20
    ctxs[1].sessions["node-a"] = Faulty(ctxs[1].sessions["node-a"],
                                        lambda blob, _: blob[:-7])
    results = run_parties(TRAIN.run, ctxs, timeout=60)
    assert "party node-b sent a malformed partial scores" in str(results["node-a"])
    assert isinstance(results["node-b"], OperatorError)


def test_predict_refuses_a_party_without_its_part_and_other_parties(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:100]
    data = split_tables(x, y, tr)
    ok(train(data, {**BASE, "epochs": 1}, tmp_path))
    (tmp_path / "node-b" / "job-v" / "model.json").unlink()
    out = run_parties(PREDICT.run, parties(data, {"model": "hetero_lr-job-v"}, tmp_path,
                                           job_id="job-p"), timeout=60)
    for r in out.values():
        assert isinstance(r, OperatorError) and "holds no part of model" in str(r)
    out = run_parties(PREDICT.run, parties(data, {"model": "../etc"}, tmp_path,
                                           job_id="job-q"), timeout=60)
    assert all("vertical model id" in str(r) for r in out.values())


def test_parameters_are_checked():
    for params, error in [({"epochs": 0}, "epochs"), ({"penalty": "l3"}, "penalty"),
                          ({"precision": 4}, "precision"), ({"key": ""}, "key=ID_COLUMN"),
                          ({"validation": 1.0}, "validation")]:
        with pytest.raises(OperatorError, match=error):
            hetero_lr.plan_of({**BASE, **params})
