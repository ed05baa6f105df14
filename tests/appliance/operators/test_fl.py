"""Horizontal federated learning (appliance.operators.fl): FedAvg of logistic regression, an
MLP and k-means among three parties in one process, with each secure aggregation, against the
same model trained on the pooled rows; faults and bad input."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.datasets import load_digits, make_blobs
from sklearn.model_selection import train_test_split

from appliance.operators.base import OperatorError, PartyContext, local_contexts, run_parties
from appliance.operators.fl import TRAIN, homo, models, secagg
from tests.appliance.operators.readers import TableReader

NAMES = ["node-a", "node-b", "node-c"]




def table(x: np.ndarray, y: np.ndarray | None, start: int = 0) -> pa.Table:
    cols = {"id": pa.array([f"r{start + i}" for i in range(len(x))])}
    cols |= {f"f{j}": pa.array(x[:, j]) for j in range(x.shape[1])}
    if y is not None:
        cols["label"] = pa.array(y.astype(np.int64))
    return pa.table(cols)


def contexts(data: dict[str, pa.Table], params: dict[str, Any], tmp_path: Path | None = None,
             names: list[str] = NAMES) -> list[PartyContext]:
    return local_contexts(names, params, {n: TableReader(data[n]) for n in names},
                          job_id="job-f", timeout=20, output_root=tmp_path)


def run_all(data: dict[str, pa.Table], params: dict[str, Any],
            tmp_path: Path | None = None) -> dict[str, Any]:
    return run_parties(TRAIN.run, contexts(data, params, tmp_path), timeout=300)


def ok(results: dict[str, Any]) -> dict[str, Any]:
    for name, r in results.items():
        assert not isinstance(r, BaseException), f"{name}: {r!r}"
    return results


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def split_parties(x: np.ndarray, y: np.ndarray, skewed: bool) -> dict[str, pa.Table]:
    """Three parties: IID thirds, or label-skewed (each party mostly holds its own digits)."""
    rng = np.random.default_rng(3)
    if skewed:
        owner = np.where(rng.random(len(y)) < 0.8, y % 3, rng.integers(0, 3, len(y)))
    else:
        owner = rng.integers(0, 3, len(y))
    return {n: table(x[owner == i], y[owner == i], 10000 * i) for i, n in enumerate(NAMES)}


def test_accuracy(model: Any, doc_w: np.ndarray, x: np.ndarray, y: np.ndarray,
                  mean: np.ndarray, scale: np.ndarray) -> float:
    return float((model.proba(doc_w, (x - mean) / scale).argmax(axis=1) == y).mean())


test_accuracy.__test__ = False  # a helper, not a test


def pooled_model(algorithm: str, x: np.ndarray, y: np.ndarray, params: dict[str, Any]
                 ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The same model, the same code, on all rows in one place for rounds x local_epochs."""
    plan = homo.plan_of(params)
    mean, std = x.mean(axis=0), x.std(axis=0)
    scale = np.where(std > 1e-6, std, 1.0)
    model = models.make(algorithm, x.shape[1], 10, plan)
    w = model.initial(np.random.default_rng(plan["seed"]))
    rng = np.random.default_rng(0)
    for _ in range(plan["rounds"]):
        w = model.fit(w, (x - mean) / scale, y, rng)
    return model, w, mean, scale


@pytest.mark.parametrize(("algorithm", "skewed"), [("homo_lr", False), ("homo_lr", True),
                                                   ("homo_nn", False), ("homo_nn", True)])
def test_fedavg_is_within_two_points_of_the_pooled_model(digits, algorithm, skewed, tmp_path):
    x_train, x_test, y_train, y_test = digits
    params = {"algorithm": algorithm, "label": "label", "rounds": 15, "local_epochs": 1,
              "learning_rate": 0.1 if algorithm == "homo_lr" else 0.01, "batch_size": 32,
              "secure_aggregation": "mask", "validation": 0.1, "hidden": "32"}
    results = ok(run_all(split_parties(x_train, y_train, skewed), params, tmp_path))
    out = results["node-a"]
    assert out["parties"] == 3 and out["dropped"] == [] and len(out["history"]) == 15
    assert {r["model_sha256"] for r in results.values()} == {out["model_sha256"]}
    import json

    doc = json.loads((tmp_path / "node-b" / "model.json").read_text())
    model = models.make(algorithm, 64, 10, homo.plan_of(params))
    fed = test_accuracy(model, np.array(doc["weights"]), x_test, y_test,
                        np.array(doc["mean"]), np.array(doc["scale"]))
    pm, pw, pmean, pscale = pooled_model(algorithm, x_train, y_train, params)
    pooled = test_accuracy(pm, pw, x_test, y_test, pmean, pscale)
    assert fed >= pooled - 0.02, (fed, pooled)
    assert fed > 0.85
    assert out["final"]["val_accuracy"] > 0.8


