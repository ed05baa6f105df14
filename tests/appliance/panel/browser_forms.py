"""Acting as the browser does: same-origin form posts carrying the session's CSRF token."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from appliance.client import DaemonClient

ORIGIN = "http://localhost"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(client: FlaskClient, path: str = "/login") -> str:
    page = client.get(path)
    match = CSRF_INPUT.search(page.get_data(as_text=True))
    assert match, f"no CSRF token in the form of {path}"
    return match.group(1)


def post(client: FlaskClient, path: str, data: dict, *, token: str | None = None, **kw):
    """A same-origin form post as the browser sends it (Origin header and CSRF token)."""
    form = dict(data)
    if token is not None:
        form["csrf_token"] = token
    headers = {"Origin": ORIGIN, **kw.pop("headers", {})}
    return client.post(path, data=form, headers=headers, **kw)


def login(client: FlaskClient, username: str, password: str) -> str:
    """Log in and return the session's CSRF token for later writes."""
    token = csrf_of(client)
    answer = post(client, "/login", {"username": username, "password": password}, token=token)
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return csrf_of(client, "/users")


def ensure_user(daemon: DaemonClient, username: str, password: str, role: str) -> None:
    names = {u["username"] for u in daemon.get("/v1/users")["users"]}
    if username not in names:
        daemon.post(
            "/v1/users",
            {"username": username, "password": password, "role": role},
        )
