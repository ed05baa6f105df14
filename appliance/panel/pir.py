"""Private query: this node's published services with their cost figures, a partner's
services, and a form that looks keys up at a partner without the partner learning them
(docs/pir.md). Publishing stays on the command line (`pec-appliance pir publish`): it encodes
a whole data set and can take a minute."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, render_template, request

from appliance.panel.daemon import DaemonError, daemon, error_message
from appliance.panel.forms import FormError, text_field

bp = Blueprint("pir", __name__, url_prefix="/pir")

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
PEER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_KEYS = 1024
MAX_KEYS_TEXT = 64 * 1024


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def service_rows(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**s, "labels": ", ".join(s.get("label_columns", [])),
             "hint": _size(s["cost"]["hint_bytes"]), "query": _size(s["cost"]["query_bytes"]),
             "answer": _size(s["cost"]["answer_bytes"]),
             "database": _size(s["cost"]["database_bytes"])} for s in services]


def _page(**extra: Any) -> str:
    client = daemon()
    try:
        services, services_error = service_rows(client.get("/v1/pir/services")["services"]), None
    except DaemonError as error:
        services, services_error = [], error_message(error)
    peers = [p["name"] for p in client.get("/v1/peers").get("peers", [])
             if p.get("state") == "active"]
    peer = request.args.get("peer", "")
    peer_services, peer_error = None, None
    if peer and PEER_NAME.fullmatch(peer):
        try:
            peer_services = service_rows(
                client.get(f"/v1/peers/{peer}/pir/services")["services"])
        except DaemonError as error:
            peer_error = error_message(error)
    return render_template("pir.html", services=services, services_error=services_error,
                           peers=peers, peer=peer, peer_services=peer_services,
                           peer_error=peer_error, max_keys=MAX_KEYS, **extra)


@bp.get("")
def index() -> str:
    return _page()


@bp.post("/query")
def query() -> str:
    peer = text_field(request.form, "peer", max_len=32)
    if not PEER_NAME.fullmatch(peer):
        raise FormError(f"unknown partner {peer!r}")
    service = text_field(request.form, "service", max_len=64)
    if not SERVICE_NAME.fullmatch(service):
        raise FormError("a service name is 1-64 characters of a-z, 0-9, '_', '-'")
    text = text_field(request.form, "keys", max_len=MAX_KEYS_TEXT)
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    if len(keys) > MAX_KEYS:
        raise FormError(f"at most {MAX_KEYS} keys per query, got {len(keys)}")
    answer = daemon().post("/v1/pir/query", {"peer": peer, "service": service, "keys": keys})
    label_columns: list[str] = []
    for r in answer["results"]:
        for c in r["labels"]:
            if c not in label_columns:
                label_columns.append(c)
    return _page(answer=answer, label_columns=label_columns, asked_peer=peer,
                 asked_service=service, asked_keys=text)
