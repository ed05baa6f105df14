"""The accounts wing's routes of the local API: the panel's users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.api import Match, Query, Reply, _actor, _obj, route

if TYPE_CHECKING:
    from appliance.node import Node


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
