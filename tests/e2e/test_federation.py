"""Real daemons on loopback, each with its own state directory (SoftHSM2, swtpm, SQLite), enrol
each other, attest every session, run the count operator, and survive the faults: a forged
card, a changed PCR after enrolment, a peer killed mid-job, a cancelled job, a job refused by
grade policy or by a peer that never approved the initiator."""

from __future__ import annotations

import copy
import csv
import json
import re
import socket
import time
from pathlib import Path

import pytest

from appliance.client import DaemonError
from appliance.provision import init_state_dir
from appliance.state.statedir import StateDir
from tests.appliance import fakehost
from tests.appliance.daemon_proc import ADMIN_PASSWORD, Daemon, cli

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, base: Path, node_id: str, org: str, rows: int) -> None:
        self.node_id = node_id
        root = base / f"{node_id}-root"
        fakehost.standard().build(root)
        state = base / f"{node_id}-state"
        init_state_dir(StateDir(state), root=str(root), admin_password=ADMIN_PASSWORD,
                       node_id=node_id, federation={
                           "organisation": org,
                           "interconnect_listen": f"127.0.0.1:{free_port()}"})
        self.daemon = Daemon(state, root)
        self.state = state
        self.data = base / f"{node_id}.csv"
        self.data.write_text("id,v\n" + "".join(f"{node_id}-{i},{i}\n" for i in range(rows)))
        self.rows = rows

    @property
    def api(self):
        return self.daemon.client

    def start(self) -> None:
        self.daemon.start()
        self.api.put("/v1/profile/override", {"profile": "development"})

    def card(self) -> dict:
        return self.api.get("/v1/federation/card")


def enrol(a: Node, b: Node) -> None:
    """a and b enrol each other and approve each other's jobs."""
    b.api.post("/v1/peers", {"name": a.node_id, "card": a.card()})
    a.api.post("/v1/peers", {"name": b.node_id, "card": b.card()})
    a.api.post(f"/v1/peers/{b.node_id}/approve", {"accept": True})
    b.api.post(f"/v1/peers/{a.node_id}/approve", {"accept": True})


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    base = tmp_path_factory.mktemp("fed")
    made = [Node(base, "node-a", "Bank A", 1200), Node(base, "node-b", "Carrier B", 3400),
            Node(base, "node-c", "Hospital C", 50)]
    try:
        for n in made:
            n.start()
            n.api.post("/v1/datasets", {"name": "customers", "path": str(n.data),
                                        "id_column": "id", "grade": "L3"})
        a, b, c = made
        enrol(a, b)
        enrol(a, c)
        enrol(b, c)
        yield made
    finally:
        for n in made:
            n.daemon.stop_now()


def submit_count(a: Node, *peers: Node) -> dict:
    return a.api.post("/v1/jobs", {"kind": "count", "params": {
        "peers": [p.node_id for p in peers], "dataset": "customers",
        "peer_datasets": {p.node_id: "customers" for p in peers}}})


def ledger_actions(n: Node, action: str) -> list[dict]:
    return [r for r in n.api.get("/v1/audit", limit=500)["records"] if r["action"] == action]


def test_two_daemons_run_the_count_operator_with_signed_ledger_records(nodes):
    a, b, _ = nodes
    job = a.daemon.wait_job(submit_count(a, b)["id"], {"done", "failed"}, timeout=90)
    assert job["state"] == "done", job
    out = job["result"]["outputs"]
    assert out["own_rows"] == 1200 and out["peer_rows"] == {"node-b": 3400}
    b_job = b.api.get("/v1/jobs", kind="count")["jobs"][0]
    assert b.daemon.wait_job(b_job["id"], {"done", "failed"}, timeout=30)["state"] == "done"
    parties = a.api.get(f"/v1/jobs/{job['id']}/parties")["parties"]
    assert {(p["node_id"], p["role"], p["state"]) for p in parties} == {
        ("node-a", "guest", "done"), ("node-b", "host", "done")}
    # each side's ledger names the job, the peer, the data set's fingerprint, the output hash
    fed_id = job["result"]["job_id"]
    for n in (a, b):
        done = [r for r in ledger_actions(n, "federation.job.done")
                if r["object"] == f"job:{fed_id}"]
        assert len(done) == 1, n.node_id
        details = done[0]["details"]
        ds = n.api.get("/v1/datasets/customers")
        assert details["dataset_fingerprint"] == ds["fingerprint"]
        assert details["operator"] == "count" and len(details["output_hash"]) == 64
    b_hash = next(p["output_hash"] for p in parties if p["node_id"] == "node-b")
    b_done = next(r for r in ledger_actions(b, "federation.job.done")
                  if r["object"] == f"job:{fed_id}")
    assert b_done["details"]["output_hash"] == b_hash
    # both ledgers verify after the cross-node acts
    for n in (a, b):
        assert n.api.post("/v1/audit/verify")["ok"]


def test_three_daemons_through_the_cli(nodes):
    a = nodes[0]
    run = cli("jobs", "submit", "count", "--peer", "node-b", "--peer", "node-c",
              "--param", "dataset=customers",
              "--param", "peer_datasets=node-b=customers,node-c=customers",
              "--wait", "--json", "--state-dir", str(a.state), timeout=120)
    assert run.returncode == 0, run.stderr
    listing = cli("peers", "list", "--state-dir", str(a.state))
    assert "node-b" in listing.stdout and "active" in listing.stdout
    jobs = a.api.get("/v1/jobs", kind="count")["jobs"]
    assert jobs[0]["state"] == "done"
    assert jobs[0]["result"]["outputs"]["total_rows"] == 1200 + 3400 + 50
    show = cli("jobs", "show", str(jobs[0]["id"]), "--state-dir", str(a.state))
    assert show.stdout.count("party: node-") == 3 and "done" in show.stdout


def test_a_forged_card_is_refused_naming_the_check(nodes):
    a, b, _ = nodes
    card = b.card()
    forged = copy.deepcopy(card)
    forged["endpoint"] = "127.0.0.1:1"  # redirect the peer: the node's signature breaks
    with pytest.raises(DaemonError) as err:
        a.api.post("/v1/peers", {"name": "mallory", "card": forged})
    assert err.value.status == 422 and "node_signature" in err.value.message
    with pytest.raises(DaemonError) as err:
        a.api.post("/v1/peers", {"name": "again", "card": card})
    assert err.value.status == 409  # node-b is enrolled already
    refused = ledger_actions(a, "peer.refused")
    assert any(r["object"] == "peer:mallory" for r in refused)


def test_a_job_refused_by_grade_policy_names_the_rule(nodes, tmp_path):
    a, b, _ = nodes
    secret = tmp_path / "patients.csv"
    secret.write_text("id,v\n" + "".join(f"p{i},{i}\n" for i in range(20)))
    b.api.post("/v1/datasets", {"name": "patients", "path": str(secret), "id_column": "id",
                                "grade": "L4"})
    # node-b's own policy: no operator, not even a count, may touch its L4 data
    b.api.put("/v1/federation/grade-policy",
              {"overrides": {"grades": {"L4": {"count": False}},
                             "reasons": {"L4.count": "forbids even counting patients"}}})
    try:
        job = a.api.post("/v1/jobs", {"kind": "count", "params": {
            "peers": ["node-b"], "dataset": "customers",
            "peer_datasets": {"node-b": "patients"}}})
        job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=60)
        assert job["state"] == "failed", job
        assert "L4.count" in job["error"] and "forbids even counting patients" in job["error"]
        b_job = b.api.get("/v1/jobs", kind="count")["jobs"][0]
        assert b_job["state"] == "failed" and "L4.count" in b_job["error"]
    finally:
        b.api.put("/v1/federation/grade-policy", {"overrides": None})


