"""Control requests between nodes: every malformed or unauthorised one gets a `{code, msg}`
refusal, never an exception that would end the listener's handler."""

from __future__ import annotations

import pytest

from appliance.federation.channel import generate_key, make_node_certificate
from appliance.federation.peers import Peers
from appliance.federation.service import Federation, Identity


@pytest.fixture
def fed(store):
    key = generate_key()
    ident = Identity("node-a", "Bank A", "127.0.0.1:1", key, make_node_certificate(key, "node-a"))
    return Federation(ident, Peers(store), listen=None, attest=lambda nonce: {"nonce": nonce.hex()})


def enrol_raw(store, name: str, node_id: str, state: str = "active") -> None:
    """A peer row as enrolment leaves it (the card's checks are tested in test_card.py)."""
    with store.transaction() as db:
        db.execute(
            "INSERT INTO peers (name, node_id, organisation, endpoint, card, policy, state, "
            "state_reason, added_by, added) VALUES (?, ?, 'Org', '127.0.0.1:2', '{}', ?, ?, ?, "
            "'test', 'now')",
            (name, node_id, '{"certificate_sha256": "ab"}', state,
             "attestation failed: policy: PCR 4" if state != "active" else ""))


@pytest.mark.parametrize("msg", [None, "attest", [], {"method": "attest"}, {"body": {}},
                                 {"method": 3, "body": {}}, {"method": "attest", "body": []}])
def test_a_malformed_request_is_refused(fed, store, msg):
    enrol_raw(store, "b", "node-b")
    reply = fed.answer("node-b", "ab", msg)
    assert reply == {"code": 400, "msg": "a control request is {method, body}", "data": None}


def test_unknown_peers_methods_and_certificates_are_refused(fed, store):
    enrol_raw(store, "b", "node-b")
    assert fed.answer("node-x", "ab", {"method": "attest", "body": {}})["code"] == 404
    assert fed.answer("node-b", "cd", {"method": "attest", "body": {}})["code"] == 403
    unknown = fed.answer("node-b", "ab", {"method": "job.explode", "body": {}})
    assert unknown["code"] == 404 and "known: attest" in unknown["msg"]


def test_a_quarantined_peer_may_only_attest(fed, store):
    enrol_raw(store, "b", "node-b", state="quarantined")
    refused = fed.answer("node-b", "ab", {"method": "job.create", "body": {}})
    assert refused["code"] == 403 and "quarantined you" in refused["msg"]
    nonce = "11" * 32
    answered = fed.answer("node-b", "ab", {"method": "attest", "body": {"nonce": nonce}})
    assert answered == {"code": 0, "msg": "ok", "data": {"nonce": nonce}}
    short = fed.answer("node-b", "ab", {"method": "attest", "body": {"nonce": "11"}})
    assert short["code"] == 400 and "32-byte" in short["msg"]


def test_a_failing_handler_answers_without_its_local_details(fed, store):
    enrol_raw(store, "b", "node-b")

    def broken(peer, body):
        raise RuntimeError("/srv/data/secret.csv line 7: value 13800000042")

    fed.handlers["job.status"] = broken
    reply = fed.answer("node-b", "ab", {"method": "job.status", "body": {}})
    assert reply["code"] == 500 and "secret" not in reply["msg"] and "1380" not in reply["msg"]
