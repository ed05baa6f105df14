"""Attestation: PCRs against the golden policy, quotes with a fresh nonce, bundle verification."""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user

from appliance.panel.daemon import daemon, fetch_optional
from appliance.panel.forms import FormError, flag_field
from appliance.panel.security import open_to_auditors

bp = Blueprint("attestation", __name__, url_prefix="/attestation")

NONCE_BYTES = 20
KEPT_BUNDLES = 16


class BundleShelf:
    """The last few quotes made through the panel, kept in memory so they can be downloaded.

    A bundle holds no secret (a quote is meant for peers), but it is still only handed to the
    user who asked for it.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, owner: str, bundle: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = (owner, bundle)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return token

    def get(self, owner: str, token: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(token)
        return item[1] if item and item[0] == owner else None


def _shelf() -> BundleShelf:
    return current_app.extensions.setdefault("pec.bundles", BundleShelf(KEPT_BUNDLES))


def parse_bundle(raw: bytes) -> dict[str, Any]:
    """The uploaded bundle as a JSON object, or a FormError saying what is wrong with it."""
    if not raw.strip():
        raise FormError("the bundle file is empty")
    try:
        bundle = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FormError("the bundle is not UTF-8 text (expected the JSON of a bundle)") from None
    except json.JSONDecodeError as error:
        reason = f"{error.msg} at line {error.lineno}"
        raise FormError(f"the bundle is not valid JSON: {reason}") from None
    if not isinstance(bundle, dict):
        raise FormError("the bundle must be a JSON object")
    return bundle


@bp.get("")
def index() -> str:
    pcrs, unavailable = fetch_optional("/v1/attestation/pcrs")
    token = request.args.get("bundle", "")
    bundle = _shelf().get(current_user.username, token) if token else None
    rows = []
    if pcrs:
        golden = pcrs.get("golden") or {}
        match = pcrs.get("match") or {}
        for index_ in sorted(pcrs.get("pcrs", {}), key=int):
            rows.append(
                {
                    "index": index_,
                    "value": pcrs["pcrs"][index_],
                    "golden": golden.get(index_),
                    "match": match.get(index_),
                }
            )
    return render_template(
        "attestation.html",
        unavailable=unavailable,
        rows=rows,
        bundle=bundle,
        bundle_token=token if bundle else None,
        bundle_text=json.dumps(bundle, indent=2, sort_keys=True) if bundle else None,
    )


@bp.post("/quote")
def quote() -> Any:
    nonce = secrets.token_hex(NONCE_BYTES)
    bundle = daemon().post(
        "/v1/attestation/quote", {"nonce": nonce}
    )
    token = _shelf().put(current_user.username, bundle)
    flash(f"Quote made over nonce {nonce}.", "info")
    return redirect(url_for("attestation.index", bundle=token))


@bp.get("/bundle/<token>.json")
def download(token: str) -> Response:
    bundle = _shelf().get(current_user.username, token)
    if bundle is None:
        abort(404, description="that bundle is no longer kept; make a new quote")
    return Response(
        json.dumps(bundle, indent=2, sort_keys=True),
        mimetype="application/json",
        headers={"Content-Disposition": 'attachment; filename="attestation-bundle.json"'},
    )


@bp.post("/verify")
@open_to_auditors
def verify() -> Any:
    upload = request.files.get("bundle")
    if upload is None or not upload.filename:
        raise FormError("choose a bundle file to verify")
    bundle = parse_bundle(upload.read())
    policy = None
    if flag_field(request.form, "golden"):
        # The peer must have booted what this node calls good: same image, same PCRs.
        pcrs = daemon().get("/v1/attestation/pcrs")
        policy = pcrs.get("golden") or None
        if policy is None:
            raise FormError("this node has no golden PCR values to compare with")
    verdict = daemon().post("/v1/attestation/verify", {"bundle": bundle, "policy": policy})
    if verdict.get("ok"):
        flash(f"Bundle verified: {verdict.get('reason') or 'quote and PCRs match'}", "success")
    else:
        flash(f"Bundle REJECTED: {verdict.get('reason') or 'no reason given'}", "error")
    return redirect(url_for("attestation.index"))
