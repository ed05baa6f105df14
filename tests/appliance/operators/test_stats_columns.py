"""The stats operator's columns (vertical) layout: parties hold different columns of the same
ids; real SPU engines (CHEETAH, ABY3, and three computing with two providing) join them
inside SPU and every statistic is checked against numpy on the plaintext join."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pytest

from appliance.federation.datasets import DatasetRegistry
from appliance.operators.base import OperatorError, local_contexts, run_parties
from appliance.operators.stats import STATS
from appliance.operators.stats.columns import keys_of
from tests.appliance.operators.readers import Reader, TableReader

NAMES = ["bank-a", "carrier-b", "hospital-c", "city-d", "broker-e"]
EDGES = [-1000.0, 0.0, 50.0, 1e13]
LEVELS = [0.0, 0.3, 0.75, 1.0]


def keyed_set(tmp_path: Path, name: str, ids: list[Any], cols: dict[str, np.ndarray]
              ) -> Reader:
    path = tmp_path / f"{name}.csv"
    header = ",".join(["uid", *cols])
    lines = [",".join([str(i), *(repr(float(cols[c][r])) for c in cols)])
             for r, i in enumerate(ids)]
    path.write_text(header + "\n" + "".join(ln + "\n" for ln in lines))
    registry = DatasetRegistry(sqlite3.connect(tmp_path / f"{name}.db", check_same_thread=False))
    registry.add(name, str(path), "uid", actor="test")
    return Reader(registry, name)


def run_ok(tmp_path: Path, names: list[str], params: dict[str, Any], data: dict[str, Any],
           job_id: str, timeout: float = 300) -> dict[str, Any]:
    """One job, every party in this process (output beside ``tmp_path/o``); each party's
    result, none of them an error."""
    res = run_parties(STATS.run, local_contexts(names, params, data, job_id=job_id, timeout=60,
                                                output_root=tmp_path / "o"), timeout=timeout)
    for p in names:
        assert not isinstance(res[p], Exception), (p, res[p])
    return res


def joined(parts: dict[str, tuple[list[Any], dict[str, np.ndarray]]],
           columns: list[tuple[str, str]]) -> np.ndarray:
    """numpy's join on the plaintext: the rows of the ids every party holds."""
    common = set.intersection(*(set(ids) for ids, _ in parts.values()))
    order = sorted(common, key=str)
    out = np.empty((len(order), len(columns)))
    for j, (party, col) in enumerate(columns):
        ids, cols = parts[party]
        at = {v: r for r, v in enumerate(ids)}
        out[:, j] = [cols[col][at[v]] for v in order]
    return out


def check(res: dict[str, Any], x: np.ndarray, names: list[str], stats: set[str],
          threshold: float | None = None) -> None:
    s = res["stats"]
    assert s["count"][names[0]] == len(x)
    for i, c in enumerate(names):
        v = x[:, i]
        if "sum" in stats:
            assert s["sum"][c] == pytest.approx(v.sum(), rel=1e-9, abs=1e-6)
        if "mean" in stats:
            assert s["mean"][c] == pytest.approx(v.mean(), rel=1e-9, abs=1e-9)
        if "var" in stats:
            assert s["var"][c] == pytest.approx(v.var(), rel=1e-6, abs=1e-9)
            assert s["std"][c] == pytest.approx(v.std(), rel=1e-6, abs=1e-9)
        if "cov" in stats:
            cov = np.cov(x, rowvar=False, bias=True)
            corr = np.corrcoef(x, rowvar=False)
            for j, d in enumerate(names):
                assert s["cov"][c][d] == pytest.approx(cov[i, j], rel=1e-6, abs=1e-6)
                assert s["corr"][c][d] == pytest.approx(corr[i, j], rel=1e-6, abs=1e-9)
        if "hist" in stats:
            assert s["hist"][c]["counts"] == np.histogram(v, bins=EDGES)[0].tolist()
        if "min" in stats:  # SPU's fixed point: 40 fractional bits
            assert s["min"][c] == pytest.approx(v.min(), abs=1e-9)
            assert s["max"][c] == pytest.approx(v.max(), abs=1e-9)
        if "median" in stats:
            assert s["median"][c] == pytest.approx(np.median(v), abs=1e-9)
            for q in LEVELS:
                assert s["quantiles"][c][repr(q)] == pytest.approx(np.quantile(v, q), abs=1e-9)
    if threshold is not None:
        row_sum = x.sum(axis=1)
        t = s["threshold"]["row_sum"]
        assert t["columns"] == names and t["threshold"] == threshold
        assert t["count"] == int((row_sum > threshold).sum())
        assert t["sum"] == pytest.approx(row_sum[row_sum > threshold].sum(), rel=1e-9, abs=1e-6)


