"""The pec stats operator (rows layout, linear statistics) with 2, 3 and 5 parties in one
process over in-memory sessions (the real session code), real data sets, results against
numpy on the pooled rows, and a hand-driven peer for the malformed-share cases."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from appliance.federation.channel import memory_pair
from appliance.federation.datasets import DatasetRegistry
from appliance.operators.base import (
    REGISTRY,
    OperatorError,
    PartyContext,
    local_contexts,
    run_parties,
)
from appliance.operators.stats import STATS, ring, stated_for
from appliance.operators.stats.protocol import plan_of
from tests.appliance.operators.readers import Reader, TableReader

NAMES = ["bank-a", "carrier-b", "hospital-c", "city-d", "broker-e"]
COLS = ["a", "b", "c"]




def csv_set(tmp_path: Path, name: str, header: list[str], rows: list[list[Any]]) -> Reader:
    path = tmp_path / f"{name}.csv"
    path.write_text(",".join(["id", *header]) + "\n" + "".join(
        ",".join([f"{name}{i}", *map(str, r)]) + "\n" for i, r in enumerate(rows)))
    registry = DatasetRegistry(sqlite3.connect(tmp_path / f"{name}.db", check_same_thread=False))
    registry.add(name, str(path), "id", actor="test")
    return Reader(registry, name)


def contexts(names: list[str], data: dict[str, Any], params: dict[str, Any]
             ) -> list[PartyContext]:
    return local_contexts(names, params, data, job_id="job-s", timeout=10)


def run_all(names: list[str], data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return run_parties(STATS.run, contexts(names, data, params), timeout=30)


def party_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    a = rng.normal(-20.0, 15.0, rows).round(3)  # mostly negative
    b = rng.integers(-5, 6, rows).astype(float)  # small ints, many zeros
    c = 0.5 * a + rng.normal(1000.0, 3.0, rows).round(4)  # correlated with a
    return np.column_stack([a, b, c])


EDGES = [-60.0, -30.0, -10.0, 0.0, 10.0, 2000.0]
ALL = "count,sum,mean,var,std,cov,corr"


@pytest.mark.parametrize("n", [2, 3, 5])
def test_linear_statistics_match_numpy_on_the_pooled_rows(tmp_path, n):
    rng = np.random.default_rng(n)
    names = NAMES[:n]
    sizes = [1] + [int(rng.integers(50, 3000)) for _ in range(n - 1)]  # one party: one row
    parts = {nm: party_rows(rng, r) for nm, r in zip(names, sizes, strict=True)}
    parts[names[-1]][:3, 1] = 0.0
    data = {nm: csv_set(tmp_path, nm, COLS, parts[nm].tolist()) for nm in names}
    res = run_all(names, data, {"columns": "a,b,c", "stats": ALL,
                                "hist": ",".join(map(str, EDGES))})
    pooled = np.concatenate([parts[nm] for nm in names])
    want_cov = np.cov(pooled, rowvar=False, bias=True)
    want_corr = np.corrcoef(pooled, rowvar=False)
    for node, r in res.items():
        assert not isinstance(r, Exception), (node, r)
        assert r["received"] is True and r["parties"] == n
        s = r["stats"]
        for i, col in enumerate(COLS):
            x = pooled[:, i]
            assert s["count"][col] == len(x)
            assert s["sum"][col] == pytest.approx(x.sum(), rel=1e-6)
            assert s["mean"][col] == pytest.approx(x.mean(), rel=1e-6)
            assert s["var"][col] == pytest.approx(x.var(), rel=1e-6)
            assert s["std"][col] == pytest.approx(x.std(), rel=1e-6)
            assert s["hist"][col]["counts"] == np.histogram(x, bins=EDGES)[0].tolist()
            for j, other in enumerate(COLS):
                assert s["cov"][col][other] == pytest.approx(want_cov[i, j], rel=1e-6)
                assert s["corr"][col][other] == pytest.approx(want_corr[i, j], rel=1e-6)
    assert res[names[0]] == res[names[-1]]


def test_only_the_initiator_learns_with_receivers_initiator(tmp_path):
    rng = np.random.default_rng(7)
    names = NAMES[:3]
    parts = {nm: party_rows(rng, 40) for nm in names}
    data = {nm: csv_set(tmp_path, nm, COLS, parts[nm].tolist()) for nm in names}
    res = run_all(names, data, {"columns": ["a"], "stats": "sum,mean",
                                "receivers": "initiator"})
    pooled = np.concatenate([parts[nm] for nm in names])[:, 0]
    assert res["bank-a"]["received"] is True
    assert res["bank-a"]["stats"]["mean"]["a"] == pytest.approx(pooled.mean(), rel=1e-6)
    for host in names[1:]:
        assert res[host]["received"] is False and "stats" not in res[host]
        assert res[host]["receivers"] == ["bank-a"]


def test_an_empty_party_and_an_empty_pool(tmp_path):
    names = NAMES[:2]
    one = csv_set(tmp_path, "one", ["a", "b"], [[4.5, -2]])
    res = run_all(names, {"bank-a": one, "carrier-b": TableReader(None)},
                  {"columns": "a,b", "stats": "count,mean,var,corr"})
    for r in res.values():
        assert not isinstance(r, Exception), r
        s = r["stats"]
        assert s["count"] == {"a": 1, "b": 1}
        assert s["mean"] == {"a": 4.5, "b": -2.0} and s["var"] == {"a": 0.0, "b": 0.0}
        assert s["corr"]["a"]["b"] is None and "corr" in r["undefined"]
    res = run_all(names, {n: TableReader(None) for n in names},
                  {"columns": "a", "stats": "count,sum,mean,std"})
    for r in res.values():
        s = r["stats"]
        assert s["count"] == {"a": 0} and s["sum"] == {"a": 0.0}
        assert s["mean"] == {"a": None} and s["std"] == {"a": None}
        assert r["undefined"]["mean"] == "the pooled data set has no rows"


def test_values_near_the_fixed_point_limit_are_refused_not_wrapped(tmp_path):
    names = NAMES[:2]
    # 2 parties: each may add below 2^95 / 2 (about 1.98e28); 3 * (1e14)^2 = 3e28 is past it
    big = [[1e14], [1e14], [1e14]]
    data = {"bank-a": csv_set(tmp_path, "big", ["a"], big),
            "carrier-b": csv_set(tmp_path, "small", ["a"], [[1.0]])}
    res = run_all(names, data, {"columns": "a", "stats": "var"})
    for r in res.values():
        assert isinstance(r, OperatorError), r
        msg = str(r)
        assert "party bank-a: column 'a': its sum of squares is not below" in msg
        assert "bound 1.98" in msg and "2^95/2" in msg and "refused rather than wrapped" in msg
    # the sum alone is far inside the bound, and exact
    res = run_all(names, data, {"columns": "a", "stats": "sum"})
    assert res["carrier-b"]["stats"]["sum"]["a"] == 3e14 + 1
    # a value whose square overflows float64 is refused too
    data["carrier-b"] = TableReader(pa.table({"a": [1e200]}))
    res = run_all(names, data, {"columns": "a", "stats": "std"})
    assert "party carrier-b: column 'a': its sum of squares is not below" in str(res["bank-a"])


def test_the_bound_keeps_every_pooled_total_in_the_signed_range():
    for n in range(2, 6):
        for sign in (1, -1):
            v = sign * ring.bound(n) * (1 - 1e-9)  # every party just inside the bound
            enc = [ring.encode(v, n) for _ in range(n)]
            assert all(e is not None for e in enc)
            held = [ring.share([e], n) for e in enc if e is not None]  # party -> its n shares
            sums = [ring.add([held[k][j] for k in range(n)]) for j in range(n)]
            total = ring.decode(ring.add(sums)[0])
            assert total == n * ring.decode(enc[0] or 0) and (total > 0) == (sign > 0)
        assert ring.encode(ring.bound(n) * 1.0000001, n) is None
        assert ring.encode(float("inf"), n) is None
        assert ring.decode(ring.add(ring.share([ring.encode(-1.25, n) or 0], n))[0]) == (
            -1.25 * ring.SCALE)


def test_a_column_missing_at_one_party_fails_everywhere(tmp_path):
    names = NAMES[:3]
    data = {"bank-a": csv_set(tmp_path, "x", ["a", "b"], [[1, 2]]),
            "carrier-b": csv_set(tmp_path, "y", ["a"], [[3]]),
            "hospital-c": csv_set(tmp_path, "z", ["a", "b"], [[5, 6]])}
    res = run_all(names, data, {"columns": "a,b"})
    for r in res.values():
        assert isinstance(r, OperatorError), r
        assert "party carrier-b: has no column 'b'" in str(r)


def test_non_numeric_nan_and_null_columns_fail_everywhere(tmp_path):
    names = NAMES[:3]
    data = {"bank-a": csv_set(tmp_path, "x", ["a", "b"], [[1, "x"], [2, "y"]]),
            "carrier-b": TableReader(pa.table({"a": [1.0, float("nan")], "b": [1.0, 2.0]})),
            "hospital-c": csv_set(tmp_path, "z", ["a", "b"], [[5, ""], [6, 7]])}
    res = run_all(names, data, {"columns": "a,b"})
    for r in res.values():
        assert isinstance(r, OperatorError), r
        msg = str(r)
        assert "party bank-a: column 'b' is non-numeric (string)" in msg
        assert "party carrier-b: column 'a' has NaN values" in msg
        assert "party hospital-c: column 'b' has 1 empty (null) values" in msg


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ({"t": "stats/shares", "s": ["00" * 16]}, "1 ring elements where 3 belong"),
        ({"t": "stats/shares", "s": "00" * 48}, "a str where a list"),
        ({"t": "stats/shares", "s": ["00" * 16, 7, "00" * 16]}, "element 1 is not"),
        ({"t": "stats/shares", "s": ["00" * 17] * 3}, "element 0 is not"),
        ({"t": "stats/sum", "s": ["00" * 16] * 3}, "malformed stats/shares"),
        ([1, 2, 3], "malformed stats/shares"),
    ],
)
def test_a_malformed_share_names_its_sender(tmp_path, message, needle):
    params = {"columns": "a,b", "stats": "sum"}  # count + 2 sums: 3 ring elements
    a, b = memory_pair("job-s", "stats", names=("bank-a", "carrier-b"))
    ctx = PartyContext(job_id="job-s", role="guest", node_id="bank-a",
                       parties={"bank-a": "guest", "carrier-b": "host"},
                       sessions={"carrier-b": a}, params=params,
                       dataset=csv_set(tmp_path, "x", ["a", "b"], [[1, 2]]), timeout=5)
    b.send({"t": "stats/header", "params": plan_of(params).digest(),
            "columns": {"a": "int", "b": "int"}, "problems": [], "groups": None})
    b.send(message)
    with pytest.raises(OperatorError, match="party carrier-b sent a malformed") as err:
        STATS.run(ctx)
    assert needle in str(err.value)


def test_a_malformed_header_names_its_sender(tmp_path):
    a, b = memory_pair("job-s", "stats", names=("bank-a", "carrier-b"))
    ctx = PartyContext(job_id="job-s", role="guest", node_id="bank-a",
                       parties={"bank-a": "guest", "carrier-b": "host"},
                       sessions={"carrier-b": a}, params={"columns": "a"},
                       dataset=csv_set(tmp_path, "x", ["a"], [[1]]), timeout=5)
    b.send({"t": "stats/header", "params": "x", "columns": None, "problems": "none"})
    with pytest.raises(OperatorError, match="party carrier-b sent a malformed stats header"):
        STATS.run(ctx)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"columns": "a", "stats": "quantiles"}, "quantiles needs its levels"),
        ({"columns": "a", "quantiles": "0.5,1.5"}, r"levels in \[0, 1\]"),
        ({"columns": "a", "stats": "median", "group_by": "g"}, "median with group_by is not"),
        ({"columns": "a", "stats": "min", "dp_epsilon": "1", "dp_bounds": "a:0:1"},
         "min with dp_epsilon is not built"),
        ({"columns": "a", "layout": "diagonal"}, "layout must be rows or columns"),
        ({"columns": "a", "stats": "var", "dp_epsilon": "1.0"}, "dp_bounds=a:LOW:HIGH"),
        ({"columns": "a", "stats": "sum", "dp_epsilon": "1.0"}, "dp_bounds=a:LOW:HIGH"),
        ({"columns": "a", "dp_epsilon": "0"}, r"dp_epsilon must be in \(0, 100\]"),
        ({"columns": "a", "dp_delta": "1e-6"}, "need dp_epsilon"),
        ({"columns": "a", "group_by": "a"}, "group_by names one column that is not"),
        ({"columns": "a", "groups": "x,y"}, "groups needs group_by"),
        ({"columns": "a", "stats": "threshold"}, "threshold needs its value"),
        ({"columns": "a", "threshold": "x"}, "threshold is a number"),
        ({"columns": "a", "stats": "hist"}, "hist needs its bin edges"),
        ({"columns": "a", "hist": "3,1"}, "increasing bin edges"),
        ({"columns": "a", "stats": "mode"}, "unknown statistic 'mode'"),
        ({"stats": "sum"}, "needs columns"),
        ({"columns": "a", "receivers": "bob"}, "receivers must be"),
    ],
)
def test_what_is_not_built_or_wrong_is_refused_by_name(params, needle):
    with pytest.raises(OperatorError, match=needle):
        plan_of(params)


def test_registered_with_its_grade_policy_statement():
    assert REGISTRY["stats"] is STATS and STATS.family == "stats"
    assert STATS.describe()["provider"] == "pec"
    assert stated_for("guest", {"columns": "a"}) == {"noise": "none"}
    assert stated_for("host", {"columns": "a", "dp_epsilon": "0.5"}) == {"noise": "dp"}


# -- group-by and differential privacy -------------------------------------------------------------

def grouped_tables(rng: np.random.Generator, parties: list[str]) -> dict[str, Any]:
    out = {}
    for i, p in enumerate(parties):
        rows = 300 + 50 * i
        region = rng.choice(["north", "south", "east"] if i else ["north", "west"], rows)
        out[p] = TableReader(pa.table({"id": [f"{p}{j}" for j in range(rows)],
                                       "region": region,
                                       "a": rng.normal(50, 10, rows).round(2),
                                       "b": rng.integers(0, 100, rows)}))
    return out


def test_group_by_sums_and_counts_equal_pandas_style_pooling():
    rng = np.random.default_rng(3)
    names = NAMES[:3]
    data = grouped_tables(rng, names)
    res = run_all(names, data, {"columns": "a,b", "stats": "count,sum", "group_by": "region"})
    pooled = pa.concat_tables([d.table for d in data.values()])
    region = np.array(pooled.column("region").to_pylist())
    a = pooled.column("a").to_numpy()
    for r in res.values():
        assert not isinstance(r, BaseException), r
        stats = r["stats"]
        assert set(stats["group_count"]["region"]) == {"north", "south", "east", "west"}
        for g in ("north", "south", "east", "west"):
            assert stats["group_count"]["region"][g] == int((region == g).sum())
            assert stats["group_sum"]["a"][g] == pytest.approx(a[region == g].sum(), rel=1e-9)
    # stated groups: a value outside them is left out, a group nobody has counts zero
    res = run_all(names, data, {"columns": "a", "stats": "count", "group_by": "region",
                                "groups": "north,nowhere"})
    counts = res["bank-a"]["stats"]["group_count"]["region"]
    assert counts == {"north": int((region == "north").sum()), "nowhere": 0}


def test_dp_noise_is_calibrated_and_recorded_and_bounds_clip():
    rng = np.random.default_rng(4)
    names = NAMES[:2]
    data = grouped_tables(rng, names)
    params = {"columns": "a", "stats": "count,sum,mean", "dp_epsilon": "1.0",
              "dp_bounds": "a:0:100"}
    true_count = sum(d.table.num_rows for d in data.values())
    true_sum = sum(float(np.clip(d.table.column("a").to_numpy(), 0, 100).sum())
                   for d in data.values())
    counts, sums = [], []
    for _ in range(40):
        res = run_all(names, data, params)
        r = res["bank-a"]
        assert not isinstance(r, BaseException), r
        assert r["stats"] == res["carrier-b"]["stats"]  # one noisy release, the same at all
        counts.append(r["stats"]["count"]["a"])
        sums.append(r["stats"]["sum"]["a"])
    dp = r["dp"]
    assert dp["mechanism"] == "laplace" and dp["queries"] == 2
    # Laplace scale b = sensitivity * queries / epsilon: 2 for the count, 200 for the sum
    assert dp["noise_scale"] == {"count": 2.0, "sum:a": 200.0}
    dev_c = np.array(counts) - true_count
    dev_s = np.array(sums) - true_sum
    assert 0 < np.abs(dev_c).mean() < 2 * 3 and 0 < np.abs(dev_s).mean() < 200 * 3
    assert np.abs(dev_c).max() < 2 * 20 and np.abs(dev_s).max() < 200 * 20
    # the Gaussian mechanism with delta
    res = run_all(names, data, {**params, "dp_delta": "1e-6", "stats": "count"})
    assert res["bank-a"]["dp"]["mechanism"] == "gaussian"
    assert abs(res["bank-a"]["stats"]["count"]["a"] - true_count) < 100


def test_threshold_count_and_sum_equal_numpy_with_negatives_and_ties():
    rng = np.random.default_rng(8)
    names = NAMES[:3]
    data = grouped_tables(rng, names)
    res = run_all(names, data, {"columns": "a,b", "threshold": "50"})
    pooled = pa.concat_tables([d.table for d in data.values()])
    for col in ("a", "b"):
        v = pooled.column(col).to_numpy().astype(float)
        got = res["carrier-b"]["stats"]["threshold"][col]
        assert got["count"] == int((v > 50).sum())  # strictly above: 50 itself is out
        assert got["sum"] == pytest.approx(v[v > 50].sum(), rel=1e-12)


def test_dp_moments_have_calibrated_noise_and_stay_in_range():
    rng = np.random.default_rng(9)
    names = NAMES[:3]
    data = grouped_tables(rng, names)
    pooled = pa.concat_tables([d.table for d in data.values()])
    a = np.clip(pooled.column("a").to_numpy(), 0, 100)
    res = run_all(names, data, {"columns": "a,b", "stats": "mean,var,corr",
                                "dp_epsilon": "8", "dp_bounds": "a:0:100,b:0:99"})
    r = res["bank-a"]
    assert not isinstance(r, BaseException), r
    scales = r["dp"]["noise_scale"]
    # count, 2 sums, 3 cross sums: 6 queries; a row adds at most 100*100 to a's squares
    assert r["dp"]["queries"] == 6 and scales["cross:0:0"] == 100 * 100 * 6 / 8
    assert scales["cross:0:1"] == 100 * 99 * 6 / 8
    assert abs(r["stats"]["mean"]["a"] - a.mean()) < 5
    assert r["stats"]["var"]["a"] >= 0 and -1 <= r["stats"]["corr"]["a"]["b"] <= 1


# -- order statistics (min, max, median, quantiles) in SPU -----------------------------------

def _pooled_check(res: dict[str, Any], pooled: np.ndarray, cols: list[str],
                  levels: list[float]) -> None:
    for i, c in enumerate(cols):
        v = pooled[:, i]
        st = res["stats"]
        # the engine's fixed point has 40 fractional bits: an order statistic is the value
        # itself to about 1e-12, an interpolated quantile to the same
        assert st["min"][c] == pytest.approx(v.min(), abs=1e-9)
        assert st["max"][c] == pytest.approx(v.max(), abs=1e-9)
        assert st["median"][c] == pytest.approx(np.median(v), abs=1e-9)
        for q in levels:
            assert st["quantiles"][c][repr(q)] == pytest.approx(np.quantile(v, q), abs=1e-9)


@pytest.mark.parametrize("n", [2, 3])
def test_order_statistics_equal_numpy_on_the_pooled_rows(tmp_path, n):
    rng = np.random.default_rng(40 + n)
    names = NAMES[:n]
    parts = {p: party_rows(rng, int(rng.integers(40, 90))) for p in names}
    parts[names[-1]][0, 0] = -1e9  # one extreme, far out
    parts[names[0]][:3, 1] = 0.0  # ties
    data = {p: csv_set(tmp_path, p, COLS, x.tolist()) for p, x in parts.items()}
    levels = [0.0, 0.1, 0.25, 0.9, 1.0]
    params = {"columns": "a,b,c", "stats": "count,mean,min,max,median",
              "quantiles": ",".join(map(str, levels)), "receivers": "initiator"}
    ctxs = local_contexts(names, params, data, job_id="job-o", timeout=60,
                          output_root=tmp_path / "out")
    res = run_parties(STATS.run, ctxs, timeout=240)
    for p in names:
        assert not isinstance(res[p], Exception), (p, res[p])
    guest = res[names[0]]
    pooled = np.concatenate(list(parts.values()))
    assert guest["stats"]["count"]["a"] == len(pooled)
    assert guest["stats"]["mean"]["c"] == pytest.approx(pooled[:, 2].mean(), rel=1e-9)
    _pooled_check(guest, pooled, COLS, levels)
    assert guest["order_engine"]["protocol"] == ("CHEETAH" if n == 2 else "ABY3")
    for p in names[1:]:  # a receipt, no statistic
        assert res[p]["received"] is False and "stats" not in res[p]
    assert not list((tmp_path / "out").rglob(".spu-stats-*")), "engine scratch left behind"


def test_order_statistics_with_an_empty_party_and_a_value_past_the_fixed_point(tmp_path):
    names = NAMES[:2]
    data = {names[0]: csv_set(tmp_path, "a0", ["a"], [[3.5], [-1.25], [7.0]]),
            names[1]: TableReader(pa.table({"id": pa.array([], pa.string()),
                                            "a": pa.array([], pa.float64())}))}
    res = run_parties(STATS.run, local_contexts(names, {"columns": "a", "stats": "min,max,median"},
                                                data, job_id="job-e", timeout=60,
                                                output_root=tmp_path / "o1"), timeout=120)
    for p in names:
        assert res[p]["stats"]["median"]["a"] == 3.5 and res[p]["stats"]["min"]["a"] == -1.25
    big = {names[0]: csv_set(tmp_path, "b0", ["a"], [[1.0], [2.0 ** 41]]),
           names[1]: csv_set(tmp_path, "b1", ["a"], [[2.0]])}
    res = run_parties(STATS.run, local_contexts(names, {"columns": "a", "stats": "max"}, big,
                                                job_id="job-f", timeout=60,
                                                output_root=tmp_path / "o2"), timeout=120)
    for p in names:
        assert isinstance(res[p], OperatorError) and "beyond the fixed point" in str(res[p])


@pytest.mark.parametrize("n", [4, 5])
def test_order_statistics_among_four_or_five_parties_three_compute(tmp_path, n):
    # the guest last by node id: it computes all the same, with the first two others
    names = ["hospital-c"] + [p for p in NAMES[:n] if p != "hospital-c"]
    rng = np.random.default_rng(70 + n)
    parts = {p: party_rows(rng, int(rng.integers(10, 30))) for p in names}
    data = {p: csv_set(tmp_path, p, COLS, x.tolist()) for p, x in parts.items()}
    levels = [0.25, 0.75]
    params = {"columns": "a,b,c", "stats": "count,sum,min,max,median",
              "quantiles": ",".join(map(str, levels))}
    res = run_parties(STATS.run, local_contexts(names, params, data, job_id=f"job-{n}",
                                                timeout=60, output_root=tmp_path / "o"),
                      timeout=300)
    pooled = np.concatenate(list(parts.values()))
    computing = sorted(["hospital-c", *sorted(names[1:])[:2]])
    for p in names:  # receivers=all: the providing parties get the result too
        assert not isinstance(res[p], Exception), (p, res[p])
        _pooled_check(res[p], pooled, COLS, levels)
        assert res[p]["order_engine"]["protocol"] == "ABY3"
        assert res[p]["order_engine"]["computing"] == computing
        assert res[p]["order_engine"].get("provided", False) == (p not in computing)
    assert not list((tmp_path / "o").rglob(".spu-stats-*")), "engine scratch left behind"
