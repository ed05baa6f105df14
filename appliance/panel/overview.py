"""Overview: the profile and why, capabilities, inventory, live load and subsystem health."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from appliance.panel.daemon import daemon

bp = Blueprint("overview", __name__)

# The capabilities a profile can carry (DESIGN.md); the node's own list decides which are on.
KNOWN_CAPABILITIES = {
    "mpc": "Secure multi-party computation",
    "fl": "Federated learning",
    "ledger": "Signed audit ledger",
    "tee": "Trusted execution environment",
}


def capability_matrix(enabled: list[str]) -> list[dict[str, Any]]:
    names = list(KNOWN_CAPABILITIES) + sorted(set(enabled) - set(KNOWN_CAPABILITIES))
    return [
        {"name": name, "label": KNOWN_CAPABILITIES.get(name, name), "enabled": name in enabled}
        for name in names
    ]


@bp.get("/")
def index() -> str:
    client = daemon()
    status = client.get("/v1/status")
    profile = client.get("/v1/profile")
    inventory = client.get("/v1/inventory")
    return render_template(
        "overview.html",
        status=status,
        profile=profile,
        inventory=inventory,
        live=client.get("/v1/live"),
        capabilities=capability_matrix(list(profile.get("capabilities") or [])),
    )


@bp.get("/live.json")
def live() -> Any:
    return jsonify(daemon().get("/v1/live"))