def three_parties(rng: np.random.Generator) -> dict[str, tuple[list[Any], dict[str, np.ndarray]]]:
    universe = np.arange(400)
    a_ids = rng.choice(universe, 150, replace=False)
    b_ids = rng.choice(universe, 170, replace=False)
    c_ids = rng.choice(universe, 200, replace=False)
    assets = rng.normal(30.0, 40.0, 150).round(2)
    assets[:4] = [0.0, -12.5, 0.0, 5.0e7]  # zeros, a negative, one that makes it scaled
    return {
        "bank-a": (list(a_ids), {"assets": assets,
                                 "age": rng.integers(18, 90, 150).astype(float)}),
        "carrier-b": (list(b_ids), {"assets": rng.normal(5.0, 20.0, 170).round(3)}),
        "hospital-c": (list(c_ids), {}),  # only ids: it narrows the join
    }


ALL = "count,sum,mean,var,std,cov,corr,min,max,median"


@pytest.mark.parametrize("n", [2, 3])
def test_every_statistic_of_the_join_matches_numpy(tmp_path, n):
    rng = np.random.default_rng(10 + n)
    parts = dict(list(three_parties(rng).items())[:n])
    names = list(parts)
    data = {p: keyed_set(tmp_path, p, ids, cols) for p, (ids, cols) in parts.items()}
    columns = [("bank-a", "assets"), ("carrier-b", "assets"), ("bank-a", "age")]
    params = {"layout": "columns", "columns": "self.assets,carrier-b.assets,bank-a.age",
              "stats": ALL, "hist": ",".join(map(str, EDGES)), "threshold": "40",
              "quantiles": ",".join(map(str, LEVELS)), "receivers": "initiator"}
    ctxs = local_contexts(names, params, data, job_id=f"job-c{n}", timeout=60,
                          output_root=tmp_path / "out")
    res = run_parties(STATS.run, ctxs, timeout=300)
    for p in names:
        assert not isinstance(res[p], Exception), (p, res[p])
    guest = res["bank-a"]
    x = joined(parts, columns)
    assert 10 < len(x) < 150
    qualified = ["bank-a.assets", "carrier-b.assets", "bank-a.age"]
    assert guest["columns"] == qualified and guest["layout"] == "columns"
    assert guest["key"] == "uid"
    check(guest, x, qualified, {"sum", "mean", "var", "cov", "hist", "min", "median"}, 40.0)
    assert guest["engine"]["protocol"] == ("CHEETAH" if n == 2 else "ABY3")
    # 5e7^2 puts bank-a's assets past 2^45: its products are formed scaled by 2^-4
    assert guest["scaled"] == {"bank-a.assets": 4}
    for p in names[1:]:  # a receipt: not even the join's size
        assert res[p]["received"] is False and "stats" not in res[p]
    assert not list((tmp_path / "out").rglob(".spu-stats-*")), "engine scratch left behind"


def test_five_parties_three_compute_two_provide(tmp_path):
    rng = np.random.default_rng(5)
    universe = [f"cust-{i}" for i in range(120)]
    parts: dict[str, tuple[list[Any], dict[str, np.ndarray]]] = {}
    for g, p in enumerate(NAMES):
        ids = list(rng.choice(universe, 100, replace=False))
        parts[p] = (ids, {"v": rng.normal(10.0 * g, 5.0, 100).round(3)})
    data = {p: keyed_set(tmp_path, p, ids, cols) for p, (ids, cols) in parts.items()}
    params = {"layout": "columns", "columns": ",".join(f"{p}.v" for p in NAMES),
              "stats": "count,sum,mean,cov,corr,max", "threshold": "100"}
    res = run_parties(STATS.run, local_contexts(NAMES, params, data, job_id="job-c5",
                                                timeout=60, output_root=tmp_path / "o"),
                      timeout=300)
    x = joined(parts, [(p, "v") for p in NAMES])
    assert len(x) > 5
    names = [f"{p}.v" for p in NAMES]
    for p in NAMES:  # every party receives, the providing ones from the first computing one
        assert not isinstance(res[p], Exception), (p, res[p])
        check(res[p], x, names, {"sum", "mean", "cov"}, 100.0)
        assert res[p]["engine"]["computing"] == ["bank-a", "broker-e", "carrier-b"]
        assert res[p]["engine"].get("provided", False) == (p in ("city-d", "hospital-c"))