def test_mask_paillier_and_none_give_the_same_model(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:600], y_train[:600], skewed=False)
    base = {"algorithm": "homo_lr", "label": "label", "rounds": 3, "batch_size": 64}
    weights = {}
    for mode in ("none", "mask", "paillier"):
        out = ok(run_all(data, {**base, "secure_aggregation": mode}))["node-a"]
        weights[mode] = out
    ref = weights["none"]["history"]
    for mode in ("mask", "paillier"):
        for a, b in zip(weights[mode]["history"], ref, strict=True):
            assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
            assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)
    assert weights["paillier"]["he_seconds"] > 0


def test_kmeans_matches_pooled_lloyd_from_the_same_start():
    x, _ = make_blobs(n_samples=900, centers=4, n_features=3, random_state=5)
    rng = np.random.default_rng(1)
    owner = rng.integers(0, 3, len(x))
    data = {n: table(x[owner == i], None, 1000 * i) for i, n in enumerate(NAMES)}
    init = x[[0, 1, 2, 3]].tolist()
    for mode in ("mask", "paillier", "none"):
        out = ok(run_all(data, {"algorithm": "homo_kmeans", "clusters": 4, "rounds": 6,
                                "init": init, "secure_aggregation": mode}))
        c = np.array(init)
        for _ in range(6):
            sums, counts, _ = models.kmeans_stats(c, x)
            c = models.kmeans_step(c, sums, counts)
        np.testing.assert_allclose(np.array(out["node-b"]["centroids"]), c, atol=1e-6)
        assert out["node-a"]["history"][-1]["inertia"] > 0


FOUR = [*NAMES, "node-d"]


def four_parties(x: np.ndarray, y: np.ndarray) -> dict[str, pa.Table]:
    owner = np.random.default_rng(4).integers(0, 4, len(y))
    return {n: table(x[owner == i], y[owner == i], 10000 * i) for i, n in enumerate(FOUR)}


def tamper(ctx: PartyContext, peer: str, tag: str, round_tag: str, change: Any) -> None:
    """Route ``ctx``'s session to ``peer`` through ``change`` for the one message of type
    ``tag`` in round ``round_tag``: it returns the message to send instead, or raises after
    aborting the session (a party that vanishes)."""
    real = ctx.sessions[peer]

    class Tampered:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def send(self, obj: Any, *a: Any, **k: Any) -> Any:
            if isinstance(obj, dict) and obj.get("t") == tag and obj.get("r") == round_tag:
                obj = change(obj, real)
            return real.send(obj, *a, **k)

    ctx.sessions[peer] = Tampered()


def vanish(obj: Any, real: Any) -> Any:
    real.abort("node-c lost power")
    raise OperatorError("node-c lost power")


def test_a_party_that_drops_out_after_masking_does_not_stop_the_round(digits, monkeypatch):
    x_train, _, y_train, _ = digits
    data = four_parties(x_train[:1200], y_train[:1200])
    ctxs = contexts(data, {"algorithm": "homo_lr", "label": "label", "rounds": 4,
                           "secure_aggregation": "mask"}, names=FOUR)
    # node-c goes away instead of sending round 2's masked update
    tamper(ctxs[2], "node-a", "fl/masked", "r2", vanish)
    seen: list[np.ndarray] = []
    revealed: list[list[tuple[str, str, bytes]]] = []
    real_unmask = secagg.unmask

    def spy(total, self_keys, dropped_keys):
        out = real_unmask(total, self_keys, dropped_keys)
        seen.append(secagg.decode(out))
        revealed.append(list(dropped_keys))
        return out

    monkeypatch.setattr(secagg, "unmask", spy)
    results = run_parties(TRAIN.run, ctxs, timeout=120)
    assert isinstance(results["node-c"], BaseException)
    a = results["node-a"]
    assert not isinstance(a, BaseException), a
    assert a["dropped"] == ["node-c"] and a["parties"] == 3 and len(a["history"]) == 4
    assert {results[n]["model_sha256"] for n in ("node-b", "node-d")} == {a["model_sha256"]}
    # what the aggregator unmasked in round 2 is the sum of the three survivors' updates
    n_rows = seen[3][-4]  # scale, r0, r1, r2: the fourth sum, its training-row count
    assert n_rows == pytest.approx(sum(len(homo.split(len(data[n]), 0.2, 7, n)[0])
                                       for n in ("node-a", "node-b", "node-d")))
    # only that round's keys with node-c were revealed, never a pair's seed: they differ
    # from round to round, so no other round of node-c opens
    keys = revealed[3]
    assert {(s, d) for s, d, _ in keys} == {("node-a", "node-c"), ("node-b", "node-c"),
                                            ("node-d", "node-c")}
    assert all(len(k) == 32 for _, _, k in keys)
    assert not any(r for r in revealed[:3])


