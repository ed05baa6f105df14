"""The jobs wing's routes of the local API: job kinds, jobs, their logs, cancel and resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.api import ApiError, Match, Query, Reply, _actor, _int_query, route

if TYPE_CHECKING:
    from appliance.node import Node


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


@route("POST", r"/v1/jobs/(?P<id>\d+)/approve")
def approve_job(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.runner.approve(int(m["id"]), _actor(body))


@route("POST", r"/v1/jobs/(?P<id>\d+)/resume")
def resume_job(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.runner.resume(int(m["id"]), _actor(body))