def test_integer_ids_and_an_empty_join(tmp_path):
    names = NAMES[:2]
    a = keyed_set(tmp_path, "a", [1, 2, 3], {"x": np.array([1.0, 2.0, 3.0])})
    b = keyed_set(tmp_path, "b", [7, 8], {"y": np.array([5.0, 6.0])})
    params = {"layout": "columns", "columns": "bank-a.x,carrier-b.y",
              "stats": "count,sum,mean,median", "threshold": "0"}
    res = run_parties(STATS.run, local_contexts(names, params, {"bank-a": a, "carrier-b": b},
                                                job_id="job-e", timeout=60,
                                                output_root=tmp_path / "o"), timeout=200)
    for p in names:
        r = res[p]
        assert not isinstance(r, Exception), (p, r)
        s = r["stats"]
        assert s["count"]["bank-a.x"] == 0 and s["sum"]["carrier-b.y"] == 0.0
        assert s["mean"]["bank-a.x"] is None and s["median"]["carrier-b.y"] is None
        assert s["threshold"]["row_sum"]["count"] == 0
        assert r["undefined"]["median"] == "the pooled data set has no rows"
    # a party without rows: nothing to join, no engine
    empty = TableReader(pa.table({"id": pa.array([], pa.int64()), "y": pa.array([], pa.float64())}))
    res = run_parties(STATS.run, local_contexts(names, {**params, "key": "id"},
                                                {"bank-a": TableReader(pa.table(
                                                    {"id": [1, 2], "x": [1.0, 2.0]})),
                                                 "carrier-b": empty}, job_id="job-f",
                                                timeout=20), timeout=60)
    for p in names:
        assert res[p]["stats"]["count"]["bank-a.x"] == 0, res[p]
        assert res[p]["engine"] == {"skipped": "a party has no rows"}


def test_a_join_of_one_row(tmp_path):
    names = NAMES[:2]
    data = {"bank-a": TableReader(pa.table({"id": ["k1", "k2"], "x": [-3.25, 7.0]})),
            "carrier-b": TableReader(pa.table({"id": ["k2", "k9"], "y": [0.0, 4.0]}))}
    params = {"layout": "columns", "columns": "bank-a.x,carrier-b.y",
              "stats": "count,sum,mean,var,corr,median", "threshold": "6.5"}
    res = run_parties(STATS.run, local_contexts(names, params, data, job_id="job-1",
                                                timeout=60, output_root=tmp_path / "o"),
                      timeout=200)
    for p in names:
        r = res[p]
        assert not isinstance(r, Exception), (p, r)
        s = r["stats"]
        assert s["count"]["bank-a.x"] == 1 and s["sum"]["bank-a.x"] == 7.0
        assert s["mean"]["carrier-b.y"] == 0.0 and s["var"]["bank-a.x"] == 0.0
        assert s["median"]["bank-a.x"] == pytest.approx(7.0, abs=1e-12)
        assert s["corr"]["bank-a.x"]["carrier-b.y"] is None and "corr" in r["undefined"]
        assert s["threshold"]["row_sum"]["count"] == 1
        assert s["threshold"]["row_sum"]["sum"] == pytest.approx(7.0, abs=1e-12)