def test_with_fewer_than_three_left_masking_stops_rather_than_expose_an_update(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:600], y_train[:600], skewed=False)
    ctxs = contexts(data, {"algorithm": "homo_lr", "label": "label", "rounds": 3,
                           "secure_aggregation": "mask"})
    tamper(ctxs[2], "node-a", "fl/masked", "r1", vanish)
    results = run_parties(TRAIN.run, ctxs, timeout=120)
    assert isinstance(results["node-a"], OperatorError)
    assert "fewer than 3 parties are left" in str(results["node-a"])
    assert isinstance(results["node-b"], BaseException)


def test_labels_of_different_types_fail_everywhere(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:300], y_train[:300], skewed=False)
    t = data["node-b"]
    data["node-b"] = t.set_column(t.column_names.index("label"), "label",
                                  pa.array(t.column("label").to_numpy().astype(float)))
    results = run_all(data, {"algorithm": "homo_lr", "label": "label", "rounds": 1})
    for r in results.values():
        assert isinstance(r, OperatorError) and "label's type differs" in str(r)


def test_secagg_ring_arithmetic_is_exact():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(50) * 1e6, [2.0**70, -(2.0**70), 0.0, -1.5]])
    parts = [secagg.encode(x / 3, 3) for _ in range(3)]
    total = parts[0]
    for p in parts[1:]:
        total = secagg.add(total, p)
    np.testing.assert_allclose(secagg.decode(total), x, rtol=1e-12, atol=3 * 2**-24)
    back = secagg.parse_vector({"t": "v", "v": secagg.wire(total)}, "v", len(x), "p")
    assert all((a == b).all() for a, b in zip(back, total, strict=True))
    m = secagg.prg(b"k" * 32, len(x))
    np.testing.assert_allclose(secagg.decode(secagg.sub(secagg.add(total, m), m)), x,
                               rtol=1e-12, atol=3 * 2**-24)


@pytest.mark.parametrize(("params", "match"), [
    ({"algorithm": "svm"}, "must be one of"),
    ({"algorithm": "homo_lr"}, "needs label"),
    ({"algorithm": "homo_lr", "label": "label", "rounds": 0}, "rounds must be"),
    ({"algorithm": "homo_lr", "label": "label", "secure_aggregation": "magic"}, "must be one"),
    ({"algorithm": "homo_nn", "label": "label", "hidden": "a"}, "layer widths"),
])
def test_bad_parameters_are_refused(params, match):
    with pytest.raises(OperatorError, match=match):
        homo.plan_of(params)


def test_different_feature_columns_fail_everywhere(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:300], y_train[:300], skewed=False)
    data["node-c"] = data["node-c"].rename_columns(
        [c if c != "f5" else "g5" for c in data["node-c"].column_names])
    results = run_all(data, {"algorithm": "homo_lr", "label": "label", "rounds": 1})
    for r in results.values():
        assert isinstance(r, OperatorError) and "feature columns" in str(r)


def test_a_label_present_at_one_party_only_fails_everywhere(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:300], y_train[:300], skewed=False)
    data["node-b"] = data["node-b"].drop(["label"])
    results = run_all(data, {"algorithm": "homo_lr", "label": "label", "rounds": 1,
                             "features": ",".join(f"f{j}" for j in range(64))})
    for r in results.values():
        assert isinstance(r, OperatorError) and "missing at node-b" in str(r)


def test_an_update_of_the_wrong_shape_is_refused(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:300], y_train[:300], skewed=False)
    ctxs = contexts(data, {"algorithm": "homo_lr", "label": "label", "rounds": 2,
                           "secure_aggregation": "none"})
    tamper(ctxs[1], "node-a", "fl/plain", "r1", lambda obj, real: {**obj, "v": obj["v"][:-3]})
    results = run_parties(TRAIN.run, ctxs, timeout=60)
    assert isinstance(results["node-a"], OperatorError)
    assert "node-b sent a malformed fl/plain" in str(results["node-a"])


def test_two_parties_cannot_mask():
    with pytest.raises(OperatorError, match="three or more parties"):
        TRAIN.run(contexts({n: table(np.zeros((3, 2)), np.array([0, 1, 0]))
                            for n in NAMES[:2]}, {"algorithm": "homo_lr", "label": "label"},
                           names=NAMES[:2])[0])


def test_fixed_point_refuses_values_it_cannot_add():
    with pytest.raises(OperatorError, match="past the"):
        secagg.encode(np.array([2.0**102]), 3)
    with pytest.raises(OperatorError, match="NaN"):
        secagg.encode(np.array([np.nan]), 3)
    x = np.array([-1.5, 0.0, 123.456, 1e15])
    np.testing.assert_allclose(secagg.decode(secagg.encode(x, 3)), x, atol=2**-24)


