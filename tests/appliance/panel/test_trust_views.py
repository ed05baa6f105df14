"""What the panel shows of the trust root's state: records awaiting signing, this node's profile
in the capability matrix. Each against a real daemon."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask

from appliance.client import DaemonClient
from appliance.panel import create_app
from tests.appliance.daemon_proc import seal_pin_to_another_boot_chain
from tests.appliance.panel.browser_forms import login
from tests.e2e.panel_stack import ADMIN_PASSWORD, PanelStack


@pytest.fixture(scope="module")
def locked_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PanelStack]:
    """A daemon started on a boot chain its HSM PIN was not sealed to: the keys stay locked."""
    stack = PanelStack(tmp_path_factory.mktemp("locked"))
    try:
        stack.start_daemon(before_serve=seal_pin_to_another_boot_chain)
        yield stack
    finally:
        stack.stop()


def _panel(stack: PanelStack) -> Flask:
    app = create_app({"STATE_DIR": stack.state_dir})
    app.config["TESTING"] = True
    return app


def test_audit_page_says_how_many_records_await_signing(locked_stack):
    daemon = DaemonClient(locked_stack.state_dir)
    assert daemon.get("/v1/status")["health"]["hsm"]["ok"] is False
    client = _panel(locked_stack).test_client()
    login(client, "admin", ADMIN_PASSWORD)  # itself an act kept unsigned
    pending = daemon.get("/v1/audit")["unsigned_pending"]
    assert pending >= 3  # init, provisioning, the login
    page = client.get("/audit").get_data(as_text=True)
    note = re.search(r'id="unsigned-pending">(.*?)</div>', page, re.S)
    assert note, "no note about the records awaiting signing"
    text = " ".join(note.group(1).split())
    assert f"{pending} records await signing" in text and "keys are locked" in text


def test_audit_page_has_no_pending_note_with_the_keys_unlocked(client, daemon):
    login(client, "admin", ADMIN_PASSWORD)
    assert daemon.get("/v1/audit")["unsigned_pending"] == 0
    page = client.get("/audit").get_data(as_text=True)
    assert "<h1>Audit ledger</h1>" in page
    assert 'id="unsigned-pending"' not in page and "await signing" not in page


def test_overview_marks_this_nodes_profile_column(client, daemon):
    login(client, "admin", ADMIN_PASSWORD)
    before = daemon.get("/v1/profile").get("override")
    try:
        daemon.put("/v1/profile/override", {"profile": "standard"})
        page = client.get("/").get_data(as_text=True)
        header = re.search(r"<thead><tr><th scope=\"col\">Capability</th>(.*?)</tr></thead>",
                           page, re.S)
        assert header, "no capability matrix on the overview"
        columns = re.findall(r"<th scope=\"col\"( class=\"this-profile\")?>([A-Za-z ]+)",
                             header.group(1))
        assert [(bool(mark), name.strip()) for mark, name in columns] == [
            (False, "Mini"), (True, "Standard"), (False, "Jumbo"), (False, "This node")]
        body = page[header.end():page.index("</tbody>", header.end())]
        rows = re.findall(r"<tr><th scope=\"row\">.*?</tr>", body, re.S)
        assert len(rows) >= 4  # mpc, fl, ledger, tee
        for row in rows:
            marks = re.findall(r"<td class=\"offer offer-[a-z-]+( this-profile)?\">", row)
            assert [bool(m) for m in marks] == [False, True, False], row
    finally:
        daemon.put("/v1/profile/override",
                   {"profile": before["profile"] if before else None})
