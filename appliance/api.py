"""The local API: routes of JSON over HTTP, served on the daemon's Unix socket.

The contract (paths, bodies, errors) is docs/api-openapi.yaml. Handlers take the node, the
parsed query and body, and return (status, JSON-able body); errors are exceptions mapped to a
status here, always answered as {"error": "<one line>"}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from appliance import audit, metrics
from appliance.account_rules import USERNAME
from appliance.audit import AuditBroken, AuditError
from appliance.client import PANEL_USER_HEADER
from appliance.jobs import CapabilityMissing, JobError
from appliance.ledger import Head
from appliance.node import Node, SettingsError
from appliance.profile import ProfileError
from appliance.trust import TrustError
from appliance.trust import api as trust_api
from appliance.users import UserError

MAX_BODY = 1 << 20
MAX_ACTOR = 64


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Text(str):
    """A plain-text response body (``/metrics``)."""


Query = dict[str, str]
Match = re.Match[str]  # the route pattern's match: its groups are the path parameters
Reply = tuple[int, Any]
Handler = Callable[[Node, Query, Any, Match], Reply]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, re.compile(f"^{pattern}$"), fn))
        return fn
    return register


def _obj(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the Unix socket's peer credentials (SO_PEERCRED, read by the
    kernel, not claimed by the client) and, only from the panel's service account, the panel
    user it acts for."""

    pid: int
    uid: int
    gid: int
    user: str  # the uid's login name, or "uid N" where the passwd database has none
    panel_user: str | None = None

    @property
    def actor(self) -> str:
        """The name audit records carry."""
        if self.panel_user is not None:
            return f"panel:{self.panel_user} via uid {self.uid}"
        return f"unix:{self.user}"


def caller_from(pid: int, uid: int, gid: int, user: str, panel_user: str | None,
                service_uid: int) -> Caller:
    """The caller of one connection; a panel user is accepted only from ``service_uid`` (the
    daemon's own account, which the panel's unit shares): anyone else who may open the socket
    is named by their own Unix user and cannot vouch for another."""
    if panel_user is not None:
        if uid != service_uid:
            raise ApiError(403, f"header {PANEL_USER_HEADER} is accepted only from the panel's "
                                f"service account (uid {service_uid}); uid {uid} acts as itself")
        if len(panel_user) > MAX_ACTOR or not USERNAME.fullmatch(panel_user):
            raise ApiError(400, f"header {PANEL_USER_HEADER} must be a panel username")
    return Caller(pid, uid, gid, user, panel_user)


# Set by the daemon for the request it is serving (one thread per connection).
current_caller: ContextVar[Caller | None] = ContextVar("pec_api_caller", default=None)


def _actor(body: Any) -> str:
    """The authenticated caller's name for the audit trail; never taken from the body."""
    if "actor" in _obj(body):
        raise ApiError(400, "field 'actor' is not accepted: the daemon records the caller it "
                            "authenticates (the Unix user on its socket, or the panel user "
                            "the panel vouches for)")
    caller = current_caller.get()
    if caller is None:
        raise ApiError(403, "the caller is unknown (no peer credentials on this connection)")
    return caller.actor


