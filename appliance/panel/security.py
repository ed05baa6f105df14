"""Request guards of the panel: session secret, CSRF, origin check, roles, login rate limit.

Writes are refused by default: every non-GET request must carry the session's CSRF token and a
same-origin Origin or Referer, and only administrators may write unless a view is explicitly
marked open to auditors (their own password change, ledger verification).
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, abort, current_app, request, session
from flask_login import current_user

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SECRET_BYTES = 32

# No inline script or style anywhere, so the policy can stay at 'self' for every resource.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

View = TypeVar("View", bound=Callable[..., Any])


def load_or_create_secret(path: Path) -> bytes:
    """Return the session signing key stored at ``path``, creating it (mode 0600) once."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"panel secret {path} is shorter than {SECRET_BYTES} bytes") from None
        return secret
    secret = secrets.token_bytes(SECRET_BYTES)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


def csrf_token() -> str:
    """The per-session CSRF token (created on first use); templates put it in every form."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def open_to_auditors(view: View) -> View:
    """Mark a write view that an auditor may call (it changes nothing of the appliance)."""
    view.open_to_auditors = True  # type: ignore[attr-defined]
    return view


def public(view: View) -> View:
    """Mark a view that needs no login (the login page and static files)."""
    view.public = True  # type: ignore[attr-defined]
    return view


def wants_json() -> bool:
    """True for the endpoints that scripts poll: their errors are JSON, not pages."""
    return request.path.endswith(".json") or request.accept_mimetypes.best == "application/json"


def _expected_origin() -> str:
    return request.host_url.rstrip("/")


def _check_origin() -> None:
    expected = _expected_origin()
    origin = request.headers.get("Origin")
    if origin:
        if origin != expected:
            abort(403, description=f"cross-origin write refused (Origin {origin})")
        return
    referer = request.headers.get("Referer")
    if referer:
        if referer != expected and not referer.startswith(expected + "/"):
            abort(403, description="cross-origin write refused (Referer of another site)")
        return
    abort(403, description="write refused: the request carries neither Origin nor Referer")


def _check_csrf() -> None:
    expected = session.get(CSRF_FIELD)
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not expected or not given or not hmac.compare_digest(str(given), str(expected)):
        abort(400, description="CSRF token missing or invalid: reload the page and try again")


def _view_flag(name: str) -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, name, False))


def guard_request() -> None:
    """before_request hook: origin and CSRF on writes, then login and role checks."""
    if request.endpoint is None or request.endpoint == "static":
        return
    writing = request.method not in SAFE_METHODS
    if writing:
        _check_origin()
        _check_csrf()
    if _view_flag("public"):
        return
    if not current_user.is_authenticated:
        return current_app.login_manager.unauthorized()
    if writing and current_user.role != "admin" and not _view_flag("open_to_auditors"):
        abort(403, description=f"role {current_user.role} is read-only: only an admin may do this")
    return None


def add_security_headers(response: Any) -> Any:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    return response


class LoginRateLimiter:
    """Sliding-window count of login attempts per remote address."""

    def __init__(self, max_attempts: int, window_s: float) -> None:
        if max_attempts < 1 or window_s <= 0:
            raise ValueError("login rate limit needs max_attempts >= 1 and window_s > 0")
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._attempts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, remote: str) -> bool:
        """Record one attempt from ``remote``; False when it exceeds the window's budget."""
        now = time.monotonic()
        with self._lock:
            attempts = self._attempts.setdefault(remote, deque())
            while attempts and now - attempts[0] > self.window_s:
                attempts.popleft()
            if len(attempts) >= self.max_attempts:
                return False
            attempts.append(now)
            return True


def install(app: Flask) -> None:
    app.before_request(guard_request)
    app.after_request(add_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
