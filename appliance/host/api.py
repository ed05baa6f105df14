"""The host wing's routes of the local API: status, inventory, profile, live load, metrics,
backends and node settings. Registered on the core's route table when it first dispatches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.api import ApiError, Match, Query, Reply, Text, _actor, route
from appliance.host import metrics

if TYPE_CHECKING:
    from appliance.node import Node


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



@route("GET", "/v1/settings")
def get_settings(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.settings()


@route("PUT", "/v1/settings")
def put_settings(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    changes = {k: v for k, v in body.items() if k != "actor"}
    return 200, node.put_settings(changes, actor)