def test_an_unapproved_peer_waits_for_an_admin_who_approves_or_declines(nodes):
    a, b, _ = nodes
    b.api.post("/v1/peers/node-a/approve", {"accept": False})
    try:
        # approved by node-b's admin: both sides run
        job = submit_count(a, b)
        a.daemon.wait_progress(job["id"], 4, timeout=30)
        pending = b.daemon.wait_job(b.api.get("/v1/jobs", kind="count")["jobs"][0]["id"],
                                    {"awaiting_approval"}, timeout=30)
        assert "awaiting an admin's approval" in pending["message"]
        assert "waiting for node-b to approve" in a.api.get(f"/v1/jobs/{job['id']}")["message"]
        run = cli("jobs", "approve", str(pending["id"]), "--state-dir", str(b.state))
        assert run.returncode == 0 and "approved by" in run.stdout, run.stderr
        assert a.daemon.wait_job(job["id"], {"done", "failed"}, 60)["state"] == "done"
        assert b.daemon.wait_job(pending["id"], {"done", "failed"}, 60)["state"] == "done"
        # declined (cancelled in the queue): the initiator fails at once, saying who declined
        job = submit_count(a, b)
        a.daemon.wait_progress(job["id"], 4, timeout=30)
        pending = b.daemon.wait_job(b.api.get("/v1/jobs", kind="count")["jobs"][0]["id"],
                                    {"awaiting_approval"}, timeout=30)
        b.api.post(f"/v1/jobs/{pending['id']}/cancel")
        job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=30)
        assert job["state"] == "failed" and "party node-b ended the job" in job["error"], job
    finally:
        b.api.post("/v1/peers/node-a/approve", {"accept": True})


def test_enrolment_against_a_published_golden_policy(nodes, tmp_path):
    a, b, _ = nodes
    golden = b.api.get("/v1/attestation/pcrs")
    card = b.card()
    policy = {"pcrs": {k: v for k, v in golden["pcrs"].items() if k != "1"}}
    wrong = {"pcrs": {**policy["pcrs"], "4": "ff" * 32}}
    with pytest.raises(DaemonError) as err:
        a.api.post("/v1/peers", {"name": "b-again", "card": card, "policy": wrong})
    assert err.value.status == 422 and "attestation.policy" in err.value.message
    with pytest.raises(DaemonError) as err:  # the right policy passes the quote: then the
        a.api.post("/v1/peers", {"name": "b-again", "card": card, "policy": policy})
    assert err.value.status == 409  # refusal is only that node-b is enrolled already


def test_cancel_propagates_to_the_peer(nodes):
    a, b, _ = nodes
    # keep node-b busy with an exclusive burn-in, so its side of the job waits in its queue
    burn = b.api.post("/v1/jobs", {"kind": "burnin", "params": {"seconds": 60}})
    b.daemon.wait_job(burn["id"], {"running"}, timeout=30)
    try:
        job = submit_count(a, b)
        a.daemon.wait_progress(job["id"], 55, timeout=60)  # sent its count, waiting for b's
        b_jobs = b.api.get("/v1/jobs", kind="count")["jobs"]
        assert b_jobs[0]["state"] == "queued"
        a.api.post(f"/v1/jobs/{job['id']}/cancel")
        assert a.daemon.wait_job(job["id"], {"cancelled", "failed"}, 30)["state"] == "cancelled"
        peer_job = b.daemon.wait_job(b_jobs[0]["id"], {"cancelled", "failed", "done"}, 30)
        assert peer_job["state"] == "cancelled" and "peer:node-a" in peer_job["message"]
    finally:
        b.api.post(f"/v1/jobs/{burn['id']}/cancel")
        b.daemon.wait_job(burn["id"], {"cancelled", "done", "failed"}, 30)


def test_a_changed_pcr_after_enrolment_quarantines_the_peer(nodes):
    a, _, c = nodes
    c.api.post("/v1/attestation/measure", {"pcr": 4, "data": "an unexpected bootloader"})
    job = a.daemon.wait_job(submit_count(a, c)["id"], {"done", "failed"}, timeout=60)
    assert job["state"] == "failed" and "quarantined" in job["error"], job
    peer = a.api.get("/v1/peers/node-c")
    assert peer["state"] == "quarantined" and "PCR 4" in peer["state_reason"]
    # refused while quarantined, until an admin pins the peer anew from a fresh card
    job = a.daemon.wait_job(submit_count(a, c)["id"], {"done", "failed"}, timeout=60)
    assert job["state"] == "failed" and "quarantined" in job["error"]
    page = panel_of(a)[0].get("/partners").get_data(as_text=True)
    assert "quarantined" in page and "PCR 4" in page  # what the admin sees, and why
    a.api.post("/v1/peers/node-c/reinstate", {"card": c.card()})
    assert a.api.get("/v1/peers/node-c")["state"] == "active"
    # node-b pinned node-c's old boot chain too: until it re-pins, node-b's own attestation
    # of node-c in any job they share fails (hosts attest each other)
    nodes[1].api.post("/v1/peers/node-c/reinstate", {"card": c.card()})


def test_a_peer_killed_mid_job_fails_the_job_with_a_reason(nodes):
    a, b, _ = nodes
    burn = b.api.post("/v1/jobs", {"kind": "burnin", "params": {"seconds": 60}})
    b.daemon.wait_job(burn["id"], {"running"}, timeout=30)
    job = submit_count(a, b)
    a.daemon.wait_progress(job["id"], 55, timeout=60)
    started = time.monotonic()
    b.daemon.kill()
    try:
        job = a.daemon.wait_job(job["id"], {"failed", "done"}, timeout=40)
        assert job["state"] == "failed" and "node-b" in job["error"], job
        assert time.monotonic() - started < 30
        assert job["result"] is None  # nothing partial kept
        assert a.api.get("/v1/status")["node_id"] == "node-a"  # and it keeps serving
    finally:
        b.daemon.stop_now()
        b.daemon.start()
    # b's side was still queued when b died; at its restart it asks the initiator first, and
    # ends at once instead of waiting for sessions that will never come
    b_job = b.api.get("/v1/jobs", kind="count")["jobs"][0]
    b_job = b.daemon.wait_job(b_job["id"], {"failed", "interrupted", "cancelled", "done"}, 30)
    assert b_job["state"] in ("failed", "interrupted"), b_job
    if b_job["state"] == "failed":
        assert "the initiator node-a has ended job" in b_job["error"]


def panel_of(n: Node):
    from appliance.panel.app import create_app
    from tests.appliance.panel.browser_forms import login

    app = create_app({"STATE_DIR": n.state})
    app.config["TESTING"] = True
    client = app.test_client()
    return client, login(client, "admin", ADMIN_PASSWORD)


def stats_form(dataset: str, peers: list[str], **fields: str) -> dict:
    """The panel's "Run with partners" form for a stats job: the same data set name at every
    partner, the stats fields given, and what the form posts for the other operators."""
    return {"operator": "stats", "dataset": dataset, "peers": peers,
            **{f"dataset_of_{p}": dataset for p in peers}, **fields,
            "reveal": "both", "algorithm": "homo_lr", "label": "", "rounds": "10",
            "clusters": "3", "secure_aggregation": "mask"}


def run_with_partners(n: Node, client, token: str, form: dict, timeout: float = 120
                      ) -> tuple[dict, str]:
    """Submit the panel's "Run with partners" form at ``n``; the job once finished and the
    path of its page."""
    from tests.appliance.panel.browser_forms import post

    answer = post(client, "/jobs/multi-party", form, token=token,
                  headers={"Referer": "http://localhost/jobs"})
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    found = re.fullmatch(r"/jobs/(\d+)", answer.headers["Location"])
    assert found, answer.headers["Location"]
    return n.daemon.wait_job(int(found.group(1)), {"done", "failed"}, timeout), found.group(0)


def test_the_panel_shows_partners_cards_parties_and_approves_a_peer_job(nodes):
    from tests.appliance.panel.browser_forms import post

    a, b, _ = nodes
    client, _token = panel_of(a)
    page = client.get("/partners").get_data(as_text=True)
    assert "node-b" in page and "node-c" in page and "Carrier B" in page
    card_page = client.get("/partners?card=1").get_data(as_text=True)
    assert 'id="node-card"' in card_page and "node-a" in card_page
    job = a.daemon.wait_job(submit_count(a, b)["id"], {"done", "failed"}, timeout=60)
    page = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert 'id="parties-heading"' in page and "node-b" in page and "host" in page
    # node-b's admin approves a job from a peer not approved for automatic acceptance
    b.api.post("/v1/peers/node-a/approve", {"accept": False})
    try:
        job = submit_count(a, b)
        a.daemon.wait_progress(job["id"], 4, timeout=30)
        pending = b.daemon.wait_job(b.api.get("/v1/jobs", kind="count")["jobs"][0]["id"],
                                    {"awaiting_approval"}, timeout=30)
        b_client, b_token = panel_of(b)
        page = b_client.get(f"/jobs/{pending['id']}").get_data(as_text=True)
        assert "Approve this job" in page and "awaiting an admin" in page
        answer = post(b_client, f"/jobs/{pending['id']}/approve", {}, token=b_token)
        assert answer.status_code == 302
        assert a.daemon.wait_job(job["id"], {"done", "failed"}, 60)["state"] == "done"
    finally:
        b.api.post("/v1/peers/node-a/approve", {"accept": True})


