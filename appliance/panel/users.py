"""Users and settings: accounts and roles, password change, session timeout, profile override."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user

from appliance.account_rules import MAX_PASSWORD, MIN_PASSWORD, ROLES, USERNAME
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


@bp.post("")
def create() -> Any:
    username = text_field(request.form, "username", max_len=32)
    if not USERNAME.fullmatch(username):
        raise FormError(
            "username must start with a lowercase letter or _ and use only a-z, 0-9, _ . -"
        )
    role = choice_field(request.form, "role", ROLES)
    password = _new_password(request.form, "password")
    daemon().post(
        "/v1/users",
        {"username": username, "password": password, "role": role,
         "actor": current_user.username},
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
        {"old": old, "new": new, "actor": current_user.username},
    )
    flash("Your password is changed.", "success")
    return redirect(url_for("users.index"))


@bp.post("/settings")
def settings() -> Any:
    minutes = int_field(request.form, "session_timeout_min", minimum=1, maximum=24 * 60)
    daemon().put(
        "/v1/settings", {"session_timeout_s": minutes * 60, "actor": current_user.username}
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
    client.put("/v1/profile/override", {"profile": profile, "actor": current_user.username})
    flash(
        "Profile chosen by the hardware again." if profile is None
        else f"Profile overridden to {profile}.",
        "success",
    )
    return redirect(url_for("users.index"))
