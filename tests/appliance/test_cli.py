"""The command line as scripts use it: exact output forms, and errors as one line."""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3

import pytest

from appliance.host.profile import default_profiles_dir
from appliance.trust import audit
from tests.appliance import fakehost
from tests.appliance.daemon_proc import ADMIN_PASSWORD, REPO, Daemon, cli


def one_line_error(result, needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pec-appliance: error: ") and needle in lines[0], lines[0]


def test_profile_json_contract(tmp_path):
    root = fakehost.jumbo().build(tmp_path / "root")
    result = cli("profile", "--root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["profile"] == "jumbo"
    assert data["capabilities"] == ["mpc", "tee", "fl", "ledger"]
    assert data["criteria"] and all(
        set(c) == {"name", "required", "found", "met"} and c["met"] for c in data["criteria"]
    )
    text = cli("profile", "--root", str(root))
    assert "profile:      jumbo" in text.stdout and "met" in text.stdout


def test_profile_of_a_small_box_and_mini_choice(tmp_path):
    small = fakehost.small().build(tmp_path / "small")
    data = json.loads(cli("profile", "--root", str(small), "--json").stdout)
    assert (data["profile"], data["capabilities"]) == ("unclassified", [])
    mini = fakehost.mini().build(tmp_path / "mini")
    data = json.loads(cli("profile", "--root", str(mini), "--json",
                          "--mini-capability", "fl").stdout)
    assert data["capabilities"] == ["fl"]


def test_inventory_json(tmp_path):
    root = fakehost.jumbo().build(tmp_path / "root")
    result = cli("inventory", "--root", str(root), "--json", "--no-accel")
    data = json.loads(result.stdout)
    assert data["accelerators"] == [{"kind": "dcu", "vendor": "hygon", "pci": "0000:41:00.0",
                                     "device_id": "1d94:55b7", "class_code": "0x120000"}]
    assert data["tpm"]["present"] is True


def test_errors_are_one_line(tmp_path):
    one_line_error(cli("profile", "--root", str(tmp_path / "nowhere")), "does not exist")
    broken = tmp_path / "profiles"
    shutil.copytree(default_profiles_dir(), broken)
    (broken / "mini.toml").write_text(
        (broken / "mini.toml").read_text().replace("nic_ports = 2", "nic_ports = two"))
    root = fakehost.mini().build(tmp_path / "root")
    result = cli("profile", "--root", str(root), "--profiles-dir", str(broken))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{broken / 'mini.toml'}:" in result.stderr and "invalid TOML" in result.stderr
    one_line_error(cli("status", "--state-dir", str(tmp_path / "none")), "not running")
    one_line_error(cli("serve", "--state-dir", str(tmp_path / "none")),
                   "not an initialised state directory")
    usage = cli()
    assert usage.returncode == 2 and "usage: pec-appliance" in usage.stderr


def test_init_password_rules_and_idempotence(tmp_path):
    state = tmp_path / "state"
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    one_line_error(cli("init", "--state-dir", str(state), "--admin-password-file", str(short)),
                   "at least 12 characters")
    assert not state.exists()  # nothing half-written
    one_line_error(cli("init", "--state-dir", str(state), "--admin-password-file",
                       str(tmp_path / "missing")), "cannot read password file")
    good = tmp_path / "pw"
    good.write_text(ADMIN_PASSWORD + "\nsecond line is ignored\n")
    first = cli("init", "--state-dir", str(state), "--admin-password-file", str(good), "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["admin_set"] and info["users"] == ["admin"]
    assert (state / "config.toml").is_file() and (state / "pec.db").is_file()
    assert (state / "pec.db").stat().st_mode & 0o007 == 0  # password hashes inside
    assert (state / "run").is_dir() and (state / "log").is_dir()
    assert ADMIN_PASSWORD.encode() not in (state / "pec.db").read_bytes()
    again = cli("init", "--state-dir", str(state), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["node_id"] == info["node_id"]
    same = cli("init", "--state-dir", str(state), "--admin-password-file", str(good), "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["admin_set"] is False
    other = tmp_path / "other"
    other.write_text("another long password\n")
    one_line_error(cli("init", "--state-dir", str(state), "--admin-password-file", str(other)),
                   "already exists with another password; pass --force")
    forced = cli("init", "--state-dir", str(state), "--admin-password-file", str(other),
                 "--force", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["node_id"] == info["node_id"]
    assert json.loads(forced.stdout)["admin_set"] is True
    (state / "config.toml").write_text('node_id = "x"\nmini_capability = "ledger"\n')
    one_line_error(cli("serve", "--state-dir", str(state)),
                   "config.toml:2: key 'mini_capability'")


@pytest.fixture
def running(tmp_path):
    d = Daemon(tmp_path / "state", fakehost.standard().build(tmp_path / "root"))
    pw = tmp_path / "pw"
    pw.write_text(ADMIN_PASSWORD + "\n")
    result = cli("init", "--state-dir", str(d.state_dir), "--root", str(d.root),
                 "--admin-password-file", str(pw))
    assert result.returncode == 0, result.stderr
    d.start()
    yield d
    d.stop_now()


def test_jobs_and_status_against_the_daemon(running):
    state = str(running.state_dir)
    status = json.loads(cli("status", "--state-dir", state, "--json").stdout)
    assert status["profile"] == "standard"
    submitted = cli("jobs", "submit", "burnin", "--param", "seconds=1", "--state-dir", state,
                    "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    shown = json.loads(cli("jobs", "show", str(job_id), "--state-dir", state, "--json").stdout)
    assert shown["id"] == job_id and shown["state"] in ("queued", "running", "done")
    assert 0 <= shown["progress"] <= 100
    waited = cli("jobs", "submit", "selftest", "--param", "batch=2", "--wait", "--json",
                 "--state-dir", state)
    final = json.loads(waited.stdout)
    assert final["state"] in ("done", "failed") and final["progress"] >= 0
    assert waited.returncode == (0 if final["state"] == "done" else 3)
    done = json.loads(cli("jobs", "show", str(job_id), "--state-dir", state, "--json",
                          "--log").stdout)
    assert done["state"] == "done" and done["progress"] == 100 and done["log"]
    watched = cli("jobs", "watch", str(job_id), "--state-dir", state)
    assert watched.returncode == 0 and "100%" in watched.stderr
    listing = json.loads(cli("jobs", "list", "--state-dir", state, "--json").stdout)
    assert listing["total"] == 2
    long = json.loads(cli("jobs", "submit", "burnin", "--param", "seconds=300",
                          "--state-dir", state, "--json").stdout)
    cancelled = cli("jobs", "cancel", str(long["id"]), "--state-dir", state)
    assert cancelled.returncode == 0, cancelled.stderr
    assert running.wait_job(long["id"], {"cancelled", "done", "failed"})["state"] == "cancelled"
    resumed = cli("jobs", "resume", str(long["id"]), "--state-dir", state)
    assert resumed.returncode == 0 and "queued again" in resumed.stdout
    cli("jobs", "cancel", str(long["id"]), "--state-dir", state)
    text = cli("status", "--state-dir", state)
    assert "profile:      standard" in text.stdout
    one_line_error(cli("jobs", "submit", "dance", "--state-dir", state),
                   "unknown job kind 'dance'")
    one_line_error(cli("jobs", "submit", "benchmark", "--bits", "1000", "--state-dir", state),
                   "bits must be one of")
    one_line_error(cli("jobs", "show", "999", "--state-dir", state), "no job 999 (HTTP 404)")
    one_line_error(cli("jobs", "submit", "selftest", "--param", "oops", "--state-dir", state),
                   "--param wants KEY=VALUE")


def test_bench_runs_the_paillier_benchmark():
    result = cli("bench", "--bits", "512", "--quick", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bits"] == 512 and report["quick"] is True
    rows = next(iter(report["backends"].values()))
    assert rows and all(row["accel_ops_s"] > 0 and row["phe_ops_s"] > 0 for row in rows.values())


def test_one_command_line_and_an_unexpected_failure_is_one_line(monkeypatch, capsys):
    from appliance import cli as cli_module

    parser = cli_module.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "status", "panel", "attest", "verify-attestation", "audit"} <= set(
        sub.choices)

    def broken(args):
        raise RuntimeError("the disk went away\nsecond line")

    monkeypatch.setattr(cli_module, "cmd_status", broken)
    monkeypatch.delenv("PEC_DEBUG", raising=False)
    assert cli_module.main(["status"]) == cli_module.EXIT_ERROR
    assert capsys.readouterr().err == "pec-appliance: error: the disk went away\n"


def test_profile_and_status_agree_and_show_the_override(running):
    state = str(running.state_dir)
    running.client.put("/v1/profile/override", {"profile": "mini"})
    profile = cli("profile", "--state-dir", state)
    status = cli("status", "--state-dir", state)
    assert profile.returncode == 0 and status.returncode == 0, profile.stderr + status.stderr
    line = next(li for li in profile.stdout.splitlines() if li.startswith("profile:"))
    assert line.startswith("profile:      mini (override set by unix:")
    assert line.endswith("; the hardware alone gives standard)")
    assert line in status.stdout  # the same words in both
    as_json = json.loads(cli("profile", "--state-dir", state, "--json").stdout)
    assert as_json["profile"] == json.loads(
        cli("status", "--state-dir", state, "--json").stdout)["profile"] == "mini"
    # every backend line that is not healthy says why
    for li in status.stdout.splitlines():
        if li.startswith("backend:") and "healthy" not in li.split()[2:3]:
            assert "(" in li and "no reason given" not in li, li
    cleared = cli("profile", "--clear-override", "--state-dir", state, "--json")
    assert json.loads(cleared.stdout)["profile"] == "standard", cleared.stderr


def test_corrupt_override_and_edited_node_id_start_degraded_and_cli_repairs(tmp_path):
    d = Daemon(tmp_path / "state", fakehost.standard().build(tmp_path / "root"))
    d.init()
    config = d.state_dir / "config.toml"
    real_id = json.loads((d.state_dir / "trust.json").read_text())["node_id"]
    config.write_text(config.read_text().replace(real_id, "renamed-in-config"))
    db = sqlite3.connect(d.state_dir / "pec.db")
    db.execute("INSERT INTO settings (key, value) VALUES ('profile_override', '42')")
    db.commit()
    db.close()
    d.start()  # used to exit: 'int' object has no attribute 'get'
    try:
        status = d.client.get("/v1/status")
        assert status["profile"] == "standard" and status["node_id"] == real_id
        text = cli("status", "--state-dir", str(d.state_dir)).stdout
        assert "settings.profile_override must be an object" in text
        assert "'renamed-in-config'" in text and f"this node is {real_id!r}" in text
        busy = cli("profile", "--clear-override", "--state-dir", str(d.state_dir))
        assert busy.returncode == 0  # through the daemon while it runs
        db = sqlite3.connect(d.state_dir / "pec.db")
        db.execute("UPDATE settings SET value='{not json' WHERE key='profile_override'")
        db.commit()
        db.close()
    finally:
        d.stop_now()
    cleared = cli("profile", "--clear-override", "--state-dir", str(d.state_dir))
    assert cleared.returncode == 0, cleared.stderr
    assert "profile:      standard" in cleared.stdout and "WARNING" not in cleared.stdout
    config.write_text(config.read_text().replace("renamed-in-config", real_id))
    d.start()
    try:
        status = d.client.get("/v1/status")
        assert not status["degraded"], status["degraded_reasons"]
        records = d.client.get("/v1/audit", action="profile.override")["records"]
        # the offline clear, signed into the ledger at this start
        assert [r["actor"] for r in records][:1] == [audit.local_actor()]
    finally:
        d.stop_now()


def test_init_dev_gives_a_box_that_runs_keygen_and_attest_out(tmp_path):
    state, root = tmp_path / "state", fakehost.small().build(tmp_path / "root")
    pw = tmp_path / "pw"
    pw.write_text(ADMIN_PASSWORD + "\n")
    args = ("init", "--dev", "--state-dir", str(state), "--root", str(root),
            "--admin-password-file", str(pw))
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "development override set" in first.stdout
    assert "development override kept" in cli(*args).stdout
    offline = cli("profile", "--state-dir", str(state))
    assert "profile:      development (override set by unix:" in offline.stdout
    assert "the hardware alone gives unclassified" in offline.stdout
    d = Daemon(state, root)
    d.start()
    try:
        status = d.client.get("/v1/status")
        assert status["profile"] == "development" and "mpc" in status["capabilities"]
        assert status["ledger_signed"] is True
        job = d.client.post("/v1/jobs", {"kind": "keygen", "params": {}})
        assert job["state"] == "queued"  # was refused: needs capability 'mpc'
        records = d.client.get("/v1/audit", action="profile.override")["records"]
        assert records and records[0]["details"]["to"] == "development"
        # attest: the README's nonce was too short; the error says the minimum and no file
        # is left behind
        out = tmp_path / "bundle.json"
        short = cli("attest", "--nonce", "00112233", "--out", str(out), "--state-dir",
                    str(state))
        assert short.returncode != 0 and short.stdout == "" and not out.exists()
        assert "16 to 128 hex digits" in short.stderr and "got 4 bytes" in short.stderr
        good = cli("attest", "--nonce", "00112233445566778899aabbccddeeff", "--out", str(out),
                   "--state-dir", str(state))
        assert good.returncode == 0 and good.stdout == "", good.stderr
        assert json.loads(out.read_text())["nonce"] == "00112233445566778899aabbccddeeff"
    finally:
        d.stop_now()
    readme = (REPO / "README.md").read_text()
    assert "init --dev" in readme or "development" in readme
    assert "attest --nonce $(openssl rand -hex 16) --out bundle.json" in readme
