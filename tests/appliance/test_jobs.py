from __future__ import annotations

import time

import pytest

from appliance import audit
from appliance.job_kinds import KINDS
from appliance.jobs import CapabilityMissing, JobError, JobRunner

ALL_CAPS = ["mpc", "fl", "ledger", "tee"]


def wait_state(runner, job_id, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runner.get(job_id)
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {runner.get(job_id)['state']}")


@pytest.fixture
def runner(store):
    r = JobRunner(store, KINDS)
    r.start()
    yield r
    r.stop(timeout=10)


def test_burnin_runs_to_done_with_progress_and_log(runner):
    job = runner.submit("burnin", {"seconds": 1}, "alice", ALL_CAPS, "jumbo")
    assert job["state"] == "queued" and job["actor"] == "alice"
    done = wait_state(runner, job["id"], {"done", "failed"})
    assert done["state"] == "done", done["error"]
    assert done["progress"] == 100
    assert done["result"]["rounds"] > 0
    assert sum(done["result"]["faults"].values()) == 0
    assert any("burn-in" in line for line in runner.log_lines(job["id"]))


def test_cancel_running_and_queued_then_resume(runner):
    long = runner.submit("burnin", {"seconds": 60}, "cli", ALL_CAPS, "mini")
    queued = runner.submit("burnin", {"seconds": 1}, "cli", ALL_CAPS, "mini")
    wait_state(runner, long["id"], {"running"})
    assert runner.cancel(queued["id"], "bob")["state"] == "cancelled"
    runner.cancel(long["id"], "bob")
    cancelled = wait_state(runner, long["id"], {"cancelled", "done", "failed"})
    assert cancelled["state"] == "cancelled"
    assert cancelled["message"] == "cancelled by bob"
    with pytest.raises(JobError, match="already cancelled"):
        runner.cancel(long["id"], "bob")
    again = runner.resume(queued["id"], "bob")
    assert again["state"] == "queued"
    assert wait_state(runner, queued["id"], {"done", "failed"})["state"] == "done"
    with pytest.raises(JobError, match="only failed, cancelled, interrupted"):
        runner.resume(queued["id"], "bob")


def test_bad_requests_are_refused_before_queueing(runner, store):
    with pytest.raises(JobError, match="unknown job kind 'mine'"):
        runner.submit("mine", {}, "cli", ALL_CAPS, "jumbo")
    with pytest.raises(JobError, match="bits must be one of"):
        runner.submit("benchmark", {"bits": 1000}, "cli", ALL_CAPS, "jumbo")
    with pytest.raises(JobError, match="unknown param"):
        runner.submit("selftest", {"rounds": 3}, "cli", ALL_CAPS, "jumbo")
    with pytest.raises(JobError, match="quick must be true or false"):
        runner.submit("benchmark", {"quick": "yes"}, "cli", ALL_CAPS, "jumbo")
    with pytest.raises(JobError, match="params must be an object"):
        runner.submit("selftest", [1], "cli", ALL_CAPS, "jumbo")
    assert runner.list()[1] == 0  # nothing half-written


def test_capability_gating(runner):
    with pytest.raises(CapabilityMissing, match=r"needs capability 'mpc'.*'unclassified'"):
        runner.submit("keygen", {"bits": 2048}, "cli", [], "unclassified")
    assert runner.list()[1] == 0
    job = runner.submit("keygen", {"bits": 2048}, "cli", ["mpc"], "mini")
    failed = wait_state(runner, job["id"], {"done", "failed"})
    assert failed["state"] == "failed" and "trust root" in failed["error"]


def test_selftest_checks_every_backend(runner):
    import accel.backends

    job = runner.submit("selftest", {"batch": 4}, "cli", [], "unclassified")
    done = wait_state(runner, job["id"], {"done", "failed"}, timeout=60)
    if done["state"] == "done":
        assert set(done["result"]["backends"]) == set(accel.backends.names())
        assert done["result"]["backends"]["cpu"]["checks"]["powmod"] is True
    else:  # a failure names the backend that failed
        assert any(name in done["error"] for name in accel.backends.names())


def test_calibrate_job_covers_every_routed_op_and_the_router_takes_it(runner, tmp_path,
                                                                       monkeypatch):
    import accel.backends
    from accel.backends import ROUTED_OPS, Calibration

    monkeypatch.setenv("PEC_ACCEL_CACHE", str(tmp_path / "accel"))
    accel.backends.set_calibration({}, save=False)  # whatever this process held before
    accel.backends.set_policy("fastest-healthy")
    try:
        job = runner.submit("calibrate", {"max_batch": 64, "bits": 512, "quick": True}, "cli",
                            [], "mini")
        done = wait_state(runner, job["id"], {"done", "failed"}, timeout=60)
        assert done["state"] == "done", done["error"]
        in_force = accel.backends.calibration()
        devices = [b["name"] for b in accel.backends.available()
                   if b["name"] != "cpu" and b["healthy"]]
        assert "opencl" in devices  # PoCL, in every test environment
        # every device got an entry for every routed op, encryption and decryption included
        # (the appliance's own calibrator measured mulmod and powmod only)
        assert set(in_force.thresholds) == set(devices)
        for name in devices:
            assert set(in_force.thresholds[name]) == set(ROUTED_OPS)
        assert set(in_force.timings["cpu"]) == set(ROUTED_OPS.values())
        assert max(in_force.timings["cpu"]["mulmod"]) <= 64 and in_force.quick
        # saved in the state directory's accel/ (PEC_ACCEL_CACHE), where the daemon reads it
        # back at its next start; the job's result is the same document
        assert done["result"]["path"] == str(tmp_path / "accel" / "calibration.json")
        assert Calibration.load(done["result"]["path"]) == in_force
        assert Calibration.from_dict(done["result"]) == in_force
        # the router routes encrypt and decrypt by what was measured
        for op in ("encrypt", "decrypt"):
            threshold = in_force.thresholds["opencl"][op]
            assert accel.backends.resolve(op=op, size=threshold or 10**6).name == (
                "cpu" if threshold is None else "opencl")
        assert any("saved to" in line for line in runner.log_lines(job["id"]))
    finally:
        accel.backends.set_calibration({}, save=False)


def test_calibrate_params_are_checked(runner):
    with pytest.raises(JobError, match="quick must be true or false"):
        runner.submit("calibrate", {"quick": 1}, "cli", [], "mini")
    with pytest.raises(JobError, match="unknown param"):
        runner.submit("calibrate", {"ops": ["encrypt"]}, "cli", [], "mini")


def test_benchmark_job_keeps_the_report(runner):
    job = runner.submit("benchmark", {"bits": 512, "quick": True}, "cli", [], "mini")
    done = wait_state(runner, job["id"], {"done", "failed"}, timeout=300)
    assert done["state"] == "done", done["error"]
    assert done["result"]["bits"] == 512 and done["result"]["backends"]


def test_recover_marks_running_jobs_interrupted(store):
    first = JobRunner(store, KINDS)
    job = first.submit("burnin", {"seconds": 5}, "cli", [], "mini")
    queued = first.submit("burnin", {"seconds": 1}, "cli", [], "mini")
    first._claim()  # what a process that died mid-job leaves behind
    assert first.get(job["id"])["state"] == "running"
    second = JobRunner(store, KINDS)
    assert second.recover() == [job["id"]]
    assert second.get(job["id"])["state"] == "interrupted"
    assert second.get(queued["id"])["state"] == "queued"
    actions = [r["action"] for r in audit.records(limit=10)[0]]
    assert "job.interrupted" in actions


def test_list_filters_and_paging(runner):
    ids = [runner.submit("burnin", {"seconds": 1}, "cli", [], "mini")["id"] for _ in range(3)]
    runner.cancel(ids[2], "cli")
    jobs, total = runner.list(kind="burnin", limit=2)
    assert total == 3 and [j["id"] for j in jobs] == [ids[2], ids[1]]
    assert runner.list(state="cancelled")[1] == 1
    with pytest.raises(JobError, match="unknown state"):
        runner.list(state="sleeping")


def test_benchmark_of_an_absent_backend_fails_with_the_reason(runner):
    import accel.backends

    absent = []
    for name in accel.backends.names():
        try:
            accel.backends.get(name)
        except Exception:  # no runtime for it on this machine
            absent.append(name)
    if not absent:
        pytest.skip("every backend loads here (a CUDA machine): nothing is absent")
    job = runner.submit("benchmark", {"backend": absent[0], "bits": 512, "quick": True},
                        "alice", ALL_CAPS, "jumbo")
    failed = wait_state(runner, job["id"], {"done", "failed"})
    # used to end "done" at 100% with "backends": {}
    assert failed["state"] == "failed" and failed["result"] is None
    assert f"backend {absent[0]} is not available on this node" in failed["error"]
    assert "available are cpu" in failed["error"]