def read_ids(path: str) -> set[str]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {r[0] for r in rows[1:]}


def test_psi_between_two_daemons_gives_the_exact_intersection(nodes, tmp_path):
    a, b, _ = nodes
    a_ids = [f"1380000{i:04d}" for i in range(0, 1500)]
    b_ids = [f"1380000{i:04d}" for i in range(1000, 3000, 2)]
    for n, ids, grade in ((a, a_ids, "L2"), (b, b_ids, "L2")):
        path = tmp_path / f"{n.node_id}-phones.csv"
        path.write_text("phone,score\n" + "".join(f"{x},{i}\n" for i, x in enumerate(ids)))
        n.api.post("/v1/datasets", {"name": "phones", "path": str(path),
                                    "id_column": "phone", "grade": grade})
    expected = set(a_ids) & set(b_ids)
    run = cli("jobs", "submit", "psi", "--peer", "node-b", "--param", "dataset=phones",
              "--param", "peer_dataset=phones", "--param", "reveal=both", "--wait", "--json",
              "--state-dir", str(a.state), timeout=120)
    assert run.returncode == 0, run.stderr
    job = a.api.get("/v1/jobs", kind="psi")["jobs"][0]
    out = job["result"]["outputs"]
    assert out["intersection_size"] == len(expected) == 250
    assert read_ids(out["rows_file"]) == expected  # this party's ids in the intersection
    kept = a.api.get(f"/v1/datasets/{out['dataset']}")  # and a data set for the next job
    assert kept["row_count"] == 250 and kept["grade"] == "L2" and kept["id_column"] == "phone"
    b_job = b.api.get("/v1/jobs", kind="psi")["jobs"][0]
    b_job = b.daemon.wait_job(b_job["id"], {"done", "failed"}, timeout=30)  # b may finish last
    assert b_job["state"] == "done"
    assert read_ids(b_job["result"]["outputs"]["rows_file"]) == expected
    # the result through the API and the CLI; --out copies this node's rows, never over a file
    got = a.api.get(f"/v1/jobs/{job['id']}/result")
    assert got["result"]["outputs"] == out and got["state"] == "done"
    assert a.api.get(f"/v1/jobs/{job['id']}/result", rows=1) == Path(
        out["rows_file"]).read_text()
    state = ("--state-dir", str(a.state))
    shown = cli("jobs", "result", str(job["id"]), *state)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split() for line in shown.stdout.splitlines()]
    assert ["intersection", "size:", "250"] in lines and ["data", "set:", out["dataset"]] in lines
    # in buckets: the same intersection, and no checkpoint left once it is done
    job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
        "peers": ["node-b"], "dataset": "phones", "peer_dataset": "phones", "buckets": 4}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=120)
    assert job["state"] == "done", job.get("error")
    assert job["result"]["outputs"]["buckets"] == 4
    assert read_ids(job["result"]["outputs"]["rows_file"]) == expected
    assert Path(job["result"]["outputs"]["rows_file"]).is_relative_to(a.state / "outputs")
    assert not list((a.state / "outputs").rglob("psi-checkpoint.json"))
    assert got["result"]["output_hash"] in shown.stdout
    copy = tmp_path / "mine.csv"
    done = cli("jobs", "result", str(job["id"]), "--out", str(copy), "--json", *state)
    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == Path(out["rows_file"]).read_bytes() and read_ids(
        str(copy)) == expected
    copy.write_text("mine\n")
    again = cli("jobs", "result", str(job["id"]), "--out", str(copy), *state)
    assert again.returncode != 0 and "exists; pass --force" in again.stderr
    assert copy.read_text() == "mine\n"  # untouched
    forced = cli("jobs", "result", str(job["id"]), "--out", str(copy), "--force", *state)
    assert forced.returncode == 0 and read_ids(str(copy)) == expected, forced.stderr
    # join: each side's payload columns, the two files aligned row for row
    job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
        "peers": ["node-b"], "dataset": "phones", "peer_dataset": "phones",
        "reveal": "both", "join": "score", "peer_join": "score"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=60)
    assert job["state"] == "done", job
    b_job = b.daemon.wait_job(b.api.get("/v1/jobs", kind="psi")["jobs"][0]["id"], {"done"},
                              timeout=60)
    sides = []
    for o, ids in ((job["result"]["outputs"], a_ids), (b_job["result"]["outputs"], b_ids)):
        with open(o["rows_file"], newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["phone", "score"] and len(rows) == 251
        assert all(ids[int(score)] == phone for phone, score in rows[1:])  # its own payload
        sides.append([r[0] for r in rows[1:]])
    assert sides[0] == sides[1] and set(sides[0]) == expected
    # cardinality: the size and nothing else on either side
    job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
        "peers": ["node-b"], "dataset": "phones", "peer_dataset": "phones",
        "reveal": "cardinality"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=60)
    assert job["state"] == "done" and job["result"]["outputs"]["intersection_size"] == 250
    assert "rows_file" not in job["result"]["outputs"]
    refused = cli("jobs", "result", str(job["id"]), "--out", str(tmp_path / "none.csv"), *state)
    assert refused.returncode != 0 and "no rows file" in refused.stderr
    assert not (tmp_path / "none.csv").exists()


def test_psi_with_secretflows_engine_between_two_daemons(nodes, tmp_path):
    """Provider secretflow: spu's engine at each daemon, its link over the job's session."""
    a, b, _ = nodes
    a_ids = [f"id-{i:05d}" for i in range(0, 2400)]
    b_ids = [f"id-{i:05d}" for i in range(1600, 4000, 3)]
    for n, ids in ((a, a_ids), (b, b_ids)):
        path = tmp_path / f"{n.node_id}-sf.csv"
        path.write_text("cid,v\n" + "".join(f"{x},{i}\n" for i, x in enumerate(ids)))
        n.api.post("/v1/datasets", {"name": "sf_ids", "path": str(path), "id_column": "cid",
                                    "grade": "L2"})
    expected = set(a_ids) & set(b_ids)
    run = cli("jobs", "submit", "psi", "--peer", "node-b", "--param", "dataset=sf_ids",
              "--param", "peer_dataset=sf_ids", "--param", "provider=secretflow",
              "--param", "protocol=rr22", "--wait", "--json", "--state-dir", str(a.state),
              timeout=120)
    assert run.returncode == 0, run.stderr
    job = a.api.get("/v1/jobs", kind="psi")["jobs"][0]
    out = job["result"]["outputs"]
    assert (out["provider"], out["protocol"], out["intersection_size"]) == (
        "secretflow", "rr22", len(expected))
    assert out["link_bytes_sent"] > 0 and read_ids(out["rows_file"]) == expected
    assert a.api.get(f"/v1/datasets/{out['dataset']}")["row_count"] == len(expected)
    b_job = b.daemon.wait_job(b.api.get("/v1/jobs", kind="psi")["jobs"][0]["id"],
                              {"done", "failed"}, timeout=30)
    assert b_job["state"] == "done" and read_ids(
        b_job["result"]["outputs"]["rows_file"]) == expected
    # the panel's form, KKRT, only the initiator learns the rows
    client, token = panel_of(a)
    assert 'value="secretflow/rr22"' in client.get("/jobs").get_data(as_text=True)
    job, _ = run_with_partners(a, client, token, {
        "operator": "psi", "dataset": "sf_ids", "peers": "node-b",
        "dataset_of_node-b": "sf_ids", "reveal": "initiator", "engine": "secretflow/kkrt"})
    assert job["state"] == "done", job.get("error")
    assert job["params"]["params"]["provider"] == "secretflow"
    assert job["params"]["params"]["protocol"] == "kkrt"
    assert read_ids(job["result"]["outputs"]["rows_file"]) == expected
    b_job = b.daemon.wait_job(b.api.get("/v1/jobs", kind="psi")["jobs"][0]["id"],
                              {"done", "failed"}, timeout=30)
    assert b_job["result"]["outputs"]["learned"] == "size"
    assert "rows_file" not in b_job["result"]["outputs"]
    # what spu cannot do is refused by name at submission's end, on both sides
    job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
        "peers": ["node-b"], "dataset": "sf_ids", "peer_dataset": "sf_ids",
        "provider": "secretflow", "reveal": "cardinality"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=60)
    assert job["state"] == "failed" and "no reveal=cardinality" in job["error"], job


