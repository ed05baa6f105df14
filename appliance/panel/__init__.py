"""Local admin panel: a Flask app that reaches the node only through the daemon's local API."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so the CLI that registers the panel command does not load Flask for other commands.
    if name == "create_app":
        from appliance.panel.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
