"""Partners: this node's card and the enrolled peers of the federation.

Everything goes through the daemon's federation API (`/v1/federation/card`, `/v1/peers...`);
the daemon verifies cards, pins certificates and audits each change. Fetching the node card
is audited by the daemon too, so the page asks for it only when the button is pressed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from flask import Blueprint, flash, redirect, render_template, request, url_for

from appliance.panel.daemon import DaemonError, daemon, error_message
from appliance.panel.forms import FormError, choice_field, flag_field, text_field

bp = Blueprint("partners", __name__, url_prefix="/partners")

# The daemon's rule for a peer's name (its API routes accept nothing else).
PEER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
PEER_NAME_RULE = "1-32 characters of a-z, 0-9, '-', '_' starting with a letter or digit"
# A card carries a certificate, a public key and an attestation bundle: a few KiB.
MAX_CARD = 128 * 1024
QUARANTINED = "quarantined"


def certificate_sha256(cert_pem: Any) -> str | None:
    """The SHA-256 fingerprint (hex) of a PEM certificate, as peers pin it; None if unreadable."""
    if not isinstance(cert_pem, str):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return None
    return cert.fingerprint(hashes.SHA256()).hex()


def peer_name(value: str) -> str:
    if not PEER_NAME.fullmatch(value):
        raise FormError(f"a partner name is {PEER_NAME_RULE}")
    return value


def card_field(form: Any, name: str = "card") -> dict[str, Any]:
    """A pasted card: a JSON object. Refusals name the 'format' check as the daemon does."""
    text = text_field(form, name, max_len=MAX_CARD)
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise FormError(f"card refused: format: the card is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise FormError("card refused: format: a card is a JSON object")
    return card


def peer_rows(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The daemon's peer summaries with what the table shows worked out."""
    return [{**peer, "quarantined": peer.get("state") == QUARANTINED} for peer in peers]


def _node_card() -> tuple[dict[str, Any] | None, str | None]:
    """This node's card, or why the daemon cannot make one (no interconnect, federation off)."""
    try:
        card = daemon().get("/v1/federation/card")
    except DaemonError as error:
        if error.status == 0:
            raise
        return None, error_message(error)
    if not isinstance(card, dict):
        return None, "the daemon answered something that is not a card"
    return card, None


@bp.get("")
def index() -> str:
    client = daemon()
    peers = client.get("/v1/peers").get("peers", [])
    federation = client.get("/v1/status").get("federation") or {}
    card = card_error = None
    if request.args.get("card"):
        card, card_error = _node_card()
    return render_template(
        "partners.html",
        peers=peer_rows(peers),
        federation=federation,
        card=card,
        card_error=card_error,
        card_text=json.dumps(card, indent=2) if card else None,
        card_fingerprint=certificate_sha256(card.get("certificate_pem")) if card else None,
        name_rule=PEER_NAME_RULE,
    )


@bp.post("")
def add() -> Any:
    name = peer_name(text_field(request.form, "name", max_len=32))
    card = card_field(request.form)
    peer = daemon().post("/v1/peers", {"name": name, "card": card})
    flash(f"Partner {name} enrolled: node {peer.get('node_id')} of "
          f"{peer.get('organisation')}, certificate pinned.", "success")
    return redirect(url_for("partners.index"))


@bp.post("/<name>/attest")
def attest(name: str) -> Any:
    outcome = daemon().post(f"/v1/peers/{peer_name(name)}/attest", {})
    verdict = outcome.get("verdict") or {}
    if verdict.get("ok"):
        flash(f"Partner {name} attested: {verdict.get('reason') or 'ok'}.", "success")
    else:
        flash(f"Partner {name} failed attestation and is quarantined: "
              f"{verdict.get('reason') or 'no reason given'}", "error")
    return redirect(url_for("partners.index"))


@bp.post("/<name>/approve")
def approve(name: str) -> Any:
    accept = choice_field(request.form, "accept", ("true", "false")) == "true"
    daemon().post(f"/v1/peers/{peer_name(name)}/approve", {"accept": accept})
    flash(f"Jobs from partner {name} are now accepted without asking." if accept
          else f"Jobs from partner {name} are no longer accepted.", "success")
    return redirect(url_for("partners.index"))


@bp.post("/<name>/remove")
def remove(name: str) -> Any:
    peer_name(name)
    if not flag_field(request.form, "confirm"):
        raise FormError(f"tick the box to confirm that partner {name} is to be removed")
    daemon().delete(f"/v1/peers/{name}", {})
    flash(f"Partner {name} removed: its certificate is no longer pinned.", "success")
    return redirect(url_for("partners.index"))


@bp.post("/<name>/reinstate")
def reinstate(name: str) -> Any:
    peer_name(name)
    card = card_field(request.form)
    daemon().post(f"/v1/peers/{name}/reinstate", {"card": card})
    flash(f"Partner {name} reinstated from its fresh card.", "success")
    return redirect(url_for("partners.index"))
