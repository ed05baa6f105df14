"""Users and settings: accounts and roles, password change, session timeout, profile override.

Admins manage accounts here (unlock, disable, enable, change the role, delete); the daemon
audits each change and refuses one that would leave no enabled admin.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from appliance.accounts.rules import (
    MAX_PASSWORD,
    MAX_USERNAME,
    MIN_PASSWORD,
    ROLES,
    USERNAME,
    USERNAME_RULE,
)
from appliance.panel.auth import session_timeout
from appliance.panel.daemon import daemon
from appliance.panel.forms import FormError, choice_field, int_field, text_field
from appliance.panel.security import open_to_auditors

bp = Blueprint("users", __name__, url_prefix="/users")

AUTOMATIC = "automatic"


def _new_password(form: Any, name: str) -> str:
    password = text_field(form, name, min_len=MIN_PASSWORD, max_len=MAX_PASSWORD, strip=False)
    confirm = text_field(form, f"{name}_confirm", max_len=MAX_PASSWORD, strip=False)
    if password != confirm:
        raise FormError("the two passwords differ")
    return password


@bp.get("")
def index() -> str:
    client = daemon()
    profile = client.get("/v1/profile")
    return render_template(
        "users.html",
        users=client.get("/v1/users").get("users", []),
        settings=client.get("/v1/settings"),
        profile=profile,
        roles=ROLES,
        profiles=profile["profiles"],
        automatic=AUTOMATIC,
        min_password=MIN_PASSWORD,
    )


def _username(value: str) -> str:
    if not USERNAME.fullmatch(value):
        raise FormError(f"username must be {USERNAME_RULE}")
    return value


def _not_yourself(username: str, what: str) -> None:
    # an admin who locks themselves out mid-session finds out only at the next login
    if username == current_user.username:
        raise FormError(f"you cannot {what} your own account; another admin can")


@bp.post("")
def create() -> Any:
    username = _username(text_field(request.form, "username", max_len=MAX_USERNAME))
    role = choice_field(request.form, "role", ROLES)
    password = _new_password(request.form, "password")
    daemon().post(
        "/v1/users",
        {"username": username, "password": password, "role": role},
    )
    flash(f"User {username} ({role}) created.", "success")
    return redirect(url_for("users.index"))


@bp.post("/password")
@open_to_auditors  # every account may change its own password, and only its own
def change_password() -> Any:
    old = text_field(request.form, "old_password", max_len=MAX_PASSWORD, strip=False)
    new = _new_password(request.form, "new_password")
    daemon().post(
        f"/v1/users/{current_user.username}/password",
        {"old": old, "new": new},
    )
    flash("Your password is changed.", "success")
    return redirect(url_for("users.index"))


@bp.post("/settings")
def settings() -> Any:
    minutes = int_field(request.form, "session_timeout_min", minimum=1, maximum=24 * 60)
    daemon().put(
        "/v1/settings", {"session_timeout_s": minutes * 60}
    )
    session_timeout().forget()
    flash(f"Session timeout set to {minutes} min.", "success")
    return redirect(url_for("users.index"))


@bp.post("/profile-override")
def profile_override() -> Any:
    client = daemon()
    names = client.get("/v1/profile")["profiles"]
    choice = choice_field(request.form, "profile", (*names, AUTOMATIC))
    profile = None if choice == AUTOMATIC else choice
    client.put("/v1/profile/override", {"profile": profile})
    flash(
        "Profile chosen by the hardware again." if profile is None
        else f"Profile overridden to {profile}.",
        "success",
    )
    return redirect(url_for("users.index"))


@bp.post("/<username>/unlock")
def unlock(username: str) -> Any:
    daemon().post(f"/v1/users/{_username(username)}/unlock", {})
    flash(f"User {username} is unlocked.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<username>/role")
def change_role(username: str) -> Any:
    role = choice_field(request.form, "role", ROLES)
    if role != "admin":
        _not_yourself(username, "demote")
    daemon().put(f"/v1/users/{_username(username)}",
                 {"role": role})
    flash(f"User {username} is now {role}.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<username>/disable")
def disable(username: str) -> Any:
    _not_yourself(username, "disable")
    daemon().put(f"/v1/users/{_username(username)}",
                 {"disabled": True})
    flash(f"User {username} is disabled: they cannot log in.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<username>/enable")
def enable(username: str) -> Any:
    daemon().put(f"/v1/users/{_username(username)}",
                 {"disabled": False})
    flash(f"User {username} is enabled.", "success")
    return redirect(url_for("users.index"))


@bp.post("/<username>/delete")
def delete(username: str) -> Any:
    _not_yourself(username, "delete")
    daemon().delete(f"/v1/users/{_username(username)}", {})
    flash(f"User {username} is deleted.", "success")
    return redirect(url_for("users.index"))
