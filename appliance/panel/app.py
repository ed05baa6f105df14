"""Application factory of the local admin panel."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from appliance.client import DaemonClient
from appliance.panel import (
    accelerators,
    attestation,
    audit,
    auth,
    datasets,
    filters,
    jobs,
    keys,
    overview,
    partners,
    pir,
    security,
    users,
)
from appliance.panel.daemon import DaemonError, error_message
from appliance.panel.forms import FormError
from appliance.panel.security import SAFE_METHODS, LoginRateLimiter, wants_json

DEFAULTS: dict[str, Any] = {
    "TLS": False,
    "LOGIN_RATE_LIMIT": (20, 60.0),  # attempts per remote address, window in seconds
    "MAX_CONTENT_LENGTH": 256 * 1024,  # the largest form is an attestation bundle upload
}

NAVIGATION = (
    ("overview.index", "Overview"),
    ("accelerators.index", "Accelerators"),
    ("keys.index", "Keys"),
    ("attestation.index", "Attestation"),
    ("partners.index", "Partners"),
    ("datasets.index", "Data sets"),
    ("pir.index", "Private query"),
    ("jobs.index", "Jobs"),
    ("audit.index", "Audit"),
    ("users.index", "Users & settings"),
)


def create_app(config: Mapping[str, Any]) -> Flask:
    """Build the panel for the daemon whose state directory is ``config["STATE_DIR"]``."""
    if "STATE_DIR" not in config:
        raise ValueError("panel config needs STATE_DIR, the daemon's state directory")
    settings = {**DEFAULTS, **config}
    state_dir = Path(settings["STATE_DIR"])
    if not state_dir.is_dir():
        raise ValueError(f"state directory {state_dir} does not exist; run pec-appliance init")

    app = Flask(__name__)
    app.config.update(settings)
    app.config.update(
        SECRET_KEY=security.load_or_create_secret(state_dir / "panel" / "secret"),
        SESSION_COOKIE_NAME="pec_panel",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=bool(settings["TLS"]),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
    )
    attempts, window_s = settings["LOGIN_RATE_LIMIT"]
    app.extensions["pec.daemon"] = DaemonClient(state_dir)
    app.extensions["pec.login_limiter"] = LoginRateLimiter(int(attempts), float(window_s))

    auth.install(app)  # the idle timeout runs before the write guards
    security.install(app)
    for module in (overview, accelerators, keys, attestation, partners, datasets, pir, jobs,
                   audit, users):
        app.register_blueprint(module.bp)
    _install_error_pages(app)
    filters.install(app)
    app.jinja_env.globals["navigation"] = NAVIGATION
    return app


def _back() -> str:
    """Where a refused form returns to: the page it came from, when that page is ours."""
    referer = request.headers.get("Referer", "")
    if referer.startswith(request.host_url):
        parts = urlsplit(referer)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return url_for("overview.index")


def _install_error_pages(app: Flask) -> None:
    @app.errorhandler(FormError)
    def form_error(error: FormError) -> Any:
        flash(f"Nothing changed: {error}", "error")
        return redirect(_back())

    @app.errorhandler(DaemonError)
    def daemon_error(error: DaemonError) -> Any:
        message = error_message(error)
        # The daemon's refusals of a request (unknown job...) keep their status; anything else
        # means the daemon could not answer.
        status = error.status if 400 <= error.status < 500 else 502
        if wants_json():
            return jsonify(error=message), status
        if request.method not in SAFE_METHODS:
            flash(f"Nothing changed: {message}", "error")
            return redirect(_back())
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        message = error.description or error.name
        if status == 413:
            limit_kib = app.config["MAX_CONTENT_LENGTH"] // 1024
            message = f"the upload is too large (at most {limit_kib} KiB)"
        if wants_json():
            return jsonify(error=message), status
        return render_template("error.html", status=status, message=message), status