def _int_query(query: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {key!r} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {key!r} must be between {lo} and {hi}")
    return value


# node ------------------------------------------------------------------------------------

@route("GET", "/v1/status")
def get_status(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.status()


@route("GET", "/v1/inventory")
def get_inventory(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.inventory.to_dict()


@route("GET", "/v1/profile")
def get_profile(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.profile_view()


@route("PUT", "/v1/profile/override")
def put_profile_override(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    if "profile" not in body:
        raise ApiError(400, "field 'profile' is required (a profile name, or null to clear)")
    return 200, node.set_override(body["profile"], actor)


@route("GET", "/v1/live")
def get_live(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.live()


@route("GET", "/metrics")
def get_metrics(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, Text(metrics.render(node))


@route("GET", "/v1/backends")
def get_backends(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"backends": node.backends_view()}


# jobs ------------------------------------------------------------------------------------

@route("GET", "/v1/job-kinds")
def get_job_kinds(node: Node, query: Query, body: Any, m: Match) -> Reply:
    caps = node.profile.capabilities
    return 200, {"kinds": [
        {"kind": k.name, "description": k.description, "requires": k.requires,
         "allowed": k.requires is None or k.requires in caps}
        for k in node.runner.kinds.values()
    ]}


@route("GET", "/v1/jobs")
def list_jobs(node: Node, query: Query, body: Any, m: Match) -> Reply:
    jobs, total = node.runner.list(
        state=query.get("state") or None,
        kind=query.get("kind") or None,
        limit=_int_query(query, "limit", 50, 1, 500),
        offset=_int_query(query, "offset", 0, 0, 1 << 31),
    )
    return 200, {"jobs": jobs, "total": total}


@route("POST", "/v1/jobs")
def submit_job(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    if "kind" not in body:
        raise ApiError(400, "field 'kind' is required")
    return 201, node.submit_job(body["kind"], body.get("params", {}), actor)


@route("GET", r"/v1/jobs/(?P<id>\d+)")
def get_job(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.runner.get(int(m["id"]))


@route("GET", r"/v1/jobs/(?P<id>\d+)/log")
def get_job_log(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"lines": node.runner.log_lines(int(m["id"]))}


@route("POST", r"/v1/jobs/(?P<id>\d+)/cancel")
def cancel_job(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.runner.cancel(int(m["id"]), _actor(body))


@route("POST", r"/v1/jobs/(?P<id>\d+)/resume")
def resume_job(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.runner.resume(int(m["id"]), _actor(body))


# users and settings ----------------------------------------------------------------------

@route("GET", "/v1/users")
def list_users(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"users": node.users.list()}


@route("POST", "/v1/users")
def create_user(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    return 201, node.users.create(body.get("username"), body.get("password"), body.get("role"),
                                  actor)


@route("POST", "/v1/users/authenticate")
def authenticate(node: Node, query: Query, body: Any, m: Match) -> Reply:
    body = _obj(body)
    remote = body.get("remote", "")
    return 200, node.users.authenticate(body.get("username"), body.get("password"),
                                        remote if isinstance(remote, str) else "")


@route("POST", r"/v1/users/(?P<name>[^/]+)/password")
def change_password(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    node.users.change_password(m["name"], body.get("old"), body.get("new"), actor)
    return 200, {"ok": True}


@route("POST", r"/v1/users/(?P<name>[^/]+)/unlock")
def unlock_user(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.users.unlock(m["name"], _actor(body))


@route("PUT", r"/v1/users/(?P<name>[^/]+)")
def update_user(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    return 200, node.users.update(m["name"], actor, role=body.get("role"),
                                  disabled=body.get("disabled"))


@route("DELETE", r"/v1/users/(?P<name>[^/]+)")
def delete_user(node: Node, query: Query, body: Any, m: Match) -> Reply:
    node.users.delete(m["name"], _actor(body))
    return 200, {"ok": True}


@route("GET", "/v1/settings")
def get_settings(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.settings()


@route("PUT", "/v1/settings")
def put_settings(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    changes = {k: v for k, v in body.items() if k != "actor"}
    return 200, node.put_settings(changes, actor)


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
    return 200, trust_api.keys(node.need_trust())


@route("POST", "/v1/keys/rotate-kek")
def rotate_kek(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    try:
        result = trust_api.rotate_kek(node.need_trust(), body)
    except TrustError as exc:
        audit.record(actor, "key.rotate_kek.failed", "key:kek", {"error": str(exc)})
        raise
    audit.record(actor, "key.rotate_kek", "key:kek", {"resealed": result["resealed"]})
    return 200, result


@route("GET", "/v1/attestation/pcrs")
def get_pcrs(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, trust_api.pcrs(node.need_trust())


@route("POST", "/v1/attestation/quote")
def post_quote(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    bundle = trust_api.quote(node.need_trust(), body)
    audit.record(actor, "attestation.quote", f"node:{bundle['node_id']}",
                 {"nonce": bundle["nonce"], "pcrs": bundle["pcrs"]})
    return 200, bundle


@route("POST", "/v1/attestation/verify")
def post_verify(node: Node, query: Query, body: Any, m: Match) -> Reply:
    body = _obj(body)
    actor = _actor(body)
    verdict = trust_api.verify(body)
    bundle = body["bundle"]
    audit.record(actor, "attestation.verify", f"node:{bundle.get('node_id', '?')}",
                 {"ok": verdict["ok"], "reason": verdict.get("reason"),
                  "nonce": bundle.get("nonce") if isinstance(bundle.get("nonce"), str) else None,
                  "policy": body.get("policy") is not None})
    return 200, verdict


# dispatch --------------------------------------------------------------------------------

# what an administrator needs while an audit chain is broken and not yet acknowledged
_OPEN_WHILE_BROKEN = frozenset({"/v1/audit/verify", "/v1/audit/acknowledge-break"})


def dispatch(node: Node, method: str, path: str, query: dict[str, str],
             body: Any) -> tuple[int, Any]:
    """Run the handler for ``method path``; every failure becomes (status, {"error"})."""
    allowed = []
    for route_method, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if route_method != method:
            allowed.append(route_method)
            continue
        refusal = audit.refusing()
        if refusal and method != "GET" and path not in _OPEN_WHILE_BROKEN:
            # refused before the act, so that nothing happens that the trail cannot record
            return 409, {"error": refusal}
        try:
            return handler(node, query, body, match)
        except AuditBroken as exc:
            return 409, {"error": str(exc)}
        except ApiError as exc:
            return exc.status, {"error": str(exc)}
        except TrustError as exc:
            return exc.status, {"error": str(exc)}
        except CapabilityMissing as exc:
            return 403, {"error": str(exc)}
        except PermissionError as exc:
            return 403, {"error": str(exc)}
        except LookupError as exc:
            return 404, {"error": str(exc).strip("'\"")}
        except (JobError, ProfileError, UserError, SettingsError, AuditError) as exc:
            return 400, {"error": str(exc)}
    if allowed:
        return 405, {"error": f"{method} is not allowed on {path}; use {', '.join(allowed)}"}
    return 404, {"error": f"no such endpoint: {path}"}
