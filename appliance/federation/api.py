"""The federation wing's routes of the local API: this node's card, peers, data sets, and the
parties of a multi-party job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from appliance.api import ApiError, Match, Query, Reply, _actor, _obj, route
from appliance.federation.peers import PeerError, summary
from appliance.trust import audit

if TYPE_CHECKING:
    from appliance.node import Node

_NAME = r"(?P<name>[a-z0-9][a-z0-9_-]{0,31})"
_DATASET = r"(?P<name>[a-z0-9][a-z0-9_-]{0,63})"


def _peer_view(peer: dict[str, Any]) -> dict[str, Any]:
    return {**summary(peer), "card": peer["card"], "policy": peer["policy"],
            "added_by": peer["added_by"], "added": peer["added"]}


@route("GET", "/v1/federation/card")
def get_card(node: Node, query: Query, body: Any, m: Match) -> Reply:
    card = node.node_card()
    audit.record(audit.SYSTEM, "federation.card", f"node:{node.node_id}",
                 {"ledger_head": card["ledger_head"], "endpoint": card["endpoint"]})
    return 200, card


@route("GET", "/v1/peers")
def list_peers(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"peers": [summary(p) for p in node.peers.list()]}


@route("POST", "/v1/peers")
def add_peer(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    req = _obj(body)
    name, card, policy = req.get("name"), req.get("card"), req.get("policy")
    if not isinstance(name, str) or not isinstance(card, dict):
        raise ApiError(400, "fields 'name' (a peer name) and 'card' (the peer's card) needed")
    if policy is not None and not isinstance(policy, dict):
        raise ApiError(400, "field 'policy' must be the peer's golden PCR file (an object)")
    try:
        peer = node.peers.add(card, name, actor, node.node_id, policy)
    except PeerError as exc:
        audit.record(actor, "peer.refused", f"peer:{name}",
                     {"reason": str(exc), "node_id": card.get("node_id")})
        raise
    if node.federation is not None:
        node.federation.pin(peer["card"]["certificate_pem"])
    audit.record(actor, "peer.add", f"peer:{name}", {
        "node_id": peer["node_id"], "organisation": peer["organisation"],
        "endpoint": peer["endpoint"],
        "certificate_sha256": peer["policy"]["certificate_sha256"],
        "ledger_head": card.get("ledger_head")})
    return 201, _peer_view(peer)


@route("GET", rf"/v1/peers/{_NAME}")
def get_peer(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, _peer_view(node.peers.get(m["name"]))


@route("DELETE", rf"/v1/peers/{_NAME}")
def remove_peer(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    peer = node.peers.remove(m["name"])
    if node.federation is not None:
        node.federation.unpin(peer)
    audit.record(actor, "peer.remove", f"peer:{m['name']}", {"node_id": peer["node_id"]})
    return 200, summary(peer)


@route("POST", rf"/v1/peers/{_NAME}/approve")
def approve_peer(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    accept = _obj(body).get("accept", True)
    if not isinstance(accept, bool):
        raise ApiError(400, "field 'accept' must be true or false")
    peer = node.peers.approve(m["name"], accept)
    audit.record(actor, "peer.approve", f"peer:{m['name']}", {"auto_accept": accept})
    return 200, summary(peer)


@route("POST", rf"/v1/peers/{_NAME}/attest")
def attest_peer(node: Node, query: Query, body: Any, m: Match) -> Reply:
    _actor(body)
    if node.federation is None:
        raise PeerError(node.federation_error or "federation off", 503)
    verdict = node.federation.attest_peer(m["name"])
    return 200, {"verdict": verdict, "peer": summary(node.peers.get(m["name"]))}


@route("POST", rf"/v1/peers/{_NAME}/reinstate")
def reinstate_peer(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    card = _obj(body).get("card")
    old = node.peers.get(m["name"])
    try:
        peer = node.peers.reinstate(m["name"], card)
    except PeerError as exc:
        audit.record(actor, "peer.refused", f"peer:{m['name']}", {"reason": str(exc)})
        raise
    if node.federation is not None:
        node.federation.unpin(old)
        node.federation.pin(peer["card"]["certificate_pem"])
    audit.record(actor, "peer.reinstate", f"peer:{m['name']}",
                 {"was": old["state_reason"],
                  "certificate_sha256": peer["policy"]["certificate_sha256"]})
    return 200, _peer_view(peer)


@route("GET", "/v1/federation/grade-policy")
def get_grade_policy(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.grade_policy().to_dict()


@route("PUT", "/v1/federation/grade-policy")
def put_grade_policy(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    overrides = _obj(body).get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise ApiError(400, "field 'overrides' must be an object ({grades: {L4: {...}}}) or null")
    return 200, node.set_grade_policy(overrides, actor)


@route("GET", "/v1/datasets")
def list_datasets(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"datasets": [d.to_dict() for d in node.datasets.list()]}


@route("POST", "/v1/datasets")
def add_dataset(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    req = _obj(body)
    for key in ("name", "path", "id_column"):
        if not isinstance(req.get(key), str):
            raise ApiError(400, f"field {key!r} must be a string")
    grade = req.get("grade", "L2")
    ds = node.datasets.add(req["name"], req["path"], req["id_column"], grade, actor=actor)
    audit.record(actor, "dataset.add", f"dataset:{ds.name}", {
        "path": ds.path, "grade": ds.grade, "rows": ds.row_count,
        "fingerprint": ds.fingerprint})
    return 201, ds.to_dict()


@route("GET", rf"/v1/datasets/{_DATASET}")
def get_dataset(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, node.datasets.show(m["name"]).to_dict()


@route("DELETE", rf"/v1/datasets/{_DATASET}")
def remove_dataset(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    ds = node.datasets.remove(m["name"])
    audit.record(actor, "dataset.remove", f"dataset:{ds.name}", {"fingerprint": ds.fingerprint})
    return 200, ds.to_dict()


@route("GET", r"/v1/jobs/(?P<id>\d+)/parties")
def get_job_parties(node: Node, query: Query, body: Any, m: Match) -> Reply:
    node.runner.get(int(m["id"]))  # 404 for an unknown job
    fed = node.multiparty.for_local_job(int(m["id"])) if node.multiparty else None
    if fed is None:
        raise ApiError(404, f"job {m['id']} is not a multi-party job")
    return 200, fed


# private query ---------------------------------------------------------------------------------

def _pir(node: Node) -> Any:
    if node.pir is None:
        raise PeerError(node.federation_error or "federation off", 503)
    return node.pir


@route("GET", "/v1/pir/services")
def list_pir_services(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"services": _pir(node).services()}


@route("POST", "/v1/pir/services")
def publish_pir_service(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    req = _obj(body)
    fields = [req.get(k) for k in ("name", "dataset", "key_column")]
    if not all(isinstance(v, str) and v for v in fields):
        raise ApiError(400, "fields 'name', 'dataset', 'key_column' (strings) and "
                       "'label_columns' (a list) needed")
    rotate = req.get("rotate_key", False)
    if not isinstance(rotate, bool):
        raise ApiError(400, "field 'rotate_key' is true or false")
    return 201, _pir(node).publish(*fields, req.get("label_columns"), actor, rotate)


@route("DELETE", rf"/v1/pir/services/{_DATASET}")
def unpublish_pir_service(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, _pir(node).unpublish(m["name"], _actor(body))


@route("GET", rf"/v1/peers/{_NAME}/pir/services")
def list_peer_pir_services(node: Node, query: Query, body: Any, m: Match) -> Reply:
    return 200, {"peer": m["name"], "services": _pir(node).peer_services(m["name"])}


@route("POST", "/v1/pir/query")
def pir_query(node: Node, query: Query, body: Any, m: Match) -> Reply:
    actor = _actor(body)
    req = _obj(body)
    peer, service, keys = req.get("peer"), req.get("service"), req.get("keys")
    if not isinstance(peer, str) or not isinstance(service, str) or not isinstance(keys, list):
        raise ApiError(400, "fields 'peer', 'service' (strings) and 'keys' (a list) needed")
    return 200, _pir(node).query(peer, service, keys, actor)


# models ----------------------------------------------------------------------------------------

def _outputs(node: Node) -> Any:
    if node.multiparty is None:
        raise PeerError(node.federation_error or "federation off", 503)
    return node.multiparty.output_root


@route("GET", "/v1/models")
def list_models(node: Node, query: Query, body: Any, m: Match) -> Reply:
    from appliance.federation.predict import list_models as models_here

    return 200, {"models": models_here(_outputs(node))}


@route("GET", r"/v1/models/(?P<model>[A-Za-z0-9._:-]{1,160})")
def show_model(node: Node, query: Query, body: Any, m: Match) -> Reply:
    from appliance.federation.predict import show_model as show

    return 200, show(_outputs(node), m["model"])


@route("DELETE", r"/v1/models/(?P<model>[A-Za-z0-9._:-]{1,160})")
def delete_model(node: Node, query: Query, body: Any, m: Match) -> Reply:
    from appliance.federation.predict import delete_model as delete

    return 200, delete(_outputs(node), m["model"], _actor(body))


@route("POST", r"/v1/models/(?P<model>[A-Za-z0-9._:-]{1,160})/predict")
def predict_model(node: Node, query: Query, body: Any, m: Match) -> Reply:
    from appliance.federation.predict import VERTICAL, predict_online

    req = _obj(body)
    if m["model"].split("-", 1)[0] in VERTICAL:
        _outputs(node)
        # a vertical model: the guest asks each host for its part of these rows
        return 200, node.online.predict(m["model"], req.get("rows"), req.get("peer_datasets"))
    return 200, predict_online(_outputs(node), m["model"], req.get("rows"))
