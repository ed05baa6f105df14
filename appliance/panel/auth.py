"""Login, logout and the idle timeout. Passwords are checked by the daemon, never here."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user

from appliance.accounts.rules import MAX_PASSWORD, MAX_USERNAME, ROLES
from appliance.client import DaemonClient
from appliance.panel.daemon import DaemonError, daemon, error_message
from appliance.panel.forms import FormError, text_field
from appliance.panel.security import csrf_token, open_to_auditors, public, wants_json

bp = Blueprint("auth", __name__)

DEFAULT_SESSION_TIMEOUT_S = 900
SETTINGS_CACHE_S = 5.0


class PanelUser(UserMixin):
    def __init__(self, username: str, role: str) -> None:
        self.id = username
        self.username = username
        self.role = role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class SessionTimeout:
    """The idle timeout set in the daemon's settings, re-read every few seconds."""

    def __init__(self) -> None:
        self._value = DEFAULT_SESSION_TIMEOUT_S
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def seconds(self) -> int:
        with self._lock:
            if time.monotonic() - self._read_at > SETTINGS_CACHE_S:
                try:
                    value = int(daemon().get("/v1/settings")["session_timeout_s"])
                    self._value = value if value > 0 else DEFAULT_SESSION_TIMEOUT_S
                except (DaemonError, KeyError, TypeError, ValueError):
                    pass  # keep the last known value while the daemon is busy or restarting
                self._read_at = time.monotonic()
            return self._value

    def forget(self) -> None:
        with self._lock:
            self._read_at = float("-inf")


def session_timeout() -> SessionTimeout:
    return current_app.extensions["pec.session_timeout"]


def _unauthorized() -> Any:
    if wants_json():
        return jsonify(error="not logged in"), 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    # Only local paths: an open redirect would turn the login page into a phishing aid.
    if target and target.startswith("/") and not target.startswith("//"):
        return target
    return url_for("overview.index")


def _record(username: str, action: str, details: dict[str, Any], *,
            authenticated: bool) -> None:
    """Record a session event. The daemon names the actor: the panel user only when that user
    proved who they are (logged in, logging out); otherwise the panel itself, with the name
    that was tried in the details."""
    client: DaemonClient = current_app.extensions["pec.daemon"]
    if authenticated:
        client = client.on_behalf_of(username)
    else:
        details = {**details, "username": username}
    try:
        client.post("/v1/audit/record", {"action": action, "object": "panel", "details": details})
    except DaemonError as error:
        current_app.logger.error("could not record %s for %s: %s", action, username, error)


def expire_idle_session() -> Any:
    """before_request hook: log out a session idle for longer than the configured timeout."""
    if request.endpoint in (None, "static") or not current_user.is_authenticated:
        return None
    now = time.time()
    timeout = session_timeout().seconds()
    last_seen = session.get("last_seen", now)
    if now - last_seen > timeout:
        username = current_user.username
        logout_user()
        session.clear()
        _record(username, "panel.session_expired", {"remote": request.remote_addr},
                authenticated=False)
        flash(f"Your session ended after {timeout // 60 or 1} min without activity.", "info")
        return _unauthorized()
    # Background polling must not keep an unattended session alive.
    if not request.path.endswith(".json"):
        session["last_seen"] = now
    return None


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> Any:
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("login.html", next=request.args.get("next", ""))
    remote = request.remote_addr or "unknown"
    if not current_app.extensions["pec.login_limiter"].allow(remote):
        flash("Too many login attempts from your address; wait a minute and try again.", "error")
        return render_template("login.html", next=request.form.get("next", "")), 429
    try:
        username = text_field(request.form, "username", max_len=MAX_USERNAME)
        password = text_field(request.form, "password", max_len=MAX_PASSWORD, strip=False)
    except FormError as error:
        flash(str(error), "error")
        return render_template("login.html", next=request.form.get("next", "")), 400
    try:
        verdict = daemon().post(
            "/v1/users/authenticate",
            {"username": username, "password": password, "remote": remote},
        )
    except DaemonError as error:
        flash(f"Cannot check the password: {error_message(error)}", "error")
        return render_template("login.html", next=request.form.get("next", "")), 503
    if not verdict.get("ok") or verdict.get("role") not in ROLES:
        reason = verdict.get("reason") or "invalid username or password"
        _record(username, "panel.login_failed", {"remote": remote, "reason": reason},
                authenticated=False)
        flash(f"Login refused: {reason}", "error")
        return render_template("login.html", next=request.form.get("next", "")), 401
    # A fresh session on login, so a token planted before it is worth nothing after it.
    session.clear()
    login_user(PanelUser(username, verdict["role"]))
    session["role"] = verdict["role"]
    session["last_seen"] = time.time()
    csrf_token()
    _record(username, "panel.login", {"remote": remote}, authenticated=True)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
@open_to_auditors
def logout() -> Any:
    username = current_user.username
    logout_user()
    session.clear()
    _record(username, "panel.logout", {"remote": request.remote_addr}, authenticated=True)
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


def install(app: Flask) -> None:
    manager = LoginManager()
    manager.session_protection = "strong"
    manager.unauthorized_handler(_unauthorized)

    @manager.user_loader
    def load_user(user_id: str) -> PanelUser | None:
        role = session.get("role")
        return PanelUser(user_id, role) if role in ROLES else None

    manager.init_app(app)
    # the forms' maxlength and the checks here and in the daemon are one rule
    app.jinja_env.globals["max_username"] = MAX_USERNAME
    app.extensions["pec.session_timeout"] = SessionTimeout()
    app.before_request(expire_idle_session)
    app.register_blueprint(bp)
