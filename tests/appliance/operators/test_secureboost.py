"""Hetero SecureBoost in one process: breast cancer split by columns, the same trees as with
every feature at one party, within 0.01 AUC of scikit-learn's HistGradientBoostingClassifier;
joint inference; faults and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from appliance.operators.base import OperatorError, run_parties
from appliance.operators.fl import PREDICT, TRAIN, secureboost
from tests.appliance.operators.faults import Faulty, vanish_at
from tests.appliance.operators.test_hetero_lr import cancer, ok, parties, split_tables

__all__ = ["cancer"]  # the fixture, shared
BASE = {"algorithm": "hetero_secureboost", "label": "label", "key": "id", "trees": 3,
        "depth": 3, "validation": 0.0}


def train_and_predict(x, y, tr, te, root: Path, guest_cols, host_cols,
                      params=BASE) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    trained = ok(run_parties(TRAIN.run, parties(split_tables(
        x, y, tr, host_cols=host_cols, guest_cols=guest_cols), params, root), timeout=300))
    out = ok(run_parties(PREDICT.run, parties(split_tables(
        x, y, te, host_cols=host_cols, guest_cols=guest_cols),
        {"model": "hetero_secureboost-job-v", "label": "label"}, root, job_id="job-p"),
        timeout=120))
    lines = Path(out["node-a"]["rows_file"]).read_text().splitlines()[1:]
    scores = dict(line.split(",")[:2] for line in lines)
    return trained, out, np.array([float(scores[f"p{i:04d}"]) for i in te])


def test_split_trees_equal_pooled_trees_and_auc_within_001_of_scikit_learn(cancer, tmp_path):
    x, y, tr, te = cancer["x"], cancer["y"], cancer["train"], cancer["test"]
    trained, out, split = train_and_predict(x, y, tr, te, tmp_path / "split",
                                            list(range(15)), [list(range(15, 30))])
    # every feature at the guest (the host holds one copy): the same trees, so the same
    # scores: the encrypted histograms lose nothing that changes a split
    _, _, pooled = train_and_predict(x, y, tr, te, tmp_path / "pooled", list(range(30)),
                                     [[0]])
    np.testing.assert_allclose(split, pooled, atol=1e-9)
    auc = out["node-a"]["metrics"]["auc"]
    assert auc == pytest.approx(roc_auc_score(y[te], split), abs=1e-12)
    ref = HistGradientBoostingClassifier(
        max_iter=3, max_depth=3, learning_rate=0.3, max_bins=32, l2_regularization=1.0,
        min_samples_leaf=1, early_stopping=False).fit(x[tr], y[tr])
    ref_auc = roc_auc_score(y[te], ref.predict_proba(x[te])[:, 1])
    assert abs(auc - ref_auc) <= 0.01, (auc, ref_auc)
    guest, host = trained["node-a"], trained["node-b"]
    assert guest["trees"] == 3 and host["trees"] == 3
    # the guest knows a host feature by position; the host by name
    assert any(k.startswith("node-b#") for k in guest["importance"])
    assert set(host["importance"]) <= {f"f{j}" for j in range(15, 30)}
    assert out["node-b"]["rows"] == len(te)


def test_two_hosts_and_validation_history(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"]
    data = split_tables(x, y, tr, host_cols=[list(range(15, 22)), list(range(22, 30))])
    params = {**BASE, "trees": 4, "validation": 0.25}
    results = ok(run_parties(TRAIN.run, parties(data, params, tmp_path), timeout=300))
    history = results["node-a"]["history"]
    assert [h["tree"] for h in history] == [1, 2, 3, 4]
    assert all(h["auc"] > 0.9 for h in history)
    assert results["node-c"]["history"] == history


def test_the_guest_refuses_a_malformed_histogram(cancer):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:120]
    ctxs = parties(split_tables(x, y, tr), {**BASE, "trees": 1})
    for c in ctxs:  # in one process nobody aborts the host's session: it waits this long
        c.timeout = 20
    ctxs[1].sessions["node-a"] = Faulty(ctxs[1].sessions["node-a"],
                                        lambda blob, _: blob[:100])
    results = run_parties(TRAIN.run, ctxs, timeout=60)
    assert "party node-b sent malformed histograms" in str(results["node-a"])
    assert isinstance(results["node-b"], OperatorError)


def test_parameters_and_an_arbiter_are_refused(cancer):
    for params, error in [({"trees": 0}, "trees"), ({"bins": 1}, "bins"),
                          ({"learning_rate": 0}, "learning_rate"), ({"key": ""}, "key=")]:
        with pytest.raises(OperatorError, match=error):
            secureboost.plan_of({**BASE, **params})
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:50]
    results = run_parties(TRAIN.run, parties(split_tables(x, y, tr), BASE,
                                             arbiter="node-z"), timeout=30)
    assert all("needs no arbiter" in str(r) for r in results.values())


def test_gradient_packing_round_trips():
    g = np.array([-1.0, -0.25, 0.0, 0.5, 1.0])
    h = np.array([0.0, 0.1875, 0.25, 0.25, 0.0])
    packed = secureboost._pack_gh(g, h, 5)
    total = sum(packed)
    gs, hs, count = secureboost._unpack_gh(total, secureboost._layout(5))
    assert count == 5 and gs == pytest.approx(g.sum(), abs=1e-11)
    assert hs == pytest.approx(h.sum(), abs=1e-11)


def test_a_host_lost_mid_tree_fails_both_and_the_job_resumes_at_the_tree(cancer, tmp_path):
    x, y, tr = cancer["x"], cancer["y"], cancer["train"][:200]
    data = split_tables(x, y, tr)
    params = {**BASE, "trees": 4, "validation": 0.2}
    ctxs = parties(data, params, tmp_path, job_id="job-1")
    real = ctxs[1].sessions["node-a"]
    # the histograms of tree 3 (three levels a tree)
    ctxs[1].sessions["node-a"] = Faulty(real, vanish_at(real, "node-b", 8))
    results = run_parties(TRAIN.run, ctxs, timeout=120)
    assert all(isinstance(r, OperatorError) for r in results.values())
    assert "node-b" in str(results["node-a"])
    assert not (tmp_path / "node-a" / "job-1" / "model.json").exists()
    resumed = ok(run_parties(TRAIN.run, parties(data, {**params, "resume": "job-1"}, tmp_path,
                                                job_id="job-2"), timeout=120))
    whole = ok(run_parties(TRAIN.run, parties(data, params, tmp_path, job_id="job-3"),
                           timeout=120))
    assert resumed["node-a"]["trees"] == 4
    assert resumed["node-a"]["history"] == whole["node-a"]["history"]
