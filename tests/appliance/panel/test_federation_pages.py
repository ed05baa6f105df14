"""Partners, Data sets and a job's parties, against the real daemon (which has no interconnect
configured here, so its node card is unavailable and no real peer can enrol)."""

from __future__ import annotations

import contextlib
import html
import re
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from appliance.client import DaemonClient, DaemonError
from tests.appliance.panel.browser_forms import ensure_user, login, post
from tests.e2e.panel_stack import ADMIN_PASSWORD

AUDITOR_PASSWORD = "auditor password 77"
ACTION_PATHS = ("/partners/bank-b/attest", "/partners/bank-b/approve",
                "/partners/bank-b/remove", "/partners/bank-b/reinstate")


@pytest.fixture
def admin(client: FlaskClient) -> str:
    return login(client, "admin", ADMIN_PASSWORD)


@pytest.fixture
def auditor(client: FlaskClient, daemon: DaemonClient) -> str:
    ensure_user(daemon, "fedaudit", AUDITOR_PASSWORD, "auditor")
    return login(client, "fedaudit", AUDITOR_PASSWORD)


def _cancel(daemon: DaemonClient, job_id: int) -> None:
    """Stop a job the test only needed to exist (it may have finished already)."""
    with contextlib.suppress(DaemonError):
        daemon.post(f"/v1/jobs/{job_id}/cancel", {})


def _post_forms(page: str) -> list[str]:
    return re.findall(r'<form method="post" action="([^"]+)"', page)


def _text(answer: Any) -> str:
    return html.unescape(answer.get_data(as_text=True))


def _follow(client: FlaskClient, answer: Any) -> str:
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return _text(client.get(answer.headers["Location"]))


def test_partners_page_shows_why_the_node_card_is_unavailable(client, admin):
    page = _text(client.get("/partners"))
    assert "<h1>Partners</h1>" in page
    assert "Show this node's card" in page and "Add partner" in page
    assert "No partner enrolled yet." in page
    answer = client.get("/partners?card=1")
    assert answer.status_code == 200
    shown = _text(answer)
    # no interconnect listener: the daemon refuses to make a card and the page says why
    assert "This node's card not available:" in shown
    assert re.search(r"interconnect|federation off", shown)
    assert "<textarea id=\"node-card\"" not in shown


def test_add_partner_with_a_garbage_card_names_the_format_check(client, admin):
    for card in ('{"hello": "world"}', "not json at all", "[1, 2]"):
        page = _follow(client, post(client, "/partners", {"name": "bank-x", "card": card},
                                    token=admin, headers={"Referer": "http://localhost/partners"}))
        assert "Nothing changed" in page and "format" in page, card
    assert "No partner enrolled yet." in page
    page = _follow(client, post(client, "/partners", {"name": "Bad Name!", "card": "{}"},
                                token=admin))
    assert "a partner name is" in page


def test_remove_and_reinstate_need_a_confirm_and_a_card(client, admin):
    page = _follow(client, post(client, "/partners/bank-b/remove", {}, token=admin))
    assert "tick the box to confirm" in page
    page = _follow(client, post(client, "/partners/bank-b/remove", {"confirm": "on"},
                                token=admin))
    assert "Nothing changed: no peer named" in page  # the daemon's refusal, shown
    page = _follow(client, post(client, "/partners/bank-b/reinstate", {"card": "{"},
                                token=admin))
    assert "format" in page


def test_auditor_sees_partners_and_data_sets_but_no_action_forms(client, auditor):
    page = _text(client.get("/partners"))
    assert "Show this node's card" in page  # reading the card is not a change
    assert _post_forms(page) == ["/logout"]
    assert "Add partner" not in page and "Attest now" not in page
    page = _text(client.get("/datasets"))
    assert "<h1>Data sets</h1>" in page and "Add a data set" not in page
    assert _post_forms(page) == ["/logout"]
    for path, form in (("/partners", {"name": "bank-x", "card": "{}"}),
                       ("/partners/bank-b/approve", {"accept": "true"}),
                       ("/datasets", {"name": "x", "path": "/x.csv", "id_column": "id",
                                      "grade": "L1"})):
        answer = post(client, path, form, token=auditor)
        assert answer.status_code == 403 and "read-only" in answer.get_data(as_text=True)


