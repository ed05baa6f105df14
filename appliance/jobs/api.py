"""The jobs wing's routes of the local API: job kinds, jobs, their logs, cancel and resume.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.api import ApiError, Match, Query, Reply, Text, _actor, _int_query, route

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


# ?rows=1 answers with the whole file in one body, held in memory on both ends (the daemon's
# replies are not streamed): beyond this an operator reads the data set's file itself
MAX_ROWS_BYTES = 256 << 20


@route("GET", r"/v1/jobs/(?P<id>\d+)/result")
def get_job_result(node: Node, query: Query, body: Any, m: Match) -> Reply:
    """A finished job's result; with ``?rows=1`` this node's rows file (a multi-party job's
    row-level output, e.g. its side of a set intersection) as CSV text.

    Through the daemon because the CLI may run as a user who cannot read the daemon's output
    directory.
    """
    job_id = int(m["id"])
    job = node.runner.get(job_id)
    if job["state"] != "done" or job["result"] is None:
        raise ApiError(409, f"job {job_id} is {job['state']}: it has no result")
    result = job["result"]
    if query.get("rows", "") in ("", "0", "false"):
        return 200, {"id": job_id, "kind": job["kind"], "state": job["state"],
                     "result": result}
    outputs = result.get("outputs") if isinstance(result, dict) else None
    rows_file = outputs.get("rows_file") if isinstance(outputs, dict) else None
    if not rows_file:
        raise ApiError(404, f"job {job_id} has no rows file on this node")
    path = Path(rows_file)
    try:
        size = path.stat().st_size
        if size > MAX_ROWS_BYTES:
            raise ApiError(413, f"job {job_id}'s rows file is {size} bytes, over the "
                                f"{MAX_ROWS_BYTES} the API serves; read {path} (or the data "
                                f"set {outputs.get('dataset', '-')}) directly")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ApiError(410, f"job {job_id}'s rows file {path} is gone") from None
    want = outputs.get("rows_sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        # the file is not what the job wrote (and recorded in its output hash)
        raise ApiError(409, f"job {job_id}'s rows file {path} changed since the job wrote it")
    try:
        return 200, Text(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(422, f"job {job_id}'s rows file {path} is not UTF-8 text; read it "
                            "directly") from None


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
