"""Keys: the HSM token, the stored keys (public facts only), key generation and KEK rotation."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from appliance.panel.daemon import daemon, fetch_optional
from appliance.panel.forms import int_field
from appliance.panel.jobs import FINISHED_STATES

bp = Blueprint("keys", __name__, url_prefix="/keys")

KEY_BITS = (2048, 3072, 4096)


@bp.get("")
def index() -> str:
    store, unavailable = fetch_optional("/v1/keys")
    keygen_jobs = daemon().get("/v1/jobs", kind="keygen", limit=10, offset=0)["jobs"]
    return render_template(
        "keys.html",
        store=store,
        unavailable=unavailable,
        keygen_jobs=keygen_jobs,
        bits_choices=KEY_BITS,
        finished=FINISHED_STATES,
    )


@bp.post("/generate")
def generate() -> Any:
    bits = int_field(request.form, "bits", minimum=min(KEY_BITS), maximum=max(KEY_BITS),
                     choices=KEY_BITS)
    job = daemon().post(
        "/v1/jobs",
        {"kind": "keygen", "params": {"bits": bits}},
    )
    flash(f"Key generation started as job {job['id']} ({bits} bits).", "info")
    return redirect(url_for("jobs.detail", job_id=job["id"]))


@bp.post("/rotate-kek")
def rotate_kek() -> Any:
    outcome = daemon().post("/v1/keys/rotate-kek", {})
    flash(f"Key-encryption key rotated; {outcome.get('resealed', 0)} secrets resealed.", "info")
    return redirect(url_for("keys.index"))
