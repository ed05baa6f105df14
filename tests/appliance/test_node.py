from __future__ import annotations

import pytest

import accel.backends
from appliance.node import Node, SettingsError
from appliance.provision import init_state_dir
from appliance.state.statedir import StateDir, StateDirError
from tests.appliance import fakehost


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setenv("PEC_ACCEL_CACHE", str(tmp_path / "accel"))
    state = StateDir(tmp_path / "state")
    init_state_dir(state, root=str(fakehost.jumbo().build(tmp_path / "root")))
    n = Node(state)
    n.start()
    yield n
    n.stop()
    accel.backends.set_policy("fastest-healthy")


def test_profile_sets_the_router_policy(node):
    assert node.status()["profile"] == "jumbo"
    assert accel.backends.policy() == "fastest-healthy"
    node.set_override("mini", "admin")
    assert node.status()["capabilities"] == ["mpc"]
    assert accel.backends.policy() == "cpu-only"
    assert node.store.get_meta("router_policy") == "cpu-only"
    node.set_override(None, "admin")
    assert accel.backends.policy() == "fastest-healthy"


def test_inventory_carries_the_router_devices(node):
    inv = node.inventory.to_dict()
    assert inv["accelerators"][0]["kind"] == "dcu"
    healthy = [b for b in node.backends if b["healthy"]]
    assert {d["backend"] for d in inv["accel_devices"]} >= {
        b["name"] for b in healthy if b["devices"]}


def test_the_node_survey_is_the_router_survey(node):
    # one survey of the backends, accel's: the daemon shows and judges what the router sees
    assert node.backends == accel.backends.available()
    assert node.status()["health"]["backends"] == accel.backends.available()
    view = {b["name"]: b for b in node.backends_view()}
    assert set(view) == set(accel.backends.names())
    assert view["opencl"]["healthy"] is True and view["opencl"]["devices"]
    cuda = view["cuda"]
    if not cuda["loaded"]:  # no CUDA runtime or NVIDIA driver: absent and expected, said why
        assert cuda["reason"] and not any(r.startswith("backend cuda")
                                          for r in node.degraded_reasons())


def test_the_node_routes_by_the_stored_calibration_from_its_start(tmp_path, monkeypatch):
    from accel.backends import ROUTED_OPS, Calibration

    monkeypatch.setenv("PEC_ACCEL_CACHE", str(tmp_path / "accel"))
    # what an earlier calibrate job left in the state directory: PoCL wins from batch 16
    stored = Calibration(thresholds={"opencl": dict.fromkeys(ROUTED_OPS, 16)},
                         timings={"cpu": {"encrypt": {16: 0.02}},
                                  "opencl": {"encrypt": {16: 0.01}}},
                         bits=512, measured_at="2025-01-01T00:00:00Z")
    stored.save(tmp_path / "accel" / "calibration.json")
    accel.backends.set_calibration({}, save=False)  # what this process held before
    state = StateDir(tmp_path / "state")
    init_state_dir(state, root=str(fakehost.jumbo().build(tmp_path / "root")))
    n = Node(state)
    n.start()
    try:
        assert accel.backends.calibration() == stored
        assert accel.backends.policy() == "fastest-healthy"
        assert accel.backends.resolve(op="encrypt", size=16).name == "opencl"
        assert accel.backends.resolve(op="decrypt", size=15).name == "cpu"
        view = {b["name"]: b for b in n.backends_view()}
        assert view["opencl"]["calibration"] == {
            "ops_per_s": {"encrypt": {"16": 1600.0}}, "crossover": stored.thresholds["opencl"],
            "time": "2025-01-01T00:00:00Z"}
        assert view["cuda"]["calibration"] is None
    finally:
        n.stop()
        accel.backends.set_calibration({}, save=False)


def test_settings_validation_changes_nothing_on_error(node):
    with pytest.raises(SettingsError, match="unknown setting"):
        node.put_settings({"session_timeout_s": 120, "theme": "dark"}, "admin")
    assert node.settings() == {"session_timeout_s": 900}
    with pytest.raises(SettingsError, match="between 60 and 86400"):
        node.put_settings({"session_timeout_s": True}, "admin")
    assert node.put_settings({"session_timeout_s": 120}, "admin") == {"session_timeout_s": 120}


def test_state_dir_must_be_initialised(tmp_path):
    with pytest.raises(StateDirError, match="pec-appliance init"):
        Node(StateDir(tmp_path / "empty"))
    with pytest.raises(StateDirError, match="root directory"):
        init_state_dir(StateDir(tmp_path / "s"), root=str(tmp_path / "missing"))


def test_profile_view_has_the_capability_matrix(node):
    matrix = node.profile_view()["matrix"]
    assert set(matrix) == {"mini", "standard", "jumbo"}
    assert matrix["mini"]["choose_one"] == ["mpc", "fl"] and matrix["mini"]["always"] == []
    assert set(matrix["jumbo"]["always"]) == {"mpc", "tee", "fl", "ledger"}


def test_node_owns_the_trust_root_from_start_to_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("PEC_ACCEL_CACHE", str(tmp_path / "accel"))
    state = StateDir(tmp_path / "state")
    init_state_dir(state, root=str(fakehost.mini().build(tmp_path / "root")))
    n = Node(state)
    assert n.status()["health"]["hsm"] == {"ok": None, "detail": "not configured"}
    n.start()
    try:
        assert n.status()["health"]["hsm"]["ok"] is True
        swtpm = n.trust._swtpm  # TrustRoot.open started the development TPM
        assert swtpm is not None and swtpm.running
    finally:
        n.stop()
    assert n.trust is None and not swtpm.running
