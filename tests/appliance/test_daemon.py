"""The real daemon process over its Unix socket: API, jobs across SIGKILL, SIGTERM, systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat

import pytest

from appliance.client import DaemonClient, DaemonError
from appliance.state.store import Store
from appliance.trust import audit
from tests.appliance import fakehost
from tests.appliance.daemon_proc import ADMIN_PASSWORD, Daemon


def test_ready_line_socket_and_read_endpoints(daemon):
    sock = daemon.state_dir / "run" / "noded.sock"
    assert daemon.ready_line == f"pec-noded ready: socket={sock} profile=mini"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    c = daemon.client
    status = c.get("/v1/status")
    assert status["profile"] == "mini" and status["capabilities"] == ["mpc"]
    assert status["router_policy"] == "cpu-only"
    assert {"node_id", "version", "uptime_s", "degraded", "degraded_reasons"} <= set(status)
    assert status["health"]["hsm"] == {"ok": True, "detail": "token 'pec' unlocked"}
    assert status["health"]["tpm"]["ok"] is True and not status["degraded"]
    assert {b["name"] for b in status["health"]["backends"]} >= {"cpu"}
    inventory = c.get("/v1/inventory")
    assert inventory["cpu"]["cores"] == 16 and len(inventory["nics"]) == 2
    profile = c.get("/v1/profile")
    assert profile["profile"] == "mini" and profile["override"] is None
    assert all(set(k) == {"name", "required", "found", "met"} for k in profile["criteria"])
    live = c.get("/v1/live")
    assert 0 < live["memory"]["used"] < live["memory"]["total"]
    assert live["disk"]["total"] > 0 and isinstance(live["net"], dict)
    backends = c.get("/v1/backends")["backends"]
    assert all({"name", "healthy", "devices", "calibration"} <= set(b) for b in backends)
    metrics = c.get("/metrics")
    assert 'pec_profile_info{profile="mini",router_policy="cpu-only"} 1' in metrics
    assert 'pec_jobs{kind="benchmark",state="queued"} 0' in metrics
    assert "pec_memory_total_bytes " in metrics and "pec_backend_healthy{" in metrics
    kinds = {k["kind"]: k for k in c.get("/v1/job-kinds")["kinds"]}
    assert kinds["keygen"]["requires"] == "mpc" and kinds["benchmark"]["allowed"]


def test_write_endpoints_and_errors(daemon):
    c = daemon.client
    assert c.get("/v1/settings") == {"session_timeout_s": 900}
    assert c.put("/v1/settings", {"session_timeout_s": 600}) == \
        {"session_timeout_s": 600}
    for body, needle in (
        ({"session_timeout_s": 5}, "between 60 and 86400"),
        ({"colour": "red"}, "unknown setting"),
        ({"session_timeout_s": 600, "actor": "admin"}, "'actor' is not accepted"),
    ):
        with pytest.raises(DaemonError, match=needle) as err:
            c.put("/v1/settings", body)
        assert err.value.status == 400
    user = c.post("/v1/users", {"username": "audra", "password": "auditor password 1",
                                "role": "auditor"})
    assert user["role"] == "auditor" and user["locked_until"] is None
    assert {u["username"] for u in c.get("/v1/users")["users"]} == {"admin", "audra"}
    ok = c.post("/v1/users/authenticate", {"username": "admin", "password": ADMIN_PASSWORD,
                                           "remote": "127.0.0.1"})
    assert ok == {"ok": True, "role": "admin", "reason": None}
    with pytest.raises(DaemonError, match="at least 12") as err:
        c.post("/v1/users", {"username": "x", "password": "short", "role": "admin"})
    assert err.value.status == 400
    assert c.post("/v1/users/audra/password", {"old": "auditor password 1",
                                               "new": "auditor password 2"}) == {"ok": True}
    with pytest.raises(DaemonError) as err:
        c.post("/v1/users/audra/password", {"old": "wrong", "new": "whatever long enough"})
    assert err.value.status == 403
    rec = c.post("/v1/audit/record", {"action": "panel.login",
                                      "object": "session", "details": {"remote": "::1"}})
    assert rec["action"] == "panel.login" and len(rec["hash"]) == 64
    page = c.get("/v1/audit", actor=audit.local_actor(), limit=5)  # named by SO_PEERCRED
    assert page["total"] >= 3 and len(page["records"]) <= 5
    verified = c.post("/v1/audit/verify")
    assert (verified["ok"], verified["first_bad"], verified["reason"]) == (True, None, None)
    for path, body, needle in (
        ("/v1/keys/rotate-kek", {"actor": "admin"}, "'actor' is not accepted"),
        ("/v1/attestation/quote", {}, "nonce"),
        ("/v1/attestation/quote", {"nonce": "zz"}, "hex"),
        ("/v1/attestation/quote", {"nonce": "00"}, "8 to 64 bytes"),
        ("/v1/attestation/verify", {"bundle": "x"}, "bundle"),
        ("/v1/attestation/verify", {"bundle": {}, "policy": 3}, "policy"),
    ):
        with pytest.raises(DaemonError, match=needle) as err:
            c.post(path, body)
        assert err.value.status == 400, (path, body)
    with pytest.raises(DaemonError) as err:
        c.get("/v1/nothing")
    assert err.value.status == 404
    with pytest.raises(DaemonError, match="use GET, POST") as err:
        c.request("DELETE", "/v1/jobs")
    assert err.value.status == 405
    with pytest.raises(DaemonError) as err:
        c.get("/v1/jobs", limit="lots")
    assert err.value.status == 400
    with pytest.raises(DaemonError) as err:
        c.get("/v1/jobs/999")
    assert err.value.status == 404


def test_malformed_json_and_oversized_body(daemon):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.state_dir / "run" / "noded.sock"))
    body = b"{not json"
    sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert "not valid JSON" in json.loads(payload)["error"]
    with pytest.raises(DaemonError) as err:
        daemon.client.post("/v1/audit/record", {"action": "b", "object": "c",
                                                "details": {"x": "y" * (1 << 20)}})
    assert err.value.status == 413


def test_capability_gating_and_audited_override(daemon):
    c = daemon.client
    job = c.post("/v1/jobs", {"kind": "keygen", "params": {"bits": 2048}})
    assert job["state"] == "queued"
    view = c.put("/v1/profile/override", {"profile": "unclassified"})
    assert view["profile"] == "unclassified" and view["override"]["by"] == audit.local_actor()
    assert c.get("/v1/status")["capabilities"] == []
    with pytest.raises(DaemonError, match="needs capability 'mpc'") as err:
        c.post("/v1/jobs", {"kind": "keygen", "params": {}})
    assert err.value.status == 403
    with pytest.raises(DaemonError, match="unknown job kind") as err:
        c.post("/v1/jobs", {"kind": "dance"})
    assert err.value.status == 400
    with pytest.raises(DaemonError, match="profile must be one of") as err:
        c.put("/v1/profile/override", {"profile": "huge"})
    assert c.put("/v1/profile/override", {"profile": None})["profile"] == "mini"
    actions = [r["action"] for r in c.get("/v1/audit", action="profile.override")["records"]]
    assert actions == ["profile.override", "profile.override"]


def test_sigkill_mid_job_loses_nothing(tmp_path):
    d = Daemon(tmp_path / "state", fakehost.standard().build(tmp_path / "root"))
    d.init()
    d.start()
    try:
        c = d.client
        finished = c.post("/v1/jobs", {"kind": "burnin", "params": {"seconds": 1}})
        finished = d.wait_job(finished["id"], {"done", "failed"})
        assert finished["state"] == "done"
        long = c.post("/v1/jobs", {"kind": "burnin", "params": {"seconds": 120}})
        queued = [c.post("/v1/jobs", {"kind": kind, "params": params})
                  for kind, params in (("burnin", {"seconds": 1}), ("selftest", {"batch": 2}))]
        d.wait_progress(long["id"], 2)
        d.kill()
        assert (d.state_dir / "run" / "noded.sock").exists()  # left behind by the kill

        d.start()  # a stale socket must not stop the restart
        assert c.get(f"/v1/jobs/{finished['id']}") == finished
        interrupted = c.get(f"/v1/jobs/{long['id']}")
        assert interrupted["state"] == "interrupted"
        assert interrupted["progress"] >= 2 and interrupted["finished"]
        for job in queued:
            assert d.wait_job(job["id"], {"done", "failed"})["state"] == "done"
        listing = c.get("/v1/jobs", limit=10)
        assert listing["total"] == 4
        again = c.post(f"/v1/jobs/{long['id']}/resume", {})
        assert (again["state"], again["progress"], again["started"]) == ("queued", 0, None)
        d.wait_job(long["id"], {"running"})
        cancelled = c.post(f"/v1/jobs/{long['id']}/cancel", {})
        assert cancelled["id"] == long["id"]
        assert d.wait_job(long["id"], {"cancelled", "done", "failed"})["state"] == "cancelled"
        assert c.post("/v1/audit/verify")["ok"] is True
    finally:
        d.stop_now()


def test_sigterm_stops_cleanly_and_interrupts_the_running_job(daemon):
    c = daemon.client
    job = c.post("/v1/jobs", {"kind": "burnin", "params": {"seconds": 120}})
    daemon.wait_job(job["id"], {"running"})
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert not (daemon.state_dir / "run" / "noded.sock").exists()
    assert any("received SIGTERM" in line for line in daemon.stderr_lines)
    store = Store(daemon.state_dir / "pec.db")
    try:
        row = store.query("SELECT state, message, error FROM jobs WHERE id=?", (job["id"],))[0]
    finally:
        store.close()
    assert row[0] == "interrupted" and "stopped" in row[1], tuple(row)
    log = (daemon.state_dir / "log" / "noded.log").read_text()
    assert "ready: profile mini" in log and "stopped" in log
    with pytest.raises(DaemonError, match="not running") as err:
        DaemonClient(daemon.state_dir).get("/v1/status")
    assert err.value.status == 0


def test_second_daemon_on_the_same_state_is_refused(daemon):
    other = Daemon(daemon.state_dir, daemon.root)
    with pytest.raises(AssertionError, match="another daemon already runs"):
        other.start(timeout=60)
    assert daemon.client.get("/v1/status")["profile"] == "mini"


def test_systemd_notify_ready_and_watchdog(tmp_path):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(60)
    d = Daemon(tmp_path / "state", fakehost.jumbo().build(tmp_path / "root"),
               env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "300000"})
    d.init()
    d.start()
    try:
        messages = [listener.recv(4096).decode() for _ in range(3)]
        assert messages[0].startswith("READY=1") and "profile jumbo" in messages[0]
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"]
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
        rest = []
        listener.settimeout(1)
        try:
            while True:
                rest.append(listener.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest
    finally:
        d.stop_now()
        listener.close()
        os.unlink(notify_path)


def test_systemd_unit_is_valid_and_hardened(tmp_path):
    import shutil
    import subprocess
    import sys

    from tests.appliance.daemon_proc import REPO

    text = (REPO / "packaging" / "pec-noded.service").read_text()
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["WatchdogSec"] == ["30"]
    assert settings["ExecStart"] == ["/usr/bin/pec-appliance serve --state-dir /var/lib/pec"]
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("DevicePolicy", "closed"), ("CapabilityBoundingSet", "")):
        assert settings[key] == [value], key
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed to check the unit (Debian package systemd)"
    unit = tmp_path / "pec-noded.service"
    unit.write_text(text.replace("/usr/bin/pec-appliance", sys.executable))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    # systemd-analyze exits 0 on an unknown key or a bad value: any line about the unit is one
    complaints = [line for line in result.stderr.splitlines() if str(unit) in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_calibrate_job_is_stored_and_routes_after_a_restart(daemon, monkeypatch):
    from accel.backends import ROUTED_OPS, Calibration

    # the daemon keeps the router's calibration in its state directory, unless told otherwise
    monkeypatch.delenv("PEC_ACCEL_CACHE", raising=False)
    c = daemon.client
    job = c.post("/v1/jobs", {"kind": "calibrate",
                              "params": {"bits": 512, "quick": True, "max_batch": 64}})
    done = daemon.wait_job(job["id"], {"done", "failed"})
    assert done["state"] == "done", done["error"]
    path = daemon.state_dir / "accel" / "calibration.json"
    assert done["result"]["path"] == str(path)
    stored = Calibration.load(path)
    assert set(stored.thresholds["opencl"]) == set(ROUTED_OPS)  # encrypt and decrypt too
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    daemon.start()  # reads the stored table back
    backends = {b["name"]: b for b in c.get("/v1/backends")["backends"]}
    assert backends["opencl"]["calibration"]["crossover"] == stored.thresholds["opencl"]
    assert set(backends["opencl"]["calibration"]["ops_per_s"]) == set(ROUTED_OPS.values())
    assert backends["cpu"]["calibration"]["ops_per_s"]["encrypt"]
