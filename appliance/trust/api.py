"""The trust wing of the daemon's local API: audit, keys and attestation.

The plain functions over a TrustRoot take the decoded JSON body (or nothing) and return the
response payload; failures raise TrustError whose `status` is the HTTP status to answer with
(400 bad input, 503 not provisioned or keys locked). Auditing stays with the routes below them,
which know the actor; the routes register on the core's table (appliance.api) when it first
dispatches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.api import ApiError, Match, Query, Reply, _actor, _int_query, _obj, route
from appliance.trust import audit
from appliance.trust.bundle import verify_bundle
from appliance.trust.errors import TrustError
from appliance.trust.ledger import Head
from appliance.trust.root import TrustRoot

if TYPE_CHECKING:
    from appliance.node import Node


def keys(root: TrustRoot) -> dict[str, Any]:
    """GET /v1/keys"""
    return root.keys()


def rotate_kek(root: TrustRoot, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/keys/rotate-kek {"actor"}"""
    return root.rotate_kek()


def pcrs(root: TrustRoot) -> dict[str, Any]:
    """GET /v1/attestation/pcrs"""
    return root.pcrs()


def quote(root: TrustRoot, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/attestation/quote {"nonce": hex, "actor"} -> bundle"""
    nonce = body.get("nonce") if isinstance(body, dict) else None
    if not isinstance(nonce, str):
        raise TrustError("field 'nonce' must be a hex string")
    try:
        raw = bytes.fromhex(nonce)
    except ValueError as exc:
        raise TrustError("field 'nonce' must be hex digits") from exc
    return root.attest(raw)


def verify(body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/attestation/verify {"bundle", "policy"} -> {"ok", "reason", "failed_check"};
    needs neither TPM nor HSM."""
    if not isinstance(body, dict) or not isinstance(body.get("bundle"), dict):
        raise TrustError("field 'bundle' must be the attestation bundle object")
    policy = body.get("policy")
    if policy is not None and not isinstance(policy, dict):
        raise TrustError("field 'policy' must be an object of PCR index -> hex, or null")
    return verify_bundle(body["bundle"], policy)


# audit -----------------------------------------------------------------------------------

@route("GET", "/v1/audit")
def list_audit(node: Node, query: Query, body: Any, m: Match) -> Reply:
    records, total = audit.records(
        offset=_int_query(query, "offset", 0, 0, 1 << 31),
        limit=_int_query(query, "limit", 50, 1, 500),
        actor=query.get("actor") or None,
        action=query.get("action") or None,
    )
    # records kept unsigned while the keys are locked are signed into the ledger (and listed
    # here) when the keys unlock; until then this says how many wait
    return 200, {"records": records, "total": total, "unsigned_pending": audit.pending()}


@route("POST", "/v1/audit/verify")
def verify_audit(node: Node, query: Query, body: Any, m: Match) -> Reply:
    body = {} if body is None else _obj(body)
    head = body.get("expect_head")
    if head is not None:
        try:
            head = Head.parse(head) if isinstance(head, str) else Head(
                int(head["seq"]), str(head["hash"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, f"field 'expect_head': {exc}") from None
    trust = node.trust
    # anchored in the HSM token, not in trust.json (which a writer of the state dir can swap)
    key = trust.ledger_key() if trust is not None and trust.provisioned else None
    return 200, audit.verify(key, head)


@route("POST", "/v1/audit/acknowledge-break")
def acknowledge_audit_break(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    return 201, audit.acknowledge_break(actor, body.get("reason"))


@route("POST", "/v1/audit/record")
def record_audit(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    for key in ("action", "object"):
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise ApiError(400, f"field {key!r} must be a non-empty string")
    return 201, audit.record(actor, body["action"], body["object"], body.get("details") or {})


# trust root ------------------------------------------------------------------------------

@route("GET", "/v1/keys")
def get_keys(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, keys(node.need_trust())


@route("POST", "/v1/keys/rotate-kek")
def post_rotate_kek(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    try:
        result = rotate_kek(node.need_trust(), body)
    except TrustError as exc:
        audit.record(actor, "key.rotate_kek.failed", "key:kek", {"error": str(exc)})
        raise
    audit.record(actor, "key.rotate_kek", "key:kek", {"resealed": result["resealed"]})
    return 200, result


@route("GET", "/v1/attestation/pcrs")
def get_pcrs(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, pcrs(node.need_trust())


@route("POST", "/v1/attestation/quote")
def post_quote(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    bundle = quote(node.need_trust(), body)
    audit.record(actor, "attestation.quote", f"node:{bundle['node_id']}",
                 {"nonce": bundle["nonce"], "pcrs": bundle["pcrs"]})
    return 200, bundle


@route("POST", "/v1/attestation/measure")
def post_measure(node: Node, query: Query, body: Any, m: Match) -> Reply:
    """Development trust roots only: extend a PCR as a boot component would. swtpm has no
    firmware that measures, so this is how a development node shows a changed boot chain (a
    peer's next attestation then fails). Extending can only move a PCR away from its golden
    value, never back; PCRs 7 and 14, which seal the HSM PIN, are refused."""
    actor = _actor(body)
    root = node.need_trust()
    if not (root.info or {}).get("dev"):
        raise TrustError("measure is for development trust roots only; a hardware TPM's "
                         "PCRs are extended by the boot chain", 403)
    req = _obj(body)
    pcr, data = req.get("pcr"), req.get("data")
    if isinstance(pcr, bool) or not isinstance(pcr, int) or pcr not in (0, 2, 3, 4, 5):
        raise TrustError("field 'pcr' must be one of 0, 2, 3, 4, 5 (7 and 14 seal the PIN)")
    if not isinstance(data, str) or not data:
        raise TrustError("field 'data' must name what was measured")
    root.extend_pcr(pcr, data.encode())
    audit.record(actor, "attestation.measure", f"pcr:{pcr}", {"data": data})
    return 200, root.pcrs()


@route("POST", "/v1/attestation/verify")
def post_verify(node: Node, query: Query, body: Any, m: Match) -> Reply:
    body = _obj(body)
    actor = _actor(body)
    verdict = verify(body)
    bundle = body["bundle"]
    audit.record(actor, "attestation.verify", f"node:{bundle.get('node_id', '?')}",
                 {"ok": verdict["ok"], "reason": verdict.get("reason"),
                  "nonce": bundle.get("nonce") if isinstance(bundle.get("nonce"), str) else None,
                  "policy": body.get("policy") is not None})
    return 200, verdict
