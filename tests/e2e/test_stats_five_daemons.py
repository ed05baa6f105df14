"""Joint statistics among five real daemons (each its own state, HSM and TPM, mTLS sessions on
loopback): both layouts, through the API, the CLI and the panel, against numpy. With five
parties SPU computes among three of them and the other two provide their inputs as shares."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.e2e.test_federation import Node, cli, enrol, panel_of, run_with_partners, stats_form

pytestmark = pytest.mark.slow

IDS = ["node-a", "node-b", "node-c", "node-d", "node-e"]


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    base = tmp_path_factory.mktemp("five")
    rng = np.random.default_rng(55)
    made = [Node(base, node_id, f"Org {node_id[-1].upper()}", 40 + 30 * i)
            for i, node_id in enumerate(IDS)]
    accounts: dict[str, dict[int, float]] = {}
    try:
        for i, n in enumerate(made):
            n.start()
            n.api.post("/v1/datasets", {"name": "customers", "path": str(n.data),
                                        "id_column": "id", "grade": "L3"})
            held = sorted(rng.choice(200, 150, replace=False).tolist())
            vals = rng.normal(100.0 * i, 50.0, len(held)).round(2)
            accounts[n.node_id] = dict(zip(held, vals.tolist(), strict=True))
            path = base / f"{n.node_id}-accounts.csv"
            path.write_text(f"uid,bal{i}\n" + "".join(f"u{k},{v!r}\n" for k, v in
                                                     accounts[n.node_id].items()))
            n.api.post("/v1/datasets", {"name": "accounts", "path": str(path),
                                        "id_column": "uid", "grade": "L3"})
        for i, a in enumerate(made):
            for b in made[i + 1:]:
                enrol(a, b)
        yield made, accounts
    finally:
        for n in made:
            n.daemon.stop_now()


def _joined(accounts: dict[str, dict[int, float]]) -> np.ndarray:
    common = sorted(set.intersection(*(set(a) for a in accounts.values())))
    return np.array([[accounts[p][k] for p in IDS] for k in common])


def test_rows_layout_among_five_daemons_with_order_statistics(five):
    nodes, _ = five
    a = nodes[0]
    job = a.api.post("/v1/jobs", {"kind": "stats", "params": {
        "peers": IDS[1:], "dataset": "customers",
        "peer_datasets": {p: "customers" for p in IDS[1:]},
        "columns": "v", "stats": "count,sum,mean,var,min,max,median"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=300)
    assert job["state"] == "done", job["error"]
    pooled = np.concatenate([np.arange(n.rows, dtype=float) for n in nodes])
    out = job["result"]["outputs"]
    s = out["stats"]
    assert s["count"]["v"] == len(pooled) and s["sum"]["v"] == pooled.sum()
    assert abs(s["var"]["v"] - pooled.var()) <= 1e-6 * pooled.var()
    assert s["max"]["v"] == pooled.max() and abs(s["median"]["v"] - np.median(pooled)) < 1e-9
    assert out["order_engine"]["computing"] == ["node-a", "node-b", "node-c"]
    for n in nodes[3:]:  # the providing daemons receive the result from node-a
        side = n.api.get("/v1/jobs", kind="stats")["jobs"][0]
        side = n.daemon.wait_job(side["id"], {"done", "failed"}, timeout=60)
        assert side["state"] == "done", side["error"]
        assert side["result"]["outputs"]["stats"]["median"]["v"] == s["median"]["v"]
        assert side["result"]["outputs"]["order_engine"]["provided"] is True


def test_columns_layout_among_five_daemons_through_the_cli_and_the_panel(five):
    nodes, accounts = five
    a = nodes[0]
    x = _joined(accounts)
    names = [f"{p}.bal{i}" for i, p in enumerate(IDS)]
    peer_args = [arg for p in IDS[1:] for arg in ("--peer", p)]
    run = cli("jobs", "submit", "stats", *peer_args, "--param", "dataset=accounts",
              "--param", "peer_datasets=" + ",".join(f"{p}=accounts" for p in IDS[1:]),
              "--param", "layout=columns",
              "--param", "columns=self.bal0," + ",".join(names[1:]),
              "--param", "stats=count,sum,mean,std,corr", "--param", "threshold=1200",
              "--param", "receivers=initiator", "--wait", "--json",
              "--state-dir", str(a.state), timeout=400)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    out = json.loads(run.stdout)["result"]["outputs"]
    s = out["stats"]
    assert out["engine"]["protocol"] == "ABY3" and s["count"][names[0]] == len(x) > 3
    corr = np.corrcoef(x, rowvar=False)
    for i, c in enumerate(names):
        assert abs(s["sum"][c] - x[:, i].sum()) <= 1e-6 * abs(x[:, i].sum())
        assert abs(s["std"][c] - x[:, i].std()) <= 1e-6 * x[:, i].std()
        assert abs(s["corr"][c][names[-1]] - corr[i, -1]) <= 1e-6
    row_sum = x.sum(axis=1)
    assert s["threshold"]["row_sum"]["count"] == int((row_sum > 1200).sum())
    # the panel: every party receives; a providing daemon's copy equals the initiator's
    client, token = panel_of(a)
    form = stats_form("accounts", IDS[1:], layout="columns", columns=",".join(names),
                      stats="count,min,median", receivers="all")
    job, _ = run_with_partners(a, client, token, form, timeout=400)
    assert job["state"] == "done", job["error"]
    s = job["result"]["outputs"]["stats"]
    for i, c in enumerate(names):
        assert abs(s["min"][c] - x[:, i].min()) < 1e-9
        assert abs(s["median"][c] - np.median(x[:, i])) < 1e-9
    side = nodes[4].api.get("/v1/jobs", kind="stats")["jobs"][0]
    side = nodes[4].daemon.wait_job(side["id"], {"done", "failed"}, timeout=60)
    assert side["state"] == "done", side["error"]
    assert side["result"]["outputs"]["stats"] == s
