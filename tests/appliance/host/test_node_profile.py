"""The node's profile decision against what the store and the state directory hold: a corrupt
override row, the development override, a node id edited in config.toml."""

from __future__ import annotations

import json
import sqlite3

import pytest

from appliance.node import offline_node
from appliance.state.statedir import Config, StateDir
from appliance.trust import audit
from tests.appliance import fakehost


def _state(tmp_path, host: fakehost.FakeHost, node_id: str = "node-a") -> StateDir:
    """A state directory with config.toml only: Node makes its store; no trust root here."""
    root = host.build(tmp_path / "root")
    state = StateDir(tmp_path / "state")
    state.path.mkdir()
    state.config_path.write_text(Config(node_id=node_id, root=str(root)).to_toml())
    return state


def _put_override_row(state: StateDir, raw: str) -> None:
    with offline_node(state):
        pass  # makes the store and its schema
    db = sqlite3.connect(state.db_path)
    db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('profile_override', ?)",
               (raw,))
    db.commit()
    db.close()


@pytest.mark.parametrize(("raw", "why"), [
    ("42", "must be an object with a 'profile' name, got int"),
    ("{not json", "is not valid JSON"),
    ('{"profile": "ultra"}', "names 'ultra', not a profile"),
    ('{"profile": null}', "names None, not a profile"),
])
def test_corrupt_override_row_is_ignored_with_a_precise_reason(tmp_path, raw, why):
    state = _state(tmp_path, fakehost.standard())
    _put_override_row(state, raw)
    with offline_node(state) as node:  # used to raise: 'int' object has no attribute 'get'
        status = node.status()
        view = node.profile_view()
    assert status["profile"] == "standard" and status["override"] is None
    assert status["degraded"]
    reason = next(r for r in status["degraded_reasons"] if "profile_override" in r)
    assert why in reason and "--clear-override" in reason
    assert view["override_error"] == reason and view["profile"] == "standard"


def test_development_override_turns_capabilities_on_and_is_audited(tmp_path):
    state = _state(tmp_path, fakehost.small())
    with offline_node(state) as node:
        assert (node.profile.profile, node.profile.capabilities) == ("unclassified", [])
        view = node.set_override("development", "cli", apply=False)
        assert view["profile"] == "development" and view["hardware_profile"] == "unclassified"
        assert {"mpc", "fl", "ledger"} <= set(view["capabilities"])
        assert "tee" not in view["capabilities"]  # the fake CPU has none, and says so nowhere
        assert not node.status()["degraded"]
        assert node.status()["override"]["by"] == "cli"
        records, _ = audit.records(action="profile.override")
    assert records[0]["details"]["to"] == "development"


def test_config_node_id_edit_is_detected_and_the_provisioned_id_wins(tmp_path):
    state = _state(tmp_path, fakehost.standard(), node_id="edited-by-hand")
    (state.path / "trust.json").write_text(json.dumps({"node_id": "provisioned-id"}))
    with offline_node(state) as node:
        status = node.status()
    assert status["node_id"] == "provisioned-id"
    assert status["degraded"]
    assert any("'edited-by-hand'" in r and "'provisioned-id'" in r
               for r in status["degraded_reasons"])
