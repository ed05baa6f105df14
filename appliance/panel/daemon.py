"""The panel's one way to reach the daemon: its local API over the Unix socket."""

from __future__ import annotations

from typing import Any

from flask import current_app, has_request_context
from flask_login import current_user

from appliance.client import DaemonClient, DaemonError

# Trust-root endpoints answer these while the HSM or TPM is not wired in or not configured.
UNAVAILABLE_STATUSES = frozenset({404, 501, 503})


def daemon() -> DaemonClient:
    """The daemon's client; inside a logged-in user's request it names that user, so the
    daemon records them (as "panel:USER via uid N") for whatever this request does."""
    client: DaemonClient = current_app.extensions["pec.daemon"]
    if has_request_context() and current_user and current_user.is_authenticated:
        return client.on_behalf_of(current_user.username)
    return client


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
