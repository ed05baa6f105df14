"""A real daemon for the panel's in-process tests, and helpers to act as a browser would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.client import DaemonClient
from appliance.panel import create_app
from tests.e2e.panel_stack import PanelStack

ORIGIN = "http://localhost"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PanelStack]:
    stack = PanelStack(tmp_path_factory.mktemp("panel"))
    try:
        stack.start_daemon()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def daemon(stack: PanelStack) -> DaemonClient:
    return DaemonClient(stack.state_dir)


@pytest.fixture
def app(stack: PanelStack) -> Flask:
    app = create_app({"STATE_DIR": stack.state_dir})
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


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
            {"username": username, "password": password, "role": role, "actor": "test"},
        )


@pytest.fixture
def state_dir(stack: PanelStack) -> Path:
    return stack.state_dir