def test_psi_reveal_both_on_l3_data_is_refused_by_rule(nodes):
    a = nodes[0]
    job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
        "peers": ["node-b"], "dataset": "customers", "peer_dataset": "customers",
        "reveal": "both"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=60)
    assert job["state"] == "failed" and "L3.psi.reveal" in job["error"], job


def test_the_panel_runs_a_count_with_a_partner_through_its_form(nodes):
    a = nodes[0]
    client, token = panel_of(a)
    page = client.get("/jobs").get_data(as_text=True)
    assert 'id="mp-operator"' in page and 'value="node-b"' in page and "customers" in page
    job, where = run_with_partners(a, client, token, {
        "operator": "count", "dataset": "customers", "peers": "node-b",
        "dataset_of_node-b": "customers", "reveal": "both"}, timeout=90)
    assert job["state"] == "done", job
    assert job["params"]["peer_datasets"] == {"node-b": "customers"}
    page = client.get(where).get_data(as_text=True)
    assert f"Job {job['id']} (count with node-b) queued" in page
    assert 'id="parties-heading"' in page and "node-b" in page and "host" in page
    assert 'id="summary-heading"' in page and "4,600" in page  # rows of all parties


def test_unbalanced_psi_reuses_the_servers_offline_table(nodes, tmp_path):
    a, b, _ = nodes
    queries = [f"1390000{i:04d}" for i in range(0, 400, 4)]  # 100 queries, 50 at the server
    server = [f"1390000{i:04d}" for i in range(0, 10000, 8)]  # 1250 ids
    for n, name, ids in ((a, "queries", queries), (b, "blacklist", server)):
        path = tmp_path / f"{name}.csv"
        path.write_text("phone\n" + "".join(f"{x}\n" for x in ids))
        n.api.post("/v1/datasets", {"name": name, "path": str(path), "id_column": "phone",
                                    "grade": "L2"})
    expected = set(queries) & set(server)
    for _ in range(2):  # the second run downloads nothing and rebuilds nothing
        job = a.api.post("/v1/jobs", {"kind": "psi", "params": {
            "peers": ["node-b"], "dataset": "queries", "peer_dataset": "blacklist",
            "mode": "unbalanced", "reveal": "initiator"}})
        job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=90)
        assert job["state"] == "done", job
        out = job["result"]["outputs"]
        assert out["intersection_size"] == len(expected) == 50
        assert read_ids(out["rows_file"]) == expected
    tables = list((b.state / "psi-oprf").rglob("*.tbl"))
    assert len(tables) == 1  # built once, offline work reused


