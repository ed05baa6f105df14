"""Account administration, the shared username rule, and what the Accelerators, Job and
Overview pages show, against a real daemon."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from appliance.accounts.rules import MAX_USERNAME
from appliance.client import DaemonError
from tests.appliance.panel.browser_forms import ensure_user, login, post
from tests.e2e.panel_stack import ADMIN_PASSWORD

PASSWORD = "carol password 123"


@pytest.fixture
def admin(client):
    return login(client, "admin", ADMIN_PASSWORD)


def _user(daemon, name):
    return next((u for u in daemon.get("/v1/users")["users"] if u["username"] == name), None)


def _page_after(client, answer) -> str:
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return client.get(answer.headers["Location"]).get_data(as_text=True)


def test_admin_unlocks_changes_role_disables_and_deletes(client, daemon, admin):
    ensure_user(daemon, "carol", PASSWORD, "auditor")
    for _ in range(5):
        daemon.post("/v1/users/authenticate", {"username": "carol", "password": "wrong one!"})
    assert _user(daemon, "carol")["locked_until"]
    page = client.get("/users").get_data(as_text=True)
    assert "Unlock" in page and "/users/carol/unlock" in page
    assert "Nothing changed" not in _page_after(client, post(client, "/users/carol/unlock", {},
                                                             token=admin))
    assert _user(daemon, "carol")["locked_until"] is None
    post(client, "/users/carol/role", {"role": "admin"}, token=admin)
    assert _user(daemon, "carol")["role"] == "admin"
    post(client, "/users/carol/disable", {}, token=admin)
    assert _user(daemon, "carol")["disabled"] is True
    verdict = daemon.post("/v1/users/authenticate", {"username": "carol", "password": PASSWORD})
    assert verdict == {"ok": False, "role": None, "reason": "invalid username or password"}
    post(client, "/users/carol/enable", {}, token=admin)
    assert daemon.post("/v1/users/authenticate",
                       {"username": "carol", "password": PASSWORD})["ok"] is True
    assert "is deleted" in _page_after(client, post(client, "/users/carol/delete", {},
                                                    token=admin))
    assert _user(daemon, "carol") is None
    records = daemon.get("/v1/audit", limit=50)["records"]
    done = {r["action"] for r in records if r["actor"].startswith("panel:admin")}
    assert {"user.unlock", "user.update", "user.delete"} <= done


def test_no_one_removes_the_last_admin_or_their_own_account(client, daemon, admin):
    for path, form in (("/users/admin/disable", {}), ("/users/admin/delete", {}),
                       ("/users/admin/role", {"role": "auditor"})):
        page = _page_after(client, post(client, path, form, token=admin,
                                        headers={"Referer": "http://localhost/users"}))
        assert "Nothing changed" in page and "your own account" in page
    for change in (lambda: daemon.put("/v1/users/admin", {"disabled": True}),
                   lambda: daemon.put("/v1/users/admin", {"role": "auditor"}),
                   lambda: daemon.delete("/v1/users/admin")):
        with pytest.raises(DaemonError, match="last enabled admin") as err:
            change()
        assert err.value.status == 400
    assert _user(daemon, "admin") == {**_user(daemon, "admin"), "role": "admin",
                                      "disabled": False}


def test_user_management_needs_the_csrf_token(client, daemon, admin):
    ensure_user(daemon, "dave", PASSWORD, "auditor")
    assert post(client, "/users/dave/delete", {}).status_code == 400
    assert _user(daemon, "dave") is not None


def test_login_and_creation_share_one_username_limit(client, admin):
    assert f'name="username" required maxlength="{MAX_USERNAME}"' in \
        client.get("/users").get_data(as_text=True)
    client.post("/logout", data={"csrf_token": admin}, headers={"Origin": "http://localhost"})
    login_page = client.get("/login").get_data(as_text=True)
    assert f'maxlength="{MAX_USERNAME}"' in login_page
    token = re.search(r'name="csrf_token" value="([^"]+)"', login_page).group(1)
    answer = post(client, "/login", {"username": "a" * (MAX_USERNAME + 1), "password": "x"},
                  token=token)
    assert answer.status_code == 400
    assert f"at most {MAX_USERNAME} characters" in answer.get_data(as_text=True)


def _insert_job(stack, kind: str, params: dict, result: dict) -> int:
    """A finished job as the daemon stores it (its runner writes the same row)."""
    db = sqlite3.connect(stack.state_dir / "pec.db")
    cur = db.execute(
        "INSERT INTO jobs (kind, state, progress, message, params, result, created, started, "
        "finished, actor) VALUES (?, 'done', 100, 'done', ?, ?, '2025-01-01T00:00:00.000Z', "
        "'2025-01-01T00:00:00.000Z', '2025-01-01T00:00:01.000Z', 'test')",
        (kind, json.dumps(params), json.dumps(result)))
    db.commit()
    db.close()
    return cur.lastrowid


def test_accelerators_chart_the_last_measured_benchmark_and_keep_its_key_size(stack, client,
                                                                               admin):
    row = {"accel_ops_s": 900.0, "phe_ops_s": 90.0, "ratio": 10.0, "target": 5.0}
    measured = _insert_job(stack, "benchmark", {"bits": 1024, "quick": False, "backend": None},
                           {"bits": 1024, "phe": "phe", "backends": {"cpu": {"encrypt": row}}})
    _insert_job(stack, "benchmark", {"bits": 512, "quick": True, "backend": "cuda"},
                {"bits": 512, "phe": "phe", "backends": {}, "skipped": {"cuda": "absent"}})
    page = client.get("/accelerators").get_data(as_text=True)
    assert f"Benchmark job #{measured}" in page and "<figure class=\"chart\">" in page
    assert '<option value="1024" selected>' in page  # the shown run's key size
    assert 'name="quick">' in page  # and its quick flag (off)


def test_selftest_result_is_a_table(stack, client, admin):
    job = _insert_job(stack, "selftest", {"batch": 16}, {"ok": True, "batch": 16, "backends": {
        "cpu": {"ok": True, "checks": {"health_probe": True, "mulmod": True, "powmod": True},
                "reason": None, "devices": ["cpu: 2 threads"]},
        "cuda": {"ok": None, "reason": "not available: ImportError: no module named pycuda"},
    }})
    page = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert "Self-test per backend" in page
    assert re.search(r"<th scope=\"row\">cpu</th><td><span class=\"badge badge-ok\">passed",
                     page)
    assert "health_probe, mulmod, powmod" in page and "no module named pycuda" in page


def test_overview_shows_the_ledger_as_it_is_and_the_override(client, daemon, admin):
    assert daemon.get("/v1/status")["ledger_signed"] is True
    page = client.get("/").get_data(as_text=True)
    ledger = re.search(r"Signed audit ledger <code>ledger</code>.*?</tr>", page, re.S).group(0)
    assert "badge-ok\">on" in ledger  # it was "off" on a box whose profile lacks it
    daemon.put("/v1/profile/override", {"profile": "development"})
    try:
        page = client.get("/").get_data(as_text=True)
        assert "Development" in page and "Development machine: every capability" in page
        assert "the hardware alone gives" in page
    finally:
        daemon.put("/v1/profile/override", {"profile": None})
