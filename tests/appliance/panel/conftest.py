"""A real daemon for the panel's in-process tests (the panel itself runs in the test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from appliance.client import DaemonClient
from appliance.panel import create_app
from tests.e2e.panel_stack import PanelStack


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