def test_a_malformed_masked_update_names_its_sender(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:300], y_train[:300], skewed=False)
    ctxs = contexts(data, {"algorithm": "homo_lr", "label": "label", "rounds": 2,
                           "secure_aggregation": "mask"})
    tamper(ctxs[1], "node-a", "fl/masked", "r0",
           lambda obj, real: {**obj, "v": [str(1 << 128), *obj["v"][1:]]})
    results = run_parties(TRAIN.run, ctxs, timeout=60)
    assert isinstance(results["node-a"], OperatorError)
    assert "node-b sent a fl/masked value outside Z_2^128" in str(results["node-a"])


def test_each_party_keeps_its_own_validation_figures(digits):
    x_train, _, y_train, _ = digits
    data = split_parties(x_train[:600], y_train[:600], skewed=True)
    results = ok(run_all(data, {"algorithm": "homo_lr", "label": "label", "rounds": 3}))
    local = {n: r["local_history"] for n, r in results.items()}
    assert all(len(h) == 3 for h in local.values())
    assert len({json_key(h) for h in local.values()}) == 3  # each party's own
    assert results["node-a"]["history"] == results["node-b"]["history"]  # the pooled ones


def json_key(rows: list[dict[str, Any]]) -> str:
    import json

    return json.dumps(rows, sort_keys=True)


# -- information value across a vertical split ---------------------------------------------------

def vertical(x: np.ndarray, y: np.ndarray, cols_guest: list[int], cols_host: list[int],
             shuffle_host: bool = True) -> dict[str, pa.Table]:
    ids = [f"p{i:04d}" for i in range(len(y))]
    guest = {"id": pa.array(ids), "label": pa.array(y.astype(np.int64))}
    guest |= {f"g{j}": pa.array(x[:, j]) for j in cols_guest}
    order = np.random.default_rng(9).permutation(len(y)) if shuffle_host else np.arange(len(y))
    host = {"id": pa.array([ids[i] for i in order])}
    host |= {f"h{j}": pa.array(x[order, j]) for j in cols_host}
    return {"node-a": pa.table(guest), "node-b": pa.table(host)}


def test_iv_across_parties_equals_the_pooled_computation():
    from sklearn.datasets import load_breast_cancer

    from appliance.operators.fl import IV, iv

    x, y = load_breast_cancer(return_X_y=True)
    data = vertical(x, y, list(range(15)), list(range(15, 30)))
    results = ok(run_parties(IV.run, contexts(data, {"label": "label", "key": "id",
                                                     "bins": 10}, names=NAMES[:2]),
                             timeout=120))
    pooled = iv.local_iv({f"f{j}": x[:, j] for j in range(30)}, y.astype(float), 10)
    got = results["node-a"]["iv"]
    for j in range(15):
        assert got["node-a"][f"g{j}"] == pytest.approx(pooled[f"f{j}"], abs=1e-9)
    for j in range(15, 30):
        assert got["node-b"][f"h{j}"] == pytest.approx(pooled[f"f{j}"], abs=1e-9)
        assert results["node-b"]["iv"][f"h{j}"] == got["node-b"][f"h{j}"]
    assert results["node-b"]["he_seconds"] > 0 and "woe" in results["node-b"]


def test_iv_refuses_keys_that_do_not_align_and_a_label_that_is_not_binary():
    from appliance.operators.fl import IV

    x = np.random.default_rng(1).standard_normal((40, 4))
    y = np.arange(40) % 2
    data = vertical(x, y, [0, 1], [2, 3])
    data["node-b"] = data["node-b"].slice(0, 39)
    results = run_parties(IV.run, contexts(data, {"label": "label", "key": "id"},
                                           names=NAMES[:2]), timeout=60)
    for r in results.values():
        assert isinstance(r, OperatorError) and "do not align" in str(r)
    data = vertical(x, np.arange(40) % 3, [0, 1], [2, 3])
    results = run_parties(IV.run, contexts(data, {"label": "label", "key": "id"},
                                           names=NAMES[:2]), timeout=60)
    assert "must be binary" in str(results["node-a"])


def test_iv_a_missing_key_column_at_the_host_fails_both_at_once():
    from appliance.operators.fl import IV

    x = np.random.default_rng(1).standard_normal((40, 4))
    data = vertical(x, np.arange(40) % 2, [0, 1], [2, 3])
    data["node-b"] = data["node-b"].rename_columns(["ident", "h2", "h3"])
    t0 = time.monotonic()
    results = run_parties(IV.run, contexts(data, {"label": "label", "key": "id"},
                                           names=NAMES[:2]), timeout=60)
    assert time.monotonic() - t0 < 10
    for r in results.values():
        assert isinstance(r, OperatorError) and "node-b has no key column 'id'" in str(r)