def test_data_set_added_through_the_form_is_listed_and_removed(client, admin, daemon,
                                                               tmp_path: Path):
    data = tmp_path / "customers.csv"
    data.write_text("id,age\n" + "".join(f"c{i:04d},{20 + i % 50}\n" for i in range(120)))
    page = _text(client.get("/datasets"))
    assert "<h1>Data sets</h1>" in page and "L4 — most sensitive" in page
    form = {"name": "panel-customers", "path": str(data), "id_column": "id", "grade": "L3"}
    page = _follow(client, post(client, "/datasets", form, token=admin))
    assert "Data set panel-customers registered: 120 rows, grade L3" in page
    registered = daemon.get("/v1/datasets/panel-customers")
    row = re.search(r"<th scope=\"row\">panel-customers</th>(.*?)</tr>", page, re.S)
    assert row, "the new data set is not in the table"
    for shown in ("L3", "csv", "120", "<code>id</code>", str(data),
                  registered["fingerprint"][:16], "panel:admin"):
        assert shown in row.group(1), shown
    # the daemon's refusals come back as the page's message
    bad = {**form, "name": "panel-bad", "id_column": "phone"}
    page = _follow(client, post(client, "/datasets", bad, token=admin))
    assert "Nothing changed" in page and 'id column "phone" not found' in page
    relative = {**form, "name": "panel-rel", "path": "customers.csv"}
    assert "absolute path" in _follow(client, post(client, "/datasets", relative, token=admin))
    # removing asks for the confirmation box, then forgets the registration
    page = _follow(client, post(client, "/datasets/panel-customers/remove", {}, token=admin))
    assert "tick the box to confirm" in page
    page = _follow(client, post(client, "/datasets/panel-customers/remove", {"confirm": "on"},
                                token=admin))
    assert "Data set panel-customers removed" in page
    assert '<th scope="row">panel-customers</th>' not in page
    assert data.exists()


def test_job_without_parties_has_no_parties_table(client, admin, daemon):
    job = daemon.post("/v1/jobs", {"kind": "selftest", "params": {}})
    try:
        page = _text(client.get(f"/jobs/{job['id']}"))
        assert f"Job #{job['id']}" in page
        assert "Parties" not in page
        assert "badge-fed" not in _text(client.get("/jobs"))
    finally:
        _cancel(daemon, job["id"])




def test_run_with_partners_says_to_enrol_a_partner_first(client, admin):
    page = _text(client.get("/jobs"))
    assert "Run with partners" in page
    assert 'enrol a partner first on <a href="/partners">Partners</a>' in page  # a hint
    assert "/jobs/multi-party" not in _post_forms(page)
    assert 'id="mp-operator"' not in page
    # the local "Start a job" list no longer offers operators, which need partners
    start = re.search(r'<select id="job-kind".*?</select>', page, re.S)
    assert start and "operator pec/" not in start.group(0)
    # a hand-made post is refused with a message and starts nothing
    form = {"operator": "count", "dataset": "customers", "peers": "bank-b",
            "dataset_of_bank-b": "theirs", "reveal": "both"}
    page = _follow(client, post(client, "/jobs/multi-party", form, token=admin,
                                headers={"Referer": "http://localhost/jobs"}))
    assert "Nothing changed: bank-b is not an active partner" in page


def test_auditor_sees_no_run_with_partners_form(client, auditor):
    page = _text(client.get("/jobs"))
    assert "Run with partners" not in page and "enrol a partner first" not in page
    assert _post_forms(page) == ["/logout"]
    answer = post(client, "/jobs/multi-party", {"operator": "count"}, token=auditor)
    assert answer.status_code == 403


def test_outputs_summary_of_a_finished_psi_job():
    from appliance.panel.jobs import outputs_summary

    job = {"kind": "psi", "state": "done", "result": {"outputs": {
        "intersection_size": 250, "dataset": "psi-7", "rows_file": "/x.csv"}}}
    assert [(r["label"], r["value"]) for r in outputs_summary(job)] == [
        ("Intersection size", 250), ("Kept as data set", "psi-7")]
    assert outputs_summary({**job, "state": "running"}) == []
    assert outputs_summary({"state": "done", "result": None}) == []
