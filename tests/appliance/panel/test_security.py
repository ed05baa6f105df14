"""Security of the panel against a real daemon: headers, cookies, CSRF, origin, roles, sessions."""

from __future__ import annotations

import os
import stat
import time

from appliance.client import DaemonClient, DaemonError
from appliance.panel import create_app
from appliance.panel.security import SECURITY_HEADERS
from tests.appliance.panel.browser_forms import ORIGIN, csrf_of, ensure_user, login, post
from tests.e2e.panel_stack import ADMIN_PASSWORD

AUDITOR_PASSWORD = "auditor password 123"


def _users(daemon: DaemonClient) -> set[str]:
    return {u["username"] for u in daemon.get("/v1/users")["users"]}


def test_every_response_carries_the_security_headers(client):
    answers = [
        client.get("/login"),  # page
        client.get("/static/panel.css"),  # asset
        client.get("/"),  # redirect to login
        client.get("/no-such-page"),  # 404
        client.post("/login", data={}),  # refused write
    ]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers.get(name) == value, (answer.request.path, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp


def test_pages_have_no_inline_script_or_style(client):
    login(client, "admin", ADMIN_PASSWORD)
    for path in ("/", "/accelerators", "/keys", "/attestation", "/jobs", "/audit", "/users"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>" not in html and "<style" not in html and " style=" not in html, path
        assert " onclick=" not in html and "javascript:" not in html, path


def test_session_cookie_is_httponly_strict_and_secure_under_tls(client, stack):
    cookie = client.get("/login").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    tls_app = create_app({"STATE_DIR": stack.state_dir, "TLS": True})
    cookie = tls_app.test_client().get("/login", base_url="https://localhost").headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_session_secret_is_private_and_stable(stack):
    secret = stack.state_dir / "panel" / "secret"
    first = create_app({"STATE_DIR": stack.state_dir}).secret_key
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert create_app({"STATE_DIR": stack.state_dir}).secret_key == first == secret.read_bytes()


def test_pages_need_a_login(client):
    for path in ("/", "/keys", "/users", "/audit"):
        answer = client.get(path)
        assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert client.get("/live.json").status_code == 401
    assert client.get("/jobs/1.json").status_code == 401


def test_login_and_logout_are_audited(client, daemon):
    before = daemon.get("/v1/audit", action="panel.login")["total"]
    token = login(client, "admin", ADMIN_PASSWORD)
    assert daemon.get("/v1/audit", action="panel.login")["total"] == before + 1
    assert post(client, "/logout", {}, token=token).status_code == 302
    # the panel vouches for its logged-in user; the daemon names the panel's account too
    logouts = daemon.get("/v1/audit", action="panel.logout",
                         actor=f"panel:admin via uid {os.geteuid()}")["records"]
    assert logouts, "logout not in the ledger"
    assert client.get("/users").status_code == 302  # the session is gone


def test_failed_login_is_refused_and_audited(client, daemon):
    token = csrf_of(client)
    answer = post(client, "/login", {"username": "admin", "password": "wrong" * 3}, token=token)
    assert answer.status_code == 401
    assert "Login refused" in answer.get_data(as_text=True)
    # nobody proved who they are: the panel itself is the actor, the name tried a detail
    failed = daemon.get("/v1/audit", action="panel.login_failed")["records"]
    assert failed and failed[0]["details"]["reason"]
    assert failed[0]["details"]["username"] == "admin"
    assert not failed[0]["actor"].startswith("panel:")


def test_login_redirects_only_to_local_paths(client):
    token = csrf_of(client)
    answer = post(client, "/login", {"username": "admin", "password": ADMIN_PASSWORD,
                                     "next": "//evil.example/x"}, token=token)
    assert answer.status_code == 302 and answer.headers["Location"] == "/"


def test_write_without_or_with_a_wrong_csrf_token_is_refused(client, daemon):
    login(client, "admin", ADMIN_PASSWORD)
    form = {"username": "nocsrf", "role": "auditor",
            "password": "long enough pw 1", "password_confirm": "long enough pw 1"}
    assert post(client, "/users", form).status_code == 400
    assert post(client, "/users", form, token="forged-token").status_code == 400
    assert "nocsrf" not in _users(daemon)


def test_cross_origin_write_is_refused(client, daemon):
    token = login(client, "admin", ADMIN_PASSWORD)
    form = {"username": "crossorigin", "role": "auditor", "csrf_token": token,
            "password": "long enough pw 1", "password_confirm": "long enough pw 1"}
    assert client.post("/users", data=form, headers={"Origin": "http://evil.example"}
                       ).status_code == 403
    assert client.post("/users", data=form).status_code == 403  # neither Origin nor Referer
    assert client.post("/users", data=form, headers={"Referer": "http://evil.example/users"}
                       ).status_code == 403
    assert "crossorigin" not in _users(daemon)
    # The same form from our own page goes through.
    answer = client.post("/users", data=form, headers={"Referer": f"{ORIGIN}/users"})
    assert answer.status_code == 302 and "crossorigin" in _users(daemon)


def test_auditor_is_refused_every_write_route(app, client, daemon):
    ensure_user(daemon, "auditor1", AUDITOR_PASSWORD, "auditor")
    token = login(client, "auditor1", AUDITOR_PASSWORD)
    page = client.get("/users").get_data(as_text=True)
    assert "Create a user" not in page and "Change your password" in page
    assert "Start benchmark" not in client.get("/accelerators").get_data(as_text=True)

    refused = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if "POST" not in rule.methods or getattr(view, "open_to_auditors", False) \
                or getattr(view, "public", False):
            continue
        path = rule.rule.replace("<int:job_id>", "1")
        answer = post(client, path, {"kind": "selftest", "bits": "2048", "username": "x"},
                      token=token)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "read-only" in answer.get_data(as_text=True)
        refused.append(path)
    assert {"/users", "/jobs", "/keys/rotate-kek", "/users/profile-override"} <= set(refused)
    assert "x" not in _users(daemon)
    # Read-only verification stays open to auditors.
    assert post(client, "/audit/verify", {}, token=token).status_code == 302


def test_login_rate_limit_per_address(stack):
    app = create_app({"STATE_DIR": stack.state_dir, "LOGIN_RATE_LIMIT": (3, 60)})
    client = app.test_client()
    token = csrf_of(client)
    codes = [
        post(client, "/login", {"username": "nobody", "password": "x"}, token=token).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # Another address is not affected.
    answer = post(client, "/login", {"username": "nobody", "password": "x"}, token=token,
                  environ_base={"REMOTE_ADDR": "127.0.0.9"})
    assert answer.status_code == 401


def test_idle_session_is_logged_out(client, daemon):
    login(client, "admin", ADMIN_PASSWORD)
    timeout = daemon.get("/v1/settings")["session_timeout_s"]
    assert client.get("/jobs").status_code == 200
    with client.session_transaction() as session:
        session["last_seen"] = time.time() - timeout - 5
    answer = client.get("/jobs")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]
    assert "without activity" in client.get("/login").get_data(as_text=True)
    assert client.get("/jobs").status_code == 302


def test_trust_pages_show_the_daemons_answer_or_why_it_is_unavailable(client, daemon):
    login(client, "admin", ADMIN_PASSWORD)
    for path, api, shown in (("/keys", "/v1/keys", "Hardware security module"),
                             ("/attestation", "/v1/attestation/pcrs", "PCR values")):
        page = client.get(path)
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        try:
            daemon.get(api)
        except DaemonError as error:
            assert error.status in (404, 503)
            assert "not available:" in html and error.message in html
        else:
            assert shown in html and "not available:" not in html


def test_an_auditor_changes_their_own_password(app, daemon):
    ensure_user(daemon, "auditor2", AUDITOR_PASSWORD, "auditor")
    client = app.test_client()
    token = login(client, "auditor2", AUDITOR_PASSWORD)
    new = "a brand new secret 7"
    form = {"old_password": AUDITOR_PASSWORD, "new_password": new,
            "new_password_confirm": new}
    answer = post(client, "/users/password", form, token=token)
    assert answer.status_code == 302
    assert "Your password is changed" in client.get("/users").get_data(as_text=True)
    verdict = daemon.post("/v1/users/authenticate",
                          {"username": "auditor2", "password": new, "remote": "test"})
    assert verdict["ok"] and verdict["role"] == "auditor"
    # A wrong current password changes nothing.
    form = {"old_password": "not it at all", "new_password": "x" * 20,
            "new_password_confirm": "x" * 20}
    page = client.get(post(client, "/users/password", form, token=token).headers["Location"])
    assert "Nothing changed" in page.get_data(as_text=True)
    assert daemon.post("/v1/users/authenticate",
                       {"username": "auditor2", "password": new, "remote": "test"})["ok"]
