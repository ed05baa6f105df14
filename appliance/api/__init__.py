"""The local API: routes of JSON over HTTP, served on the daemon's Unix socket.

The contract (paths, bodies, errors) is docs/api-openapi.yaml. Handlers take the node, the
parsed query and body, and return (status, JSON-able body); errors are exceptions mapped to a
status here, always answered as {"error": "<one line>"}.

This package is the core: the route table and its ``route`` decorator, the caller, the request
helpers and dispatch. The routes live with their wings (``appliance/<wing>/api.py``) and
register themselves with ``route`` when ``WING_ROUTES`` are imported, once, at the first
dispatch (or ``routes()``).
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.accounts.rules import USERNAME
from appliance.client import PANEL_USER_HEADER
from appliance.errors import ApplianceError
from appliance.trust import audit

if TYPE_CHECKING:
    # only for the handlers' signature: the core must not pull in the node (and through it
    # every wing) when a wing imports ``route`` from here
    from appliance.node import Node

MAX_BODY = 1 << 20
MAX_ACTOR = 64


class ApiError(ApplianceError):
    """A request the API refuses as such (bad body, bad query, unknown caller)."""

    # (status, message), the other way round from ApplianceError: the API's own refusals
    # always name their status, and every call site reads that way
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status)


class Text(str):
    """A plain-text response body (``/metrics``)."""


Query = dict[str, str]
Match = re.Match[str]  # the route pattern's match: its groups are the path parameters
Reply = tuple[int, Any]
Handler = Callable[["Node", Query, Any, Match], Reply]
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


# dispatch --------------------------------------------------------------------------------

# the wings whose api modules register routes; imported once, on first use, so that importing
# the core (as every wing's api module does, for ``route``) never imports a wing
WING_ROUTES = ("appliance.host.api", "appliance.jobs.api", "appliance.accounts.api",
               "appliance.trust.api", "appliance.federation.api")
_loaded = False
_load_lock = threading.Lock()


def routes() -> list[tuple[str, re.Pattern[str], Handler]]:
    """The route table with every wing's routes registered."""
    global _loaded
    if not _loaded:
        with _load_lock:
            if not _loaded:
                for name in WING_ROUTES:
                    importlib.import_module(name)
                _loaded = True
    return ROUTES


# what an administrator needs while an audit chain is broken and not yet acknowledged
_OPEN_WHILE_BROKEN = frozenset({"/v1/audit/verify", "/v1/audit/acknowledge-break"})


def dispatch(node: Node, method: str, path: str, query: dict[str, str],
             body: Any) -> tuple[int, Any]:
    """Run the handler for ``method path``; every failure becomes (status, {"error"})."""
    allowed = []
    for route_method, pattern, handler in routes():
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
        except ApplianceError as exc:  # every wing's refusal carries its status
            return exc.status, {"error": str(exc)}
        except PermissionError as exc:
            return 403, {"error": str(exc)}
        except LookupError as exc:
            return 404, {"error": str(exc).strip("'\"")}
    if allowed:
        return 405, {"error": f"{method} is not allowed on {path}; use {', '.join(allowed)}"}
    return 404, {"error": f"no such endpoint: {path}"}
