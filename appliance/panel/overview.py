"""Overview: the profile and why, capabilities, inventory, live load and subsystem health."""

from __future__ import annotations

from collections.abc import Mapping
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
# The daemon's built-in profile for developers' machines (appliance.host.profile.DEVELOPMENT; the
# panel does not import the daemon's modules).
DEVELOPMENT = "development"


def capability_matrix(
    enabled: list[str], matrix: Mapping[str, Any] | None, current: str | None = None,
    *, in_effect: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Rows of capabilities against each profile's offer and this node's state.

    ``matrix`` is the daemon's ``{profile: {"always": [...], "choose_one": [...]}}``; without it
    only this node's column is shown. ``current`` is this node's profile, whose column is
    marked. ``in_effect`` says what the node does whatever its profile offers (the ledger is
    signed whenever the signing key is unlocked): the node's column shows what is true.
    """
    in_effect = in_effect or {}
    offers = {
        name: (set(offer.get("always") or ()), set(offer.get("choose_one") or ()))
        for name, offer in (matrix or {}).items()
        if isinstance(offer, Mapping)
    }
    offered = {cap for always, one_of in offers.values() for cap in always | one_of}
    names = list(KNOWN_CAPABILITIES)
    names += sorted((set(enabled) | offered) - set(KNOWN_CAPABILITIES))
    rows = []
    for name in names:
        cells = []
        for profile, (always, one_of) in offers.items():
            offer = "yes" if name in always else "one of" if name in one_of else "no"
            cells.append({"offer": offer, "current": profile == current})
        rows.append({"name": name, "label": KNOWN_CAPABILITIES.get(name, name),
                     "cells": cells, "enabled": in_effect.get(name, name in enabled)})
    profiles = [{"name": name, "current": name == current} for name in offers]
    return {"profiles": profiles, "rows": rows}


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
        development=profile.get("profile") == DEVELOPMENT,
        capabilities=capability_matrix(
            list(profile.get("capabilities") or []), profile.get("matrix"),
            current=profile.get("profile"),
            in_effect={"ledger": bool(status.get("ledger_signed"))},
        ),
    )


@bp.get("/live.json")
def live() -> Any:
    return jsonify(daemon().get("/v1/live"))
