"""The params of an operator job are checked at submit time, before anything runs."""

from __future__ import annotations

import pytest

from appliance.federation.kinds import validate
from appliance.jobs.registry import all_kinds

BASE = {"peers": ["bank-b"], "dataset": "customers", "peer_datasets": "bank-b=clients"}


def test_the_cli_forms_are_normalised():
    out = validate({**BASE, "peers": "bank-b", "approval_timeout_s": 5})
    assert out == {"peers": ["bank-b"], "dataset": "customers",
                   "peer_datasets": {"bank-b": "clients"}, "params": {},
                   "approval_timeout_s": 5}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peers": []}, "at least one peer"),
        ({"peers": ["bank-b", "bank-b"]}, "named twice"),
        ({"peer_datasets": "carrier-c=x"}, "missing: bank-b; not a peer of this job: carrier-c"),
        ({"peer_datasets": "bank-b"}, "PEER=DATASET"),
        ({"dataset": "../etc/passwd"}, "dataset must be a name"),
        ({"extra": 1}, "unknown param(s) extra"),
        ({"params": [1]}, "operator's parameters"),
        ({"approval_timeout_s": 0}, "approval_timeout_s"),
        ({"approval_timeout_s": True}, "approval_timeout_s"),
        ({"approval_timeout_s": 10**9}, "approval_timeout_s"),
    ],
)
def test_bad_params_are_refused_with_the_reason(change, message):
    with pytest.raises(ValueError) as err:
        validate({**BASE, **change})
    assert message in str(err.value)


def test_a_party_side_needs_its_federation_block():
    ok = validate({"federation": {"job_id": "a:1:x", "initiator": "a", "parties": {"a": "guest"}},
                   "dataset": "d"})
    assert ok["params"] == {}
    with pytest.raises(ValueError, match="job_id, initiator and parties"):
        validate({"federation": {"job_id": 3}, "dataset": "d"})


def test_every_operator_is_a_job_kind_needing_mpc():
    kinds = all_kinds()
    assert kinds["count"].requires == "mpc" and kinds["count"].on_cancel is not None