@pytest.mark.parametrize(("tables", "params", "message"), [
    ({"bank-a": {"id": ["k1", "k1"], "x": [1.0, 2.0]}, "carrier-b": {"id": ["k1"], "y": [1.0]}},
     {}, "party bank-a: key column 'id' has 1 repeated ids"),
    ({"bank-a": {"id": ["k1"], "x": [1.0]}, "carrier-b": {"id": ["k1"], "z": [1.0]}},
     {}, "party carrier-b: has no column 'y'"),
    ({"bank-a": {"id": ["k1"], "x": [1.0]}, "carrier-b": {"id": ["k1"], "y": ["one"]}},
     {}, "party carrier-b: column 'y' is non-numeric"),
    ({"bank-a": {"id": ["k1"], "x": [2.0 ** 40]}, "carrier-b": {"id": ["k1"], "y": [1.0]}},
     {}, "party bank-a: column 'x' has values past +-2^40"),
    ({"bank-a": {"id": ["k1"], "x": [float("nan")]}, "carrier-b": {"id": ["k1"], "y": [1.0]}},
     {}, "party bank-a: column 'x' has NaN or infinite values"),
    ({"bank-a": {"id": [1], "x": [1.0]}, "carrier-b": {"id": ["1"], "y": [1.0]}},
     {}, "the key columns differ in type: party bank-a's is int, party carrier-b's is string"),
    ({"bank-a": {"id": [1.5], "x": [1.0]}, "carrier-b": {"id": [1.5], "y": [1.0]}},
     {}, "key column 'id' is double (an id column is integer or string)"),
    ({"bank-a": {"id": ["k1"], "x": [1.0]}, "carrier-b": {"id": ["k1"], "y": [1.0]}},
     {"columns": "bank-a.x,nobody.y"}, "a column is PARTY.COLUMN with a party of the job"),
])
def test_bad_data_fails_every_party_alike(tmp_path, tables, params, message):
    names = NAMES[:2]
    data = {p: TableReader(pa.table(t)) for p, t in tables.items()}
    base = {"layout": "columns", "columns": "bank-a.x,carrier-b.y", "stats": "count,sum"}
    res = run_parties(STATS.run, local_contexts(names, {**base, **params}, data,
                                                job_id="job-b", timeout=20), timeout=60)
    for p in names:
        assert isinstance(res[p], OperatorError), (p, res[p])
        assert message in str(res[p]), str(res[p])


def test_what_the_columns_layout_does_not_do_is_refused_by_name():
    from appliance.operators.stats.protocol import plan_of

    with pytest.raises(OperatorError, match="key=ID_COLUMN names the id column of layout"):
        plan_of({"columns": "x", "key": "id"})


def test_differential_privacy_on_the_join(tmp_path):
    rng = np.random.default_rng(21)
    names = NAMES[:2]
    ids_a, ids_b = list(range(0, 300)), list(range(100, 400))
    xa, xb = rng.normal(50.0, 20.0, 300), rng.normal(10.0, 5.0, 300)
    xa[0], xb[-1] = 1e4, -1e4  # clipped into the bounds (the first is outside the join)
    data = {"bank-a": keyed_set(tmp_path, "a", ids_a, {"x": xa}),
            "carrier-b": keyed_set(tmp_path, "b", ids_b, {"y": xb})}
    params = {"layout": "columns", "columns": "self.x,carrier-b.y",
              "stats": "count,sum,mean,var,cov", "hist": "-100,0,100", "threshold": "60",
              "dp_epsilon": "20", "dp_bounds": "self.x:-100:200,carrier-b.y:-50:50"}
    res = run_ok(tmp_path, names, params, data, "job-dp")
    out = res["bank-a"]
    dp = out["dp"]
    # the queries: count, 2 sums, 3 sums of products, 2 histograms, threshold count and sum
    assert dp["mechanism"] == "laplace" and dp["queries"] == 10
    scale = dp["noise_scale"]
    assert scale["count"] == pytest.approx(10 / 20)
    assert scale["sum:self.x"] == pytest.approx(200 * 10 / 20)
    assert scale["cross:self.x:carrier-b.y"] == pytest.approx(200 * 50 * 10 / 20)
    assert scale["threshold_sum"] == pytest.approx(250 * 10 / 20)
    assert out["dp"]["clipped_here"] == 1 and res["carrier-b"]["dp"]["clipped_here"] == 1
    x = joined({"bank-a": (ids_a, {"x": np.clip(xa, -100, 200)}),
                "carrier-b": (ids_b, {"y": np.clip(xb, -50, 50)})},
               [("bank-a", "x"), ("carrier-b", "y")])
    s = out["stats"]
    count = s["count"]["bank-a.x"]
    assert count != len(x) and abs(count - len(x)) < 20 * scale["count"]  # noisy, near
    assert abs(s["sum"]["carrier-b.y"] - x[:, 1].sum()) < 20 * scale["sum:carrier-b.y"]
    hist = s["hist"]["bank-a.x"]["counts"]
    assert abs(sum(hist) - len(x)) < 40 * scale["hist:self.x"]
    t = s["threshold"]["row_sum"]
    assert abs(t["count"] - int((x.sum(axis=1) > 60).sum())) < 20 * scale["threshold_count"]
    assert s["var"]["bank-a.x"] >= 0.0  # floored (post-processing)


