from __future__ import annotations

import threading
import time

import pytest

from appliance.jobs.registry import all_kinds, register
from appliance.jobs.runner import CapabilityMissing, JobError, JobKind, JobRunner
from appliance.trust import audit

KINDS = all_kinds()
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


# concurrency ------------------------------------------------------------------------------

def _blocking_kinds(gates: dict[int, threading.Event]) -> dict[str, JobKind]:
    """A kind whose job waits on the event its params name (a stand-in for a job waiting on a
    peer), and an exclusive one that does the same."""
    def run(ctx, params):
        gate = gates[params["gate"]]
        while not gate.wait(0.05):
            ctx.progress(10, "waiting")  # where a cancel lands
        return {"gate": params["gate"]}

    def validate(params):
        return params

    return {"wait": JobKind("wait", run, validate),
            "alone": JobKind("alone", run, validate, exclusive=True)}


@pytest.fixture
def gates():
    gates = {i: threading.Event() for i in range(4)}
    yield gates
    for gate in gates.values():
        gate.set()  # never leave a job thread blocked behind a failed assertion


@pytest.fixture
def waiting_runner(store, gates):
    r = JobRunner(store, _blocking_kinds(gates), max_jobs=3)
    r.start()
    yield r
    r.stop(timeout=10)


def test_two_waiting_jobs_run_at_the_same_time(waiting_runner, gates):
    first = waiting_runner.submit("wait", {"gate": 0}, "cli", [], "mini")
    second = waiting_runner.submit("wait", {"gate": 1}, "cli", [], "mini")
    wait_state(waiting_runner, first["id"], {"running"})
    wait_state(waiting_runner, second["id"], {"running"})
    assert waiting_runner.running() == [first["id"], second["id"]]
    gates[1].set()
    assert wait_state(waiting_runner, second["id"], {"done"})["result"] == {"gate": 1}
    assert waiting_runner.get(first["id"])["state"] == "running"  # the other one still waits
    gates[0].set()
    assert wait_state(waiting_runner, first["id"], {"done"})["state"] == "done"


def test_exclusive_job_waits_for_running_ones_and_runs_alone(waiting_runner, gates):
    running = waiting_runner.submit("wait", {"gate": 0}, "cli", [], "mini")
    wait_state(waiting_runner, running["id"], {"running"})
    alone = waiting_runner.submit("alone", {"gate": 1}, "cli", [], "mini")
    later = waiting_runner.submit("wait", {"gate": 2}, "cli", [], "mini")
    time.sleep(1.5)  # the dispatcher has had its chances to start them
    assert waiting_runner.get(alone["id"])["state"] == "queued"
    assert waiting_runner.get(later["id"])["state"] == "queued"  # does not overtake it
    gates[0].set()
    wait_state(waiting_runner, alone["id"], {"running"})
    time.sleep(1.5)
    assert waiting_runner.running() == [alone["id"]]  # nothing starts beside it
    gates[1].set()
    wait_state(waiting_runner, later["id"], {"running", "done"})
    gates[2].set()
    assert wait_state(waiting_runner, later["id"], {"done"})["state"] == "done"


def test_cancel_a_job_running_beside_another(waiting_runner, gates):
    keep = waiting_runner.submit("wait", {"gate": 0}, "cli", [], "mini")
    drop = waiting_runner.submit("wait", {"gate": 1}, "cli", [], "mini")
    wait_state(waiting_runner, keep["id"], {"running"})
    wait_state(waiting_runner, drop["id"], {"running"})
    waiting_runner.cancel(drop["id"], "bob")
    cancelled = wait_state(waiting_runner, drop["id"], {"cancelled", "done", "failed"})
    assert cancelled["state"] == "cancelled" and cancelled["message"] == "cancelled by bob"
    assert waiting_runner.get(keep["id"])["state"] == "running"
    gates[0].set()
    assert wait_state(waiting_runner, keep["id"], {"done"})["state"] == "done"


def test_stop_interrupts_every_running_job(store, gates):
    r = JobRunner(store, _blocking_kinds(gates), max_jobs=2)
    r.start()
    jobs = [r.submit("wait", {"gate": i}, "cli", [], "mini") for i in (0, 1)]
    for job in jobs:
        wait_state(r, job["id"], {"running"})
    r.stop(timeout=10)
    assert [r.get(j["id"])["state"] for j in jobs] == ["interrupted", "interrupted"]


def test_registry_refuses_a_second_kind_of_the_same_name():
    kinds = all_kinds()
    assert {"benchmark", "calibrate", "selftest", "burnin", "keygen"} <= set(kinds)
    assert {k for k, spec in kinds.items() if spec.exclusive} >= {"benchmark", "calibrate",
                                                                 "burnin"}
    with pytest.raises(ValueError, match="already registered"):
        register(JobKind("burnin", kinds["burnin"].run, kinds["burnin"].validate))
    register(kinds["burnin"])  # the same kind again is harmless (a module imported twice)