def test_joint_statistics_across_three_daemons_match_numpy(nodes):
    import numpy as np

    a = nodes[0]
    job = a.api.post("/v1/jobs", {"kind": "stats", "params": {
        "peers": ["node-b", "node-c"], "dataset": "customers",
        "peer_datasets": {"node-b": "customers", "node-c": "customers"},
        "columns": "v", "stats": "count,sum,mean,var"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=90)
    assert job["state"] == "done", job["error"]
    pooled = np.concatenate([np.arange(n.rows, dtype=float) for n in nodes])
    stats = job["result"]["outputs"]["stats"]
    assert stats["count"]["v"] == len(pooled) == 1200 + 3400 + 50
    assert stats["sum"]["v"] == pooled.sum()
    assert abs(stats["mean"]["v"] - pooled.mean()) <= 1e-6 * abs(pooled.mean())
    assert abs(stats["var"]["v"] - pooled.var()) <= 1e-6 * pooled.var()
    for n in nodes[1:]:  # every party ran its side and got the result
        side = n.api.get("/v1/jobs", kind="stats")["jobs"][0]
        side = n.daemon.wait_job(side["id"], {"done", "failed"}, timeout=30)
        assert side["state"] == "done", side["error"]
        assert side["result"]["outputs"]["stats"]["count"]["v"] == len(pooled)
    # with differential privacy: a noisy release, its noise recorded in each party's ledger
    job = a.api.post("/v1/jobs", {"kind": "stats", "params": {
        "peers": ["node-b", "node-c"], "dataset": "customers",
        "peer_datasets": {"node-b": "customers", "node-c": "customers"},
        "columns": "v", "stats": "count,mean", "dp_epsilon": 2.0, "dp_bounds": "v:0:5000"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=90)
    assert job["state"] == "done", job["error"]
    out = job["result"]["outputs"]
    assert out["dp"]["noise_scale"] == {"count": 1.0, "sum:v": 5000.0}
    assert out["stats"]["count"]["v"] != len(pooled)  # noisy
    assert abs(out["stats"]["count"]["v"] - len(pooled)) < 40
    for n in nodes:
        rec = next(r for r in ledger_actions(n, "federation.job.done")
                   if r["object"] == f"job:{out_job_id(job)}")
        assert rec["details"]["dp"]["mechanism"] == "laplace"


def out_job_id(job: dict) -> str:
    return job["result"]["job_id"]


# -- private query ----------------------------------------------------------------------------

def _scores(path: Path, rows: int) -> dict[str, tuple[int, str]]:
    """A carrier's risk table: phone -> (score, segment); every 7th segment empty."""
    table = {f"1380000{i:05d}": (i * 37 % 1000, "" if i % 7 == 0 else f"seg-{i % 5}")
             for i in range(rows)}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "score", "segment"])
        for phone, (score, segment) in table.items():
            w.writerow([phone, score, segment])
    return table


def _expected(table: dict[str, tuple[int, str]], key: str) -> dict:
    if key not in table:
        return {"key": key, "found": False, "labels": {}}
    score, segment = table[key]
    return {"key": key, "found": True, "labels": {"score": score, "segment": segment}}


@pytest.fixture(scope="module")
def risk_service(nodes, tmp_path_factory):
    """node-b publishes its L1 risk table as service "risk" through the CLI."""
    b = nodes[1]
    path = tmp_path_factory.mktemp("pir") / "scores.csv"
    table = _scores(path, 2000)
    b.api.post("/v1/datasets", {"name": "scores", "path": str(path), "id_column": "phone",
                                "grade": "L1"})
    run = cli("pir", "publish", "risk", "--dataset", "scores", "--key-column", "phone",
              "--label-columns", "score,segment", "--json", "--state-dir", str(b.state),
              timeout=120)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["records"] == 2000 and info["label_columns"] == ["score", "segment"]
    return table, path


def test_private_query_between_two_daemons_returns_exactly_the_stored_labels(
        nodes, risk_service, tmp_path):
    from appliance.federation.pir_client import PirClient

    a, b, _ = nodes
    table, _path = risk_service
    present = ["138000000000", "138000000007", "138000001999", "138000000123"]
    absent = ["138000002000", "13900000001"]
    run = cli("pir", "query", "--peer", "node-b", "--service", "risk", *present, *absent,
              "--json", "--state-dir", str(a.state), timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"results": [_expected(table, k)
                                                  for k in present + absent]}
    # every key of a sample, from a keys file, through the CLI's plain output
    sample = [*list(table)[::97], "0", "138000000001x"]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("\n".join(sample[:-1]) + "\n")
    run = cli("pir", "query", "--peer", "node-b", "--service", "risk", "--keys-file",
              str(keys_file), "--json", "--state-dir", str(a.state), timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["results"] == [_expected(table, k) for k in sample[:-1]]
    # the Python client for applications
    client = PirClient(a.state)
    assert client.query("node-b", "risk", present[:2]) == [_expected(table, k)
                                                           for k in present[:2]]
    listed = client.peer_services("node-b")
    assert [s["name"] for s in listed] == ["risk"] and "source" not in listed[0]
    # both ledgers hold every query, neither holds a key
    served = ledger_actions(b, "pir.query.served")
    asked = ledger_actions(a, "pir.query")
    assert len(served) >= 3 and len(asked) >= 3
    for record in served + asked:
        text = json.dumps(record)
        assert not any(k in text for k in present + absent)
    assert {r["details"]["count"] for r in served} >= {6, len(sample) - 1, 2}
    assert all(len(r["details"]["keys_hmac"]) == 64 for r in asked)


def test_private_query_through_the_panel(nodes, risk_service):
    from tests.appliance.panel.browser_forms import post

    a, b, _ = nodes
    table, _ = risk_service
    client, token = panel_of(b)
    page = client.get("/pir").get_data(as_text=True)
    assert "risk" in page and "2,000" in page and "score, segment" in page
    client, token = panel_of(a)
    page = client.get("/pir?peer=node-b").get_data(as_text=True)
    assert 'id="peer-services"' in page and "risk" in page
    answer = post(client, "/pir/query", {"peer": "node-b", "service": "risk",
                                         "keys": "138000000042\n138000009999\n"}, token=token)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    page = answer.get_data(as_text=True)
    score, segment = table["138000000042"]
    assert 'id="pir-results"' in page
    assert f"<td>{score}</td>" in page and f"<td>{segment}</td>" in page
    assert "not found" in page


def test_private_query_refusals_are_clear_and_the_daemons_keep_serving(nodes, risk_service):
    a, b, _ = nodes
    table, _ = risk_service
    # L3 data may not be served: the grade policy names its rule
    with pytest.raises(DaemonError, match=r"rule L3.pir.serve forbids serving records"):
        b.api.post("/v1/pir/services", {"name": "leak", "dataset": "customers",
                                        "key_column": "id", "label_columns": ["v"]})
    with pytest.raises(DaemonError, match="no service named nope is published") as exc:
        a.api.post("/v1/pir/query", {"peer": "node-b", "service": "nope", "keys": ["1"]})
    assert exc.value.status == 404
    with pytest.raises(DaemonError, match="no keys to ask"):
        a.api.post("/v1/pir/query", {"peer": "node-b", "service": "risk", "keys": []})
    with pytest.raises(DaemonError, match="key 1 is float, not text"):
        a.api.post("/v1/pir/query", {"peer": "node-b", "service": "risk", "keys": ["1", 1.5]})
    with pytest.raises(DaemonError, match="split them"):
        a.api.post("/v1/pir/query", {"peer": "node-b", "service": "risk",
                                     "keys": ["1"] * 1025})
    key = "138000000005"
    answer = a.api.post("/v1/pir/query", {"peer": "node-b", "service": "risk", "keys": [key]})
    assert answer["results"] == [_expected(table, key)]


def test_private_query_follows_a_re_encoded_service(nodes, risk_service):
    a, b, _ = nodes
    _table, path = risk_service
    key = "138000000011"
    before = a.api.post("/v1/pir/query", {"peer": "node-b", "service": "risk", "keys": [key]})
    changed = _scores(path, 2100)  # the file grows: register it again, publish again
    b.api.delete("/v1/datasets/scores", {})
    b.api.post("/v1/datasets", {"name": "scores", "path": str(path), "id_column": "phone",
                                "grade": "L1"})
    info = b.api.post("/v1/pir/services", {"name": "risk", "dataset": "scores",
                                           "key_column": "phone",
                                           "label_columns": ["score", "segment"]})
    assert info["version"] == before["cost"]["version"] + 1 and info["records"] == 2100
    after = a.api.post("/v1/pir/query", {"peer": "node-b", "service": "risk",
                                         "keys": [key, "138000002050"]})
    assert after["cost"]["version"] == info["version"]
    assert after["results"] == [_expected(changed, key), _expected(changed, "138000002050")]


def test_a_tightened_grade_policy_stops_a_published_service_at_once(nodes, risk_service):
    a, b, _ = nodes
    ask = {"peer": "node-b", "service": "risk", "keys": ["138000000003"]}
    assert a.api.post("/v1/pir/query", ask)["results"][0]["found"]
    b.api.put("/v1/federation/grade-policy", {"overrides": {"grades": {
        "L1": {"pir": {"serve": ["records"], "column": ["score"]}}}}})
    try:
        with pytest.raises(DaemonError, match=r"rule L1\.pir\.column") as exc:
            a.api.post("/v1/pir/query", ask)
        assert exc.value.status == 403
    finally:
        b.api.put("/v1/federation/grade-policy", {"overrides": None})
    assert a.api.post("/v1/pir/query", ask)["results"][0]["found"]


# -- horizontal federated learning ---------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_sets(nodes, tmp_path_factory):
    """scikit-learn's digits split by rows over the three nodes (L3 data sets "digits")."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    owner = np.random.default_rng(3).integers(0, 3, len(y))
    base = tmp_path_factory.mktemp("fl")
    for i, n in enumerate(nodes):
        path = base / f"{n.node_id}-digits.csv"
        rows = np.flatnonzero(owner == i)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *(f"p{j}" for j in range(64)), "digit"])
            for r in rows:
                w.writerow([f"{n.node_id}-{r}", *(int(v) for v in x[r]), int(y[r])])
        n.api.post("/v1/datasets", {"name": "digits", "path": str(path), "id_column": "id",
                                    "grade": "L3"})
    return x, y


def test_three_daemons_train_a_classifier_with_masked_aggregation(nodes, digits_sets):
    a = nodes[0]
    run = cli("jobs", "submit", "train", "--peer", "node-b", "--peer", "node-c",
              "--param", "algorithm=homo_lr", "--param", "dataset=digits",
              "--param", "peer_datasets=node-b=digits,node-c=digits", "--param", "label=digit",
              "--param", "rounds=5", "--param", "secure_aggregation=mask", "--wait", "--json",
              "--state-dir", str(a.state), timeout=180)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["state"] == "done", job.get("error")
    out = job["result"]["outputs"]
    assert out["parties"] == 3 and out["dropped"] == [] and len(out["history"]) == 5
    assert out["final"]["val_accuracy"] > 0.9
    for n in nodes[1:]:  # every party stores the same model
        side = n.api.get("/v1/jobs", kind="train")["jobs"][0]
        side = n.daemon.wait_job(side["id"], {"done", "failed"}, timeout=30)
        assert side["state"] == "done", side["error"]
        assert side["result"]["outputs"]["model_sha256"] == out["model_sha256"]


def test_paillier_aggregation_between_daemons_and_plain_refused_on_l4(nodes, digits_sets):
    a = nodes[0]
    params = {"peers": ["node-b", "node-c"], "dataset": "digits",
              "peer_datasets": {"node-b": "digits", "node-c": "digits"},
              "algorithm": "homo_kmeans", "clusters": 10, "rounds": 3}
    job = a.api.post("/v1/jobs", {"kind": "train", "params": {
        **params, "secure_aggregation": "paillier"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=180)
    assert job["state"] == "done", job["error"]
    out = job["result"]["outputs"]
    assert len(out["centroids"]) == 10 and out["he_seconds"] > 0
    assert out["history"][-1]["inertia"] <= out["history"][0]["inertia"]
    # an L4 data set allows model updates only under secure aggregation
    path = Path(a.api.get("/v1/datasets/digits")["path"])
    a.api.delete("/v1/datasets/digits", {})
    a.api.post("/v1/datasets", {"name": "digits", "path": str(path), "id_column": "id",
                                "grade": "L4"})
    try:
        job = a.api.post("/v1/jobs", {"kind": "train", "params": {
            **params, "secure_aggregation": "none"}})
        job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=60)
        assert job["state"] == "failed" and "L4.fl.aggregation" in job["error"], job
    finally:
        a.api.delete("/v1/datasets/digits", {})
        a.api.post("/v1/datasets", {"name": "digits", "path": str(path), "id_column": "id",
                                    "grade": "L3"})



def test_the_panel_charts_a_training_job_round_by_round(nodes, digits_sets):
    a = nodes[0]
    job = a.api.post("/v1/jobs", {"kind": "train", "params": {
        "peers": ["node-b", "node-c"], "dataset": "digits",
        "peer_datasets": {"node-b": "digits", "node-c": "digits"},
        "algorithm": "homo_lr", "label": "digit", "rounds": 3}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=120)
    assert job["state"] == "done", job["error"]
    client, _ = panel_of(a)
    page = client.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert 'id="training-chart"' in page and page.count("<polyline") == 4
    assert "pooled validation accuracy" in page and "this party&#39;s validation" in page


def test_every_party_predicts_locally_with_the_trained_model(nodes, digits_sets):
    import numpy as np

    x, y = digits_sets
    a, b, _ = nodes
    trained = [j for j in a.api.get("/v1/jobs", kind="train")["jobs"]
               if j["state"] == "done" and j["result"]["outputs"]["algorithm"] == "homo_lr"]
    model = trained[0]["result"]["outputs"]["model"]
    assert model in [m["model"] for m in b.api.get("/v1/models")["models"]]
    run = cli("jobs", "submit", "predict", "--param", f"model={model}",
              "--param", "dataset=digits", "--wait", "--json", "--state-dir", str(b.state),
              timeout=120)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["state"] == "done", job.get("error")
    text = b.api.get(f"/v1/jobs/{job['id']}/result", rows=1)
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == job["result"]["outputs"]["rows"] > 400
    truth = {f"node-b-{i}": int(y[i]) for i in range(len(y))}
    accuracy = np.mean([int(r["prediction"]) == truth[r["id"]] for r in rows])
    assert accuracy > 0.9
    # online: rows sent to the API, the same model
    sample = [{f"p{j}": int(v) for j, v in enumerate(x[i])} for i in range(20)]
    online = b.api.post(f"/v1/models/{model}/predict", {"rows": sample})["predictions"]
    assert np.mean([int(p["prediction"]) == int(y[i]) for i, p in enumerate(online)]) > 0.8
    with pytest.raises(DaemonError, match="lack 63 of the model's 64 feature columns: p1, p2"):
        b.api.post(f"/v1/models/{model}/predict", {"rows": [{"p0": 1}]})
    with pytest.raises(DaemonError, match="no model homo_lr-nope"):
        b.api.post("/v1/models/homo_lr-nope/predict", {"rows": sample})


def test_the_panel_starts_a_training_with_partners_through_its_form(nodes, digits_sets):
    a = nodes[0]
    client, token = panel_of(a)
    page = client.get("/jobs").get_data(as_text=True)
    assert 'value="train"' in page and 'id="mp-algorithm"' in page
    job, where = run_with_partners(a, client, token, {
        "operator": "train", "dataset": "digits", "peers": ["node-b", "node-c"],
        "dataset_of_node-b": "digits", "dataset_of_node-c": "digits",
        "algorithm": "homo_nn", "label": "digit", "rounds": "2", "clusters": "3",
        "secure_aggregation": "mask", "reveal": "both"})
    assert job["state"] == "done", job["error"]
    assert job["params"]["params"]["algorithm"] == "homo_nn"
    assert job["result"]["outputs"]["final"]["val_accuracy"] > 0.7
    page = client.get(where).get_data(as_text=True)
    assert 'id="training-chart"' in page


@pytest.mark.parametrize("algorithm", ["homo_lr", "homo_nn", "homo_kmeans"])
@pytest.mark.parametrize("mode", ["none", "mask", "paillier"])
def test_every_algorithm_with_every_aggregation_between_three_daemons(nodes, digits_sets,
                                                                     algorithm, mode):
    a = nodes[0]
    extra = {"clusters": 10} if algorithm == "homo_kmeans" else {"label": "digit"}
    job = a.api.post("/v1/jobs", {"kind": "train", "params": {
        "peers": ["node-b", "node-c"], "dataset": "digits",
        "peer_datasets": {"node-b": "digits", "node-c": "digits"},
        "algorithm": algorithm, "rounds": 2, "secure_aggregation": mode, **extra}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=120)
    assert job["state"] == "done", job["error"]
    out = job["result"]["outputs"]
    assert out["parties"] == 3 and len(out["history"]) == 2
    if algorithm != "homo_kmeans":
        assert out["final"]["val_accuracy"] > 0.6


def test_the_panel_runs_joint_statistics_through_its_form(nodes):
    a = nodes[0]
    client, token = panel_of(a)
    page = client.get("/jobs").get_data(as_text=True)
    assert 'id="mp-columns"' in page and 'id="mp-receivers"' in page
    job, _ = run_with_partners(a, client, token, stats_form(
        "customers", ["node-b", "node-c"],
        columns="v", stats="count,sum,mean", receivers="initiator"), timeout=90)
    assert job["state"] == "done", job["error"]
    stats = job["result"]["outputs"]["stats"]
    assert stats["count"]["v"] == 1200 + 3400 + 50
    assert stats["sum"]["v"] == sum(range(1200)) + sum(range(3400)) + sum(range(50))
    # with differential privacy from the same form
    job, _ = run_with_partners(a, client, token, stats_form(
        "customers", ["node-b", "node-c"], columns="v", stats="count,sum", receivers="all",
        group_by="", dp_epsilon="1", dp_bounds="v:0:4000"), timeout=90)
    assert job["state"] == "done", job["error"]
    assert job["result"]["outputs"]["dp"]["mechanism"] == "laplace"
    # order statistics, in SPU (ABY3 among the three), from the same form
    job, _ = run_with_partners(a, client, token, stats_form(
        "customers", ["node-b", "node-c"], columns="v", stats="count,min,max,median",
        quantiles="0.1,0.99", receivers="initiator"), timeout=180)
    assert job["state"] == "done", job["error"]
    import numpy as np

    pooled = np.concatenate([np.arange(n.rows, dtype=float) for n in nodes])
    out = job["result"]["outputs"]
    assert out["order_engine"]["protocol"] == "ABY3"
    assert out["stats"]["min"]["v"] == 0.0 and abs(out["stats"]["max"]["v"] - 3399) < 1e-9
    assert abs(out["stats"]["median"]["v"] - np.median(pooled)) < 1e-9
    for q in ("0.1", "0.99"):
        assert abs(out["stats"]["quantiles"]["v"][q] - np.quantile(pooled, float(q))) < 1e-9


def test_columns_layout_joins_in_secret_through_the_cli_and_the_panel(nodes, tmp_path):
    """Three daemons hold different columns of overlapping customers; the statistics are
    over the customers all three hold, joined inside SPU (ABY3)."""
    import json

    import numpy as np

    rng = np.random.default_rng(15)
    holds = {"node-a": range(0, 300), "node-b": range(100, 500), "node-c": range(150, 400)}
    columns = {"node-a": "assets", "node-b": "deposits", "node-c": "loans"}
    values: dict[str, dict[int, float]] = {}
    for n in nodes:
        ids = list(holds[n.node_id])
        vals = rng.normal(500.0, 300.0, len(ids)).round(2)
        values[n.node_id] = dict(zip(ids, vals, strict=True))
        path = tmp_path / f"{n.node_id}-accounts.csv"
        order = rng.permutation(len(ids))  # the rows in another order at each party
        path.write_text(f"uid,{columns[n.node_id]}\n" + "".join(
            f"c{ids[i]},{float(vals[i])!r}\n" for i in order))
        n.api.post("/v1/datasets", {"name": "accounts", "path": str(path), "id_column": "uid",
                                    "grade": "L3"})
    common = sorted(set.intersection(*(set(h) for h in holds.values())))
    x = np.array([[values[p][i] for p in ("node-a", "node-b", "node-c")] for i in common])
    names = ["node-a.assets", "node-b.deposits", "node-c.loans"]
    a = nodes[0]
    run = cli("jobs", "submit", "stats", "--peer", "node-b", "--peer", "node-c",
              "--param", "dataset=accounts",
              "--param", "peer_datasets=node-b=accounts,node-c=accounts",
              "--param", "layout=columns", "--param", "key=uid",
              "--param", "columns=self.assets,node-b.deposits,node-c.loans",
              "--param", "stats=count,sum,mean,var,cov,median",
              "--param", "threshold=1500", "--wait", "--json",
              "--state-dir", str(a.state), timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    out = json.loads(run.stdout)["result"]["outputs"]
    s = out["stats"]
    assert out["layout"] == "columns" and out["engine"]["protocol"] == "ABY3"
    assert s["count"][names[0]] == len(common) == 150
    for i, c in enumerate(names):
        assert abs(s["sum"][c] - x[:, i].sum()) <= 1e-6 * abs(x[:, i].sum())
        assert abs(s["var"][c] - x[:, i].var()) <= 1e-6 * x[:, i].var()
        assert abs(s["median"][c] - np.median(x[:, i])) < 1e-9
    cov = np.cov(x, rowvar=False, bias=True)
    assert abs(s["cov"][names[0]][names[2]] - cov[0, 2]) <= 1e-6 * abs(cov[0, 0])
    row_sum = x.sum(axis=1)
    assert s["threshold"]["row_sum"]["count"] == int((row_sum > 1500).sum())
    assert abs(s["threshold"]["row_sum"]["sum"] - row_sum[row_sum > 1500].sum()) < 1e-6
    # the panel's form, only the initiator receiving; a partner's side says it got nothing
    client, token = panel_of(a)
    page = client.get("/jobs").get_data(as_text=True)
    assert 'id="mp-layout"' in page and 'id="mp-stats-key"' in page
    job, _ = run_with_partners(a, client, token, stats_form(
        "accounts", ["node-b", "node-c"], layout="columns", stats_key="uid",
        columns="self.assets,node-b.deposits", stats="count,mean,max",
        receivers="initiator"), timeout=300)
    assert job["state"] == "done", job["error"]
    s = job["result"]["outputs"]["stats"]
    assert s["count"]["node-a.assets"] == 150
    assert abs(s["max"]["node-b.deposits"] - x[:, 1].max()) < 1e-9
    side = nodes[1].api.get("/v1/jobs", kind="stats")["jobs"][0]
    side = nodes[1].daemon.wait_job(side["id"], {"done", "failed"}, timeout=60)
    assert side["state"] == "done" and side["result"]["outputs"]["received"] is False
    assert "stats" not in side["result"]["outputs"]
    # two daemons through the API: SPU's CHEETAH, the join of node-a's and node-b's ids
    job = a.api.post("/v1/jobs", {"kind": "stats", "params": {
        "peers": ["node-b"], "dataset": "accounts", "peer_dataset": "accounts",
        "layout": "columns", "columns": "self.assets,node-b.deposits",
        "stats": "count,mean,min,median", "threshold": "1000"}})
    job = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=300)
    assert job["state"] == "done", job["error"]
    out = job["result"]["outputs"]
    pair = sorted(set(holds["node-a"]) & set(holds["node-b"]))
    y = np.array([[values["node-a"][i], values["node-b"][i]] for i in pair])
    assert out["engine"]["protocol"] == "CHEETAH" and out["stats"]["count"][names[0]] == 200
    assert abs(out["stats"]["median"]["node-b.deposits"] - np.median(y[:, 1])) < 1e-9
    assert abs(out["stats"]["mean"][names[0]] - y[:, 0].mean()) <= 1e-9 * abs(y[:, 0].mean())
    assert out["stats"]["threshold"]["row_sum"]["count"] == int((y.sum(axis=1) > 1000).sum())


# -- information value across a vertical split ----------------------------------------------------

def test_information_value_across_two_daemons_matches_the_pooled_computation(nodes, tmp_path):
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    from appliance.operators.fl import iv

    a, b, _ = nodes
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(2).permutation(len(y))  # node-b's rows in another order
    for n, rows, cols, with_label in ((a, np.arange(len(y)), range(15), True),
                                      (b, order, range(15, 30), False)):
        path = tmp_path / f"{n.node_id}-bc.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", *(["label"] if with_label else []), *(f"f{j}" for j in cols)])
            for i in rows:
                w.writerow([f"p{i}", *([int(y[i])] if with_label else []),
                            *(repr(float(x[i, j])) for j in cols)])
        n.api.post("/v1/datasets", {"name": "bc", "path": str(path), "id_column": "id",
                                    "grade": "L3"})
    run = cli("jobs", "submit", "iv", "--peer", "node-b", "--param", "dataset=bc",
              "--param", "peer_dataset=bc", "--param", "label=label", "--param", "key=id",
              "--wait", "--json", "--state-dir", str(a.state), timeout=120)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["state"] == "done", job.get("error")
    got = job["result"]["outputs"]["iv"]
    pooled = iv.local_iv({f"f{j}": x[:, j] for j in range(30)}, y.astype(float), 10)
    for j in range(30):
        side = "node-a" if j < 15 else "node-b"
        assert abs(got[side][f"f{j}"] - pooled[f"f{j}"]) < 1e-9
    # the same through the panel's form, with five bins
    client, token = panel_of(a)
    job, _ = run_with_partners(a, client, token, {
        "operator": "iv", "dataset": "bc", "peers": "node-b", "dataset_of_node-b": "bc",
        "label": "label", "key": "id", "bins": "5", "reveal": "both", "columns": "",
        "stats": "", "receivers": "all", "algorithm": "homo_lr", "rounds": "10",
        "clusters": "3", "secure_aggregation": "mask"}, timeout=90)
    assert job["state"] == "done", job["error"]
    five = iv.local_iv({"f20": x[:, 20]}, y.astype(float), 5)["f20"]
    assert abs(job["result"]["outputs"]["iv"]["node-b"]["f20"] - five) < 1e-9


# -- vertical logistic regression and joint inference --------------------------------------------

def _cancer_split_sets(nodes_: tuple, tmp_path: Path) -> tuple:
    """Breast cancer split by columns: node-a the label and 15 features, node-b the other 15
    (rows in another order); train and test rows as data sets bct and bce at each."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    a, b, _ = nodes_
    x, y = load_breast_cancer(return_X_y=True)
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0,
                                   stratify=y)
    if any(d["name"] == "bct" for d in a.api.get("/v1/datasets")["datasets"]):
        return x, y, train, test  # registered by an earlier test
    for name, rows in (("bct", train), ("bce", test)):
        for n, cols, with_label in ((a, range(15), True), (b, range(15, 30), False)):
            order = rows if with_label else np.random.default_rng(5).permutation(rows)
            path = tmp_path / f"{n.node_id}-{name}.csv"
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", *(["label"] if with_label else []),
                            *(f"f{j}" for j in cols)])
                for i in order:
                    w.writerow([f"p{i}", *([int(y[i])] if with_label else []),
                                *(repr(float(x[i, j])) for j in cols)])
            n.api.post("/v1/datasets", {"name": name, "path": str(path), "id_column": "id",
                                        "grade": "L3"})
    return x, y, train, test


