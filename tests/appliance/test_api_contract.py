"""The OpenAPI document and the daemon's routes describe the same API."""

from __future__ import annotations

import re

import yaml

from appliance import api
from tests.appliance.daemon_proc import REPO


def documented() -> dict:
    return yaml.safe_load((REPO / "docs" / "api-openapi.yaml").read_text())


def test_openapi_lists_exactly_the_served_routes():
    doc = documented()
    assert doc["openapi"].startswith("3.")
    in_doc = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete")
    }
    served = set()
    for method, pattern, _ in api.routes():
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern.strip("^$"))
        served.add((method, path))
    assert in_doc == served


def test_openapi_references_resolve():
    doc = documented()
    text = (REPO / "docs" / "api-openapi.yaml").read_text()
    for ref in set(re.findall(r'\$ref: "#/([^"]+)"', text)):
        node = doc
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]