@pytest.mark.parametrize("stated", [False, True])
def test_group_by_a_column_of_one_party(tmp_path, stated):
    rng = np.random.default_rng(31)
    names = NAMES[:3]
    ids = {p: list(rng.choice(300, 220, replace=False)) for p in names}
    region = {i: ["north", "south", "east"][i % 3] for i in range(300)}
    data = {
        "bank-a": keyed_set(tmp_path, "a", ids["bank-a"],
                            {"x": rng.normal(10.0, 3.0, 220)}),
        "carrier-b": keyed_set(tmp_path, "b", ids["carrier-b"],
                               {"y": rng.normal(-4.0, 2.0, 220)}),
    }
    # hospital-c holds the group column (a string) and no statistic's column
    path = tmp_path / "c.csv"
    path.write_text("uid,region\n" + "".join(f"{i},{region[i]}\n" for i in ids["hospital-c"]))
    registry = DatasetRegistry(sqlite3.connect(tmp_path / "c.db", check_same_thread=False))
    registry.add("c", str(path), "uid", actor="test")
    data["hospital-c"] = Reader(registry, "c")
    params = {"layout": "columns", "columns": "self.x,carrier-b.y",
              "group_by": "hospital-c.region", "stats": "count,sum",
              **({"groups": "north,south,west"} if stated else {})}
    res = run_ok(tmp_path, names, params, data, f"job-g{stated}")
    parts = {"bank-a": (ids["bank-a"], {"x": np.array(_column(data["bank-a"], "x"))}),
             "carrier-b": (ids["carrier-b"], {"y": np.array(_column(data["carrier-b"], "y"))}),
             "hospital-c": (ids["hospital-c"], {})}
    xg = joined(parts, [("bank-a", "x"), ("carrier-b", "y")])
    common = sorted(set.intersection(*(set(v) for v in ids.values())), key=str)
    labels = [region[k] for k in common]  # joined()'s row order
    s = res["bank-a"]["stats"]
    assert s["count"]["bank-a.x"] == len(common)
    want = ["north", "south", "west"] if stated else ["east", "north", "south"]
    counts = s["group_count"]["hospital-c.region"]
    assert list(counts) == want
    for g in want:
        rows = np.array([lab == g for lab in labels])
        assert counts[g] == int(rows.sum())
        for i, c in enumerate(["bank-a.x", "carrier-b.y"]):
            assert s["group_sum"][c][g] == pytest.approx(xg[rows, i].sum(), abs=1e-6)


def test_group_by_with_differential_privacy(tmp_path):
    names = NAMES[:2]
    ids = list(range(200))
    data = {"bank-a": TableReader(pa.table({"id": ids, "x": [float(i % 7) for i in ids],
                                            "g": ["odd" if i % 2 else "even" for i in ids]})),
            "carrier-b": TableReader(pa.table({"id": ids[50:], "y": [1.0] * 150}))}
    params = {"layout": "columns", "columns": "self.x,carrier-b.y", "group_by": "self.g",
              "stats": "count,sum", "dp_epsilon": "50",
              "dp_bounds": "self.x:0:10,carrier-b.y:0:2"}
    res = run_ok(tmp_path, names, params, data, "job-gdp")
    out = res["bank-a"]
    scale = out["dp"]["noise_scale"]
    # count, 2 sums, the group counts, 2 columns' group sums
    assert out["dp"]["queries"] == 6 and scale["group_sum:self.x"] == pytest.approx(10 * 6 / 50)
    counts = out["stats"]["group_count"]["bank-a.g"]
    assert abs(counts["even"] - 75) < 20 * scale["group_count"] and counts["even"] != 75
    assert abs(out["stats"]["group_sum"]["carrier-b.y"]["odd"] - 75) < 20 * scale[
        "group_sum:carrier-b.y"]