def test_vertical_lr_trains_predicts_and_lists_models_across_daemons(nodes, tmp_path):
    a, b, c = nodes
    *_, test = _cancer_split_sets(nodes, tmp_path)
    run = cli("jobs", "submit", "train", "--peer", "node-b", "--param", "algorithm=hetero_lr",
              "--param", "dataset=bct", "--param", "peer_dataset=bct", "--param", "label=label",
              "--param", "key=id", "--param", "epochs=8", "--param", "validation=0.2",
              "--wait", "--json", "--state-dir", str(a.state), timeout=240)
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["state"] == "done", job.get("error")
    out = job["result"]["outputs"]
    model = out["model"]
    assert out["variant"] == "two-party" and len(out["history"]) == out["epochs_run"]
    assert out["final"]["auc"] > 0.97
    # each party lists its part; show gives this node's features only
    listed = json.loads(cli("models", "list", "--json", "--state-dir", str(b.state)).stdout)
    part = next(m for m in listed["models"] if m["model"] == model)
    assert part["kind"] == "vertical" and part["role"] == "host" and part["features"] == 15
    shown = cli("models", "show", model, "--state-dir", str(a.state))
    assert shown.returncode == 0 and "this node is the guest" in shown.stdout
    assert "f3" in shown.stdout and "f20" not in shown.stdout
    # joint inference on the test rows, evaluated against the guest's labels
    run = cli("jobs", "submit", "predict", "--peer", "node-b", "--param", f"model={model}",
              "--param", "dataset=bce", "--param", "peer_dataset=bce", "--param", "label=label",
              "--wait", "--json", "--state-dir", str(a.state), timeout=120)
    assert run.returncode == 0, run.stderr
    pred = json.loads(run.stdout)
    assert pred["state"] == "done", pred.get("error")
    metrics = pred["result"]["outputs"]["metrics"]
    assert metrics["rows"] == len(test) and metrics["auc"] > 0.97
    got = cli("jobs", "result", str(pred["id"]), "--out", str(tmp_path / "p.csv"),
              "--state-dir", str(a.state))
    assert got.returncode == 0, got.stderr
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "id,score,prediction" and len(lines) == len(test) + 1
    # a horizontal predict (no peer) with a vertical model says how to use it
    run = cli("jobs", "submit", "predict", "--param", f"model={model}", "--param",
              "dataset=bce", "--wait", "--json", "--state-dir", str(a.state), timeout=60)
    assert "vertical model" in run.stdout + run.stderr
    # node-c holds no part: delete is refused; node-b deletes its part, predict then fails
    gone = cli("models", "delete", model, "--state-dir", str(c.state))
    assert gone.returncode != 0 and "no model" in gone.stderr
    assert cli("models", "delete", model, "--state-dir", str(b.state)).returncode == 0
    run = cli("jobs", "submit", "predict", "--peer", "node-b", "--param", f"model={model}",
              "--param", "dataset=bce", "--param", "peer_dataset=bce", "--wait", "--json",
              "--state-dir", str(a.state), timeout=120)
    failed = json.loads(run.stdout)
    assert failed["state"] == "failed" and "node-b" in failed["error"]
    assert "holds no part of model" in failed["error"]
    assert b.api.get("/v1/status") is not None  # node-b keeps serving


