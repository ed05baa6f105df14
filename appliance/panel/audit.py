"""Audit: the hash-chained ledger, paged and filtered, and its verification."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for

from appliance.panel.daemon import daemon
from appliance.panel.forms import page_number
from appliance.panel.security import open_to_auditors

bp = Blueprint("audit", __name__, url_prefix="/audit")

PAGE_SIZE = 50


@bp.get("")
def index() -> str:
    actor = request.args.get("actor", "")[:64].strip()
    action = request.args.get("action", "")[:64].strip()
    page = page_number(request.args)
    query: dict[str, Any] = {"limit": PAGE_SIZE, "offset": (page - 1) * PAGE_SIZE}
    if actor:
        query["actor"] = actor
    if action:
        query["action"] = action
    listing = daemon().get("/v1/audit", **query)
    total = int(listing.get("total", 0))
    records = [
        {**record, "details_text": json.dumps(record.get("details"), sort_keys=True)}
        for record in listing.get("records", [])
    ]
    return render_template(
        "audit.html",
        records=records,
        total=total,
        unsigned_pending=int(listing.get("unsigned_pending") or 0),
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        actor=actor,
        action=action,
    )


@bp.post("/verify")
@open_to_auditors
def verify() -> Any:
    verdict = daemon().post("/v1/audit/verify", {})
    if verdict.get("ok"):
        flash("Ledger verified: every record is intact and in order.", "success")
    else:
        flash(
            f"Ledger verification FAILED at record {verdict.get('first_bad')}: "
            f"{verdict.get('reason') or 'no reason given'}",
            "error",
        )
    return redirect(url_for("audit.index"))