def _column(reader: Reader, name: str) -> list[Any]:
    return [v for b in reader.batches([name]) for v in b.column(name).to_pylist()]


def test_keys_are_the_same_for_the_same_id_and_differ_per_job():
    a = keys_of(["x", 7, "7"], "job-1")
    assert a.shape == (3, 2) and a.dtype == np.int64
    assert (a[1] == a[2]).all()  # the id's text: 7 and "7" are one id
    assert not (keys_of(["x"], "job-2")[0] == a[0]).any()


# -- faults: an engine killed, a providing party's malformed shares -----------------------------

def _four_parties(tmp_path: Path, rows: int = 400) -> tuple[list[str], dict[str, Any]]:
    rng = np.random.default_rng(9)
    names = NAMES[:4]
    data = {p: keyed_set(tmp_path, p, list(rng.choice(rows * 2, rows, replace=False)),
                         {"v": rng.normal(0.0, 1.0, rows)}) for p in names}
    return names, data


PARAMS4 = {"layout": "columns", "columns": ",".join(f"{p}.v" for p in NAMES[:4]),
           "stats": "count,sum,median"}


def _no_engine_left() -> None:
    deadline = time.monotonic() + 10
    while any("stats/spu_engine.py" in " ".join(p.info["cmdline"] or [])
              for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "an engine process outlived its job"
        time.sleep(0.1)


def test_a_computing_engine_killed_mid_job_fails_every_party(tmp_path):
    names, data = _four_parties(tmp_path)
    stop = threading.Event()
    killed: list[int] = []

    def kill_rank_1() -> None:
        while not stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "stats/spu_engine.py" in cmd and "--rank 1 " in cmd:
                    while not stop.is_set() and not [
                            c for c in p.net_connections() if c.status == "ESTABLISHED"]:
                        time.sleep(0.01)
                    time.sleep(0.5)  # inside the protocol
                    p.kill()
                    killed.append(p.pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    try:
        res = run_parties(STATS.run, local_contexts(names, PARAMS4, data, job_id="job-k",
                                                    timeout=30, output_root=tmp_path / "o"),
                          timeout=300)
    finally:
        stop.set()
        killer.join()
    assert killed
    for p in names:  # the computing parties and the providing one: an error, no statistic
        assert isinstance(res[p], OperatorError), (p, res[p])
    assert "exited with code -9" in str(res["carrier-b"])  # rank 1 of bank-a, carrier-b, city-d
    assert "engine failed" in str(res["bank-a"]) and "engine failed" in str(res["hospital-c"])
    assert not list((tmp_path / "o").rglob(".spu-stats-*")), "engine scratch left behind"
    _no_engine_left()


@pytest.mark.parametrize(("blob", "needle"), [
    (b"not a zip", "(not an .npz)"),
    (b"PK\x05\x06" + bytes(18), "arrays []"),
])
def test_a_providing_partys_malformed_shares_fail_the_job(tmp_path, blob, needle):
    from appliance.operators.stats.protocol import plan_of

    names, data = _four_parties(tmp_path, rows=30)
    dishonest = "hospital-c"  # not the initiator and last of four: it provides

    def party(ctx):
        if ctx.node_id != dishonest:
            return STATS.run(ctx)
        header = {"t": "stats/columns-header", "params": plan_of(PARAMS4).digest(),
                  "key": "string", "columns": {"v": "float"}, "exponents": {"v": 0}, "rows": 30,
                  "groups": None,
                  "problems": []}
        for s in ctx.sessions.values():
            s.send(header)
        for s in ctx.sessions.values():
            s.recv(timeout=20)
        for p in ("bank-a", "carrier-b", "city-d"):
            ctx.sessions[p].send_bytes(blob)
        return ctx.sessions["bank-a"].recv(timeout=60)  # the first computing party's word

    res = run_parties(party, local_contexts(names, PARAMS4, data, job_id="job-m", timeout=30,
                                            output_root=tmp_path / "o"), timeout=300)
    for p in ("bank-a", "carrier-b", "city-d"):
        assert isinstance(res[p], OperatorError), (p, res[p])
    assert f"party {dishonest} sent a malformed stats/shares message" in str(res["bank-a"])
    assert needle in str(res["bank-a"])
    assert res[dishonest]["t"] == "stats/spu_failed"  # told, not left waiting
    _no_engine_left()