def test_vertical_lr_with_an_arbiter_across_three_daemons(nodes, tmp_path):
    a = nodes[0]
    _cancer_split_sets(nodes, tmp_path)
    job = a.api.post("/v1/jobs", {"kind": "train", "params": {
        "peers": ["node-b", "node-c"], "dataset": "bct", "peer_datasets": {"node-b": "bct"},
        "params": {"algorithm": "hetero_lr", "label": "label", "key": "id", "epochs": 3,
                   "arbiter": "node-c", "validation": 0.2}}})
    done = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=240)
    assert done["state"] == "done", done.get("error")
    out = done["result"]["outputs"]
    assert out["variant"] == "arbiter" and out["final"]["auc"] > 0.95
    parties = a.api.get(f"/v1/jobs/{job['id']}/parties")["parties"]
    assert {p["node_id"]: p["role"] for p in parties} == {
        "node-a": "guest", "node-b": "host", "node-c": "arbiter"}
    # an arbiter named with a data set is refused before anything starts
    with pytest.raises(DaemonError, match="holds no data"):
        a.api.post("/v1/jobs", {"kind": "train", "params": {
            "peers": ["node-b", "node-c"], "dataset": "bct",
            "peer_datasets": {"node-b": "bct", "node-c": "bct"},
            "params": {"algorithm": "hetero_lr", "label": "label", "key": "id",
                       "arbiter": "node-c"}}})


