"""Who the daemon records as the actor, and what it does with a broken audit chain: the real
daemon with its SoftHSM2 token and swtpm."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from appliance.client import DaemonClient, DaemonError
from appliance.trust import audit
from tests.appliance.daemon_proc import REPO, cli


def _as_nobody(state_dir, method: str, path: str, body: dict, panel_user: str | None) -> dict:
    """One request from another Unix user (uid 65534) on the daemon's socket."""
    script = (
        "import json, os, sys\n"
        "from appliance.client import DaemonClient, DaemonError\n"
        # SO_PEERCRED is taken at connect(): drop to nobody first; a relative socket path
        # needs no search right on the (root-only) directories above the state directory
        "os.chdir(sys.argv[1])\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "c = DaemonClient('.', panel_user=sys.argv[4] or None)\n"
        "try:\n"
        "    print(json.dumps(c.request(sys.argv[2], sys.argv[3], json.loads(sys.argv[5]))))\n"
        "except DaemonError as e:\n"
        "    print(json.dumps({'status': e.status, 'error': e.message}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(state_dir), method, path,
                          panel_user or "", json.dumps(body)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_actor_is_the_authenticated_caller(daemon):
    c = daemon.client
    me = audit.local_actor()
    with pytest.raises(DaemonError, match="'actor' is not accepted") as err:
        c.post("/v1/users", {"username": "alice", "password": "alice password 1",
                             "role": "auditor", "actor": "alice"})
    assert err.value.status == 400
    assert c.get("/v1/audit", actor="alice")["total"] == 0
    assert c.get("/v1/users", )["users"] and "alice" not in {
        u["username"] for u in c.get("/v1/users")["users"]}
    c.post("/v1/users", {"username": "alice", "password": "alice password 1",
                         "role": "auditor"})
    created = c.get("/v1/audit", action="user.create")["records"]
    assert [r["actor"] for r in created if r["object"] == "user:alice"] == [me]

    # the panel (same account as the daemon) names its logged-in user; the record says both
    panel = DaemonClient(daemon.state_dir).on_behalf_of("admin")
    panel.put("/v1/settings", {"session_timeout_s": 600})
    change = c.get("/v1/audit", action="settings.change")["records"][0]
    assert change["actor"] == f"panel:admin via uid {os.geteuid()}"

    # the CLI has no --actor any more
    refused = cli("jobs", "submit", "selftest", "--actor", "admin", "--state-dir",
                  str(daemon.state_dir))
    assert refused.returncode == 2 and "--actor" in refused.stderr
    job = json.loads(cli("jobs", "submit", "selftest", "--state-dir", str(daemon.state_dir),
                         "--json").stdout)
    submit = [r for r in c.get("/v1/audit", action="job.submit")["records"]
              if r["object"] == f"job:{job['id']}"]
    assert [r["actor"] for r in submit] == [me]

    # another Unix user on the socket is named as itself and cannot vouch for a panel user
    os.chmod(daemon.state_dir / "run" / "noded.sock", 0o666)
    os.chmod(daemon.state_dir, 0o755)
    os.chmod(daemon.state_dir / "run", 0o755)
    forged = _as_nobody(daemon.state_dir, "PUT", "/v1/settings",
                        {"session_timeout_s": 700}, "admin")
    assert forged["status"] == 403 and "panel's service account" in forged["error"]
    own = _as_nobody(daemon.state_dir, "PUT", "/v1/settings", {"session_timeout_s": 700}, None)
    assert own == {"session_timeout_s": 700}
    change = c.get("/v1/audit", action="settings.change")["records"][0]
    assert change["actor"] == "unix:nobody" and change["details"] == {"session_timeout_s": 700}


def test_a_broken_chain_is_reported_at_start_and_not_silently_extended(daemon):
    c = daemon.client
    for timeout in (600, 700):
        c.put("/v1/settings", {"session_timeout_s": timeout})
    seq = c.get("/v1/audit", action="settings.change")["records"][0]["seq"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    with sqlite3.connect(daemon.state_dir / "pec.db") as db:
        db.execute("UPDATE audit_ledger SET details='{\"session_timeout_s\":86400}' "
                   "WHERE seq=?", (seq,))
    daemon.start()
    status = c.get("/v1/status")
    reasons = " | ".join(status["degraded_reasons"])
    assert status["degraded"] and f"signed ledger BROKEN at record {seq}" in reasons
    assert "acknowledge-break" in reasons
    log = (daemon.state_dir / "log" / "noded.log").read_text()
    assert "ERROR pec.audit: audit signed ledger is BROKEN" in log
    total = c.get("/v1/audit")["total"]
    with pytest.raises(DaemonError, match="broken at record") as err:
        c.post("/v1/users", {"username": "bob", "password": "bob password 12",
                             "role": "auditor"})
    assert err.value.status == 409
    assert c.get("/v1/audit")["total"] == total  # nothing chained onto the break
    assert "bob" not in {u["username"] for u in c.get("/v1/users")["users"]}
    assert c.post("/v1/audit/verify")["signed"]["first_bad"] == seq

    acked = cli("audit", "acknowledge-break", "--reason", "test tampered on purpose",
                "--state-dir", str(daemon.state_dir))
    assert acked.returncode == 0, acked.stderr
    assert "acknowledged" in acked.stdout
    c.post("/v1/users", {"username": "bob", "password": "bob password 12", "role": "auditor"})
    ack = c.get("/v1/audit", action="audit.break_acknowledged")["records"][0]
    assert ack["actor"] == audit.local_actor() and ack["details"]["first_bad"] == seq
    assert ack["details"]["note"] == "test tampered on purpose"
    assert any("acknowledged by" in r for r in c.get("/v1/status")["degraded_reasons"])
