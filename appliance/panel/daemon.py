"""The panel's one way to reach the daemon: its local API over the Unix socket."""

from __future__ import annotations

from typing import Any

from flask import current_app

from appliance.client import DaemonClient, DaemonError

# Trust-root endpoints answer these while the HSM or TPM is not wired in or not configured.
UNAVAILABLE_STATUSES = frozenset({404, 501, 503})


def daemon() -> DaemonClient:
    return current_app.extensions["pec.daemon"]


def error_message(error: DaemonError) -> str:
    """One line for the page: the daemon's refusal, or why it could not be reached."""
    return error.message or str(error)


def fetch_optional(path: str, **query: Any) -> tuple[dict | None, str | None]:
    """GET a trust-root resource; (body, None) or (None, reason) when it is not available."""
    try:
        return daemon().get(path, **query), None
    except DaemonError as error:
        if error.status in UNAVAILABLE_STATUSES:
            return None, error_message(error)
        raise


__all__ = ["DaemonError", "daemon", "error_message", "fetch_optional"]