def test_vertical_training_through_the_panel_form_charts_loss_and_auc(nodes, tmp_path):
    a = nodes[0]
    _cancer_split_sets(nodes, tmp_path)
    client, token = panel_of(a)
    job, path = run_with_partners(a, client, token, {
        "operator": "train", "dataset": "bct", "peers": "node-b", "dataset_of_node-b": "bct",
        "algorithm": "hetero_lr", "label": "label", "key": "id", "rounds": "3",
        "bins": "10", "reveal": "both", "columns": "", "stats": "", "receivers": "all",
        "clusters": "3", "secure_aggregation": "mask"}, timeout=180)
    assert job["state"] == "done", job["error"]
    assert len(job["result"]["outputs"]["history"]) == 3
    page = client.get(path).get_data(as_text=True)
    assert "validation loss" in page and "validation auc" in page
    # SecureBoost from the same form: rounds are trees
    job, path = run_with_partners(a, client, token, {
        "operator": "train", "dataset": "bct", "peers": "node-b", "dataset_of_node-b": "bct",
        "algorithm": "hetero_secureboost", "label": "label", "key": "id", "rounds": "2",
        "bins": "10", "reveal": "both", "columns": "", "stats": "", "receivers": "all",
        "clusters": "3", "secure_aggregation": "mask"}, timeout=180)
    assert job["state"] == "done", job["error"]
    assert job["result"]["outputs"]["trees"] == 2
    assert "validation auc" in client.get(path).get_data(as_text=True)
    # joint inference from the same form, evaluated on the test rows
    model = job["result"]["outputs"]["model"]
    job, _ = run_with_partners(a, client, token, {
        "operator": "predict", "dataset": "bce", "peers": "node-b", "dataset_of_node-b": "bce",
        "model": model, "label": "label", "algorithm": "homo_lr", "key": "", "rounds": "1",
        "bins": "10", "reveal": "both", "columns": "", "stats": "", "receivers": "all",
        "clusters": "3", "secure_aggregation": "mask"}, timeout=120)
    assert job["state"] == "done", job["error"]
    assert job["result"]["outputs"]["metrics"]["auc"] > 0.9


def test_secureboost_trains_and_both_vertical_models_predict_online(nodes, tmp_path):
    import csv as csv_

    a, b, _ = nodes
    x, _, _, test = _cancer_split_sets(nodes, tmp_path)
    job = a.api.post("/v1/jobs", {"kind": "train", "params": {
        "peers": ["node-b"], "dataset": "bct", "peer_datasets": {"node-b": "bct"},
        "params": {"algorithm": "hetero_secureboost", "label": "label", "key": "id",
                   "trees": 3, "depth": 3, "validation": 0.2}}})
    done = a.daemon.wait_job(job["id"], {"done", "failed"}, timeout=240)
    assert done["state"] == "done", done.get("error")
    out = done["result"]["outputs"]
    assert out["trees"] == 3 and out["final"]["auc"] > 0.9
    boost = out["model"]
    shown = b.api.get(f"/v1/models/{boost}")
    assert shown["role"] == "host" and set(shown["importance"]) <= {
        f"f{j}" for j in range(15, 30)}
    # batch joint inference on the test rows
    pred = a.api.post("/v1/jobs", {"kind": "predict", "params": {
        "peers": ["node-b"], "dataset": "bce", "peer_datasets": {"node-b": "bce"},
        "params": {"model": boost, "label": "label"}}})
    pred = a.daemon.wait_job(pred["id"], {"done", "failed"}, timeout=120)
    assert pred["state"] == "done", pred.get("error")
    assert pred["result"]["outputs"]["metrics"]["auc"] > 0.95
    with open(pred["result"]["outputs"]["rows_file"]) as f:
        batch = {r["id"]: float(r["score"]) for r in csv_.DictReader(f)}
    # online: the same rows one at a time and as a batch give the batch job's scores; node-b
    # reads its test rows (it trained on bct)
    rows = [{"id": f"p{i}", **{f"f{j}": float(x[i, j]) for j in range(15)}} for i in test]
    answer = a.api.post(f"/v1/models/{boost}/predict",
                        {"rows": rows, "peer_datasets": {"node-b": "bce"}})
    assert len(answer["predictions"]) == len(rows)
    for p in answer["predictions"]:
        assert abs(p["score"] - batch[p["id"]]) < 1e-6
    latencies = []
    for r in rows[:20]:
        t0 = time.perf_counter()
        one = a.api.post(f"/v1/models/{boost}/predict",
                         {"rows": [r], "peer_datasets": {"node-b": "bce"}})
        latencies.append(time.perf_counter() - t0)
        assert abs(one["predictions"][0]["score"] - batch[r["id"]]) < 1e-6
    print(f"online single-row latency over loopback: median {sorted(latencies)[10] * 1e3:.1f} "
          "ms")
    # the host refuses ids it does not hold, and a request at the host is refused
    with pytest.raises(DaemonError, match="not in data set"):
        a.api.post(f"/v1/models/{boost}/predict",
                   {"rows": [{**rows[0], "id": "nobody"}], "peer_datasets": {"node-b": "bce"}})
    with pytest.raises(DaemonError, match="ask its guest"):
        b.api.post(f"/v1/models/{boost}/predict", {"rows": rows[:1]})
    # a hetero_lr model online, from the host's training data set by default
    lr = json.loads(cli("models", "list", "--json", "--state-dir", str(a.state)).stdout)
    lr_models = [m["model"] for m in lr["models"] if m["algorithm"] == "hetero_lr"
                 and m["role"] == "guest"]
    if lr_models:
        with pytest.raises(DaemonError, match="not in data set bct"):
            a.api.post(f"/v1/models/{lr_models[-1]}/predict", {"rows": rows[:1]})
        got = a.api.post(f"/v1/models/{lr_models[-1]}/predict",
                         {"rows": rows[:3], "peer_datasets": {"node-b": "bce"}})
        assert all(0 < p["score"] < 1 for p in got["predictions"])
