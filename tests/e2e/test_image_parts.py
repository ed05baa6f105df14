"""Fast checks of the OS image's parts that run without building or booting it.

The image itself is built and booted by `make image-test` (images/boot_test.py); these tests
cover what those scripts decide on their own: the Python lock, provisioning-file validation,
the setup code, the diagnostics port's allow-list and the scripts' refusal of bad arguments.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = load(REPO / "scripts" / "lock_requirements.py", "lock_requirements")
packages = load(IMAGES / "check_packages.py", "image_check_packages")
firstboot = load(IMAGES / "firstboot" / "pec_firstboot.py", "image_firstboot")
diag = load(IMAGES / "rootfs" / "pec_diag.py", "image_diag")


# ------------------------------------------------------------------ requirements lock
def test_venv_matches_the_lock() -> None:
    problems = lock.check((REPO / "requirements.lock").read_text(), REPO / "pyproject.toml")
    assert problems == [], (
        "the venv differs from requirements.lock: rebuild it (rm -r .venv; make venv) or "
        f"refresh the lock on purpose (make lock): {problems}"
    )


def test_lock_is_what_the_environment_resolves() -> None:
    expected = lock.render(lock.resolve(REPO / "pyproject.toml"))
    assert (REPO / "requirements.lock").read_text() == expected, "stale lock: run make lock"


def test_lock_holds_every_group_and_the_build_back_ends() -> None:
    pins = lock.parse((REPO / "requirements.lock").read_text())
    groups = {group for _, group in pins.values()}
    assert groups == {"runtime", "test", "build"}
    # what tpm2-pytss's source build needs: without them pinned its wheel came out as 0.0.0
    assert pins["setuptools-scm"][1] == pins["pkgconfig"][1] == "build"
    assert pins["tpm2-pytss"][1] == pins["cryptography"][1] == "runtime"
    assert pins["pytest"][1] == "test"
    runtime = lock.runtime_lines((REPO / "requirements.lock").read_text())
    assert "pytest" not in runtime and "tpm2-pytss==" in runtime


def test_lock_check_names_a_drifted_version(tmp_path: Path) -> None:
    text = (REPO / "requirements.lock").read_text()
    version = metadata.version("cryptography")
    drifted = text.replace(f"cryptography=={version}", "cryptography==0.0.1")
    assert lock.check(drifted, REPO / "pyproject.toml") == [
        f"cryptography: locked 0.0.1, installed {version}"
    ]
    dropped = "".join(line for line in text.splitlines(True) if not line.startswith("flask=="))
    assert "flask: needed (runtime) but not in the lock" in lock.check(
        dropped, REPO / "pyproject.toml"
    )


@pytest.mark.parametrize(
    "line", ["flask==3.1.3", "flask>=3  # runtime", "flask==3.1.3  # dev", "flask=3  # runtime"]
)
def test_lock_refuses_a_malformed_line(line: str) -> None:
    with pytest.raises(lock.LockError, match="line 2"):
        lock.parse(f"# head\n{line}\n")


def test_closure_follows_dependencies_with_installed_versions() -> None:
    pinned = lock.closure([Requirement("flask")])
    assert pinned["flask"] == metadata.version("flask")
    assert pinned["werkzeug"] == metadata.version("werkzeug")
    assert {"jinja2", "itsdangerous", "click", "blinker"} <= set(pinned)
    assert "pytest" not in pinned


def test_closure_refuses_a_missing_or_unsatisfied_requirement() -> None:
    with pytest.raises(lock.LockError, match="not-a-real-distribution-xyz"):
        lock.closure([Requirement("not-a-real-distribution-xyz>=1")])
    with pytest.raises(lock.LockError, match="does not satisfy"):
        lock.closure([Requirement("flask<0.1")])


# ------------------------------------------------------------------ Debian packages lock
LOCKED = {"linux-image-6.1.0-56-amd64": "6.1.192-2", "linux-image-amd64": "6.1.192-2",
          "openssl": "3.0.17-1~deb12u3", "bash": "5.2.15-2+b13"}


def test_a_security_update_is_taken_and_recorded() -> None:
    # the day the mirror served linux-image-amd64 6.1.192-3, exact pins stopped every build
    installed = {**LOCKED, "linux-image-6.1.0-56-amd64": "6.1.192-3",
                 "linux-image-amd64": "6.1.192-3", "openssl": "3.0.18-1~deb12u1"}
    updates = packages.compare(LOCKED, installed)
    assert [u["package"] for u in updates] == [
        "linux-image-6.1.0-56-amd64", "linux-image-amd64", "openssl"]
    assert updates[1] == {"package": "linux-image-amd64", "locked": "linux-image-amd64=6.1.192-2",
                          "installed": "6.1.192-3"}


def test_a_kernel_abi_bump_is_an_update_not_a_new_package() -> None:
    installed = {**LOCKED, "linux-image-amd64": "6.1.200-1"}
    del installed["linux-image-6.1.0-56-amd64"]
    installed["linux-image-6.1.0-57-amd64"] = "6.1.200-1"
    updates = packages.compare(LOCKED, installed)
    assert {"package": "linux-image-6.1.0-57-amd64",
            "locked": "linux-image-6.1.0-56-amd64=6.1.192-2", "installed": "6.1.200-1"} in updates


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bash": "5.1-1"}, "bash: installed 5.1-1 is older than the lock's 5.2.15-2+b13"),
        ({"curl": "7.88.1-10"}, "curl: installed, not in the lock"),
        ({"openssl": None}, "openssl: in the lock, not installed"),
    ],
)
def test_the_package_set_and_the_floor_hold(change: dict, message: str) -> None:
    installed = {**LOCKED, **change}
    installed = {k: v for k, v in installed.items() if v is not None}
    with pytest.raises(packages.PackageDrift, match=re.escape(message)):
        packages.compare(LOCKED, installed)


def test_exact_mode_refuses_any_update() -> None:
    installed = {**LOCKED, "openssl": "3.0.18-1~deb12u1"}
    pinned = re.escape("the lock pins openssl 3.0.17-1~deb12u3")
    with pytest.raises(packages.PackageDrift, match=pinned):
        packages.compare(LOCKED, installed, exact=True)
    assert packages.compare(LOCKED, dict(LOCKED), exact=True) == []


def test_check_packages_cli_writes_the_updates(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("# head\n" + "".join(f"{k}={v}\n" for k, v in LOCKED.items()))
    (tmp_path / "inst").write_text(
        "".join(f"{k}={v}\n" for k, v in {**LOCKED, "bash": "5.2.15-2+b14"}.items()))
    run = subprocess.run(
        [sys.executable, str(IMAGES / "check_packages.py"), str(tmp_path / "lock"),
         str(tmp_path / "inst"), "--updates", str(tmp_path / "u.json")],
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "u.json").read_text())[0]["installed"] == "5.2.15-2+b14"
    (tmp_path / "inst").write_text("bash=5.2.15-2+b14\n")
    run = subprocess.run(
        [sys.executable, str(IMAGES / "check_packages.py"), str(tmp_path / "lock"),
         str(tmp_path / "inst")], capture_output=True, text=True)
    assert run.returncode == 1 and "openssl: in the lock, not installed" in run.stderr


def test_packages_lock_pins_every_listed_package() -> None:
    listed = {
        line.split("#")[0].strip()
        for line in (IMAGES / "packages.list").read_text().splitlines()
        if line.split("#")[0].strip()
    }
    pins = dict(
        line.split("=", 1)
        for line in (IMAGES / "packages.lock").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert listed, "packages.list is empty"
    assert listed <= set(pins), f"not pinned: {sorted(listed - set(pins))}"
    assert all(pins.values()), "a pin without a version"


# ------------------------------------------------------------------ first boot
def test_provisioning_file_accepted() -> None:
    got = firstboot.parse_provisioning(
        json.dumps({"admin_password": "correct horse battery", "hostname": "pec-bj-01"}), "f"
    )
    assert got == {"admin_password": "correct horse battery", "hostname": "pec-bj-01"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"admin_password": "short"}', "at least 12"),
        ('{"hostname": "x"}', "admin_password"),
        ('{"admin_password": "twelve chars ok", "root_shell": true}', "root_shell"),
        ('{"admin_password": "twelve chars ok", "hostname": "bad_name!"}', "hostname"),
        ('{"admin_password": "twelve chars\\nok"}', "one-line"),
    ],
)
def test_provisioning_file_refused_with_reason(text: str, message: str) -> None:
    with pytest.raises(firstboot.FirstbootError, match=message) as err:
        firstboot.parse_provisioning(text, "/dev/vdb:pec-provision.json")
    assert "/dev/vdb:pec-provision.json" in str(err.value)


def test_setup_code_is_random_and_readable() -> None:
    codes = {firstboot.setup_code() for _ in range(50)}
    assert len(codes) == 50
    for code in codes:
        groups = code.split("-")
        assert len(groups) == 5 and all(len(g) == 4 for g in groups)
        assert set(code.replace("-", "")) <= set(firstboot.CODE_ALPHABET)
        assert len(code.replace("-", "")) >= firstboot.MIN_PASSWORD


def test_setup_code_goes_to_the_console_only(tmp_path: Path, capsys) -> None:
    console = tmp_path / "console"
    firstboot.show_on_console("ABCD-EFGH-JKLM-NPQR-STUV", str(console))
    assert "ABCD-EFGH-JKLM-NPQR-STUV" in console.read_text()
    out = capsys.readouterr()
    assert "ABCD" not in out.out and "ABCD" not in out.err


def test_firstboot_stops_when_already_done(tmp_path: Path) -> None:
    (tmp_path / "firstboot.json").write_text("{}")
    assert firstboot.main(["--state-dir", str(tmp_path)]) == 0
    assert (tmp_path / "firstboot.json").read_text() == "{}"


def test_firstboot_failing_step_is_named_and_leaves_no_record(tmp_path: Path, capsys) -> None:
    firstboot.CLI = str(tmp_path / "no-such-cli")
    try:
        rc = firstboot.main(["--state-dir", str(tmp_path), "--root", str(tmp_path)])
    finally:
        firstboot.CLI = "/opt/pec/venv/bin/pec-appliance"
    assert rc == 1
    assert "step 'profile' failed" in capsys.readouterr().out
    assert not (tmp_path / "firstboot.json").exists()


# ------------------------------------------------------------------ diagnostics port
@pytest.mark.parametrize(
    "request_line",
    [
        "",
        "rm -rf /",
        "attest",
        "attest ABCDEF",
        "attest 12zz",
        "attest " + "a" * 200,
        "attest aa; reboot",
        "journal sshd.service",
        "status --state-dir /etc",
    ],
)
def test_diag_refuses_anything_off_the_list(request_line: str) -> None:
    reply = diag.answer(request_line)
    assert reply["ok"] is False and reply["rc"] is None
    assert reply["stderr"]


def test_diag_reads_files_from_the_state_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(diag, "STATE", tmp_path)
    (tmp_path / "golden-pcrs.json").write_text('{"0": "00"}')
    assert diag.answer("golden") == {"ok": True, "rc": 0, "stdout": '{"0": "00"}', "stderr": ""}
    missing = diag.answer("firstboot")
    assert missing["ok"] is False and "firstboot.json" in missing["stderr"]


def test_diag_attest_passes_the_nonce_to_the_cli(monkeypatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(diag, "run", lambda argv: seen.append(argv) or {"ok": True})
    diag.answer("attest 00ff")
    assert seen == [[diag.CLI, "attest", "--nonce", "00ff", "--state-dir", str(diag.STATE)]]


# ------------------------------------------------------------------ scripts refuse bad input
def test_build_script_refuses_unknown_argument() -> None:
    proc = subprocess.run(
        ["bash", str(IMAGES / "build-image.sh"), "--frobnicate"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode != 0
    assert "unknown argument '--frobnicate'" in proc.stderr


def test_boot_test_refuses_missing_image(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(IMAGES / "boot_test.py"), "--image", str(tmp_path / "none.img"),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "no image at" in proc.stderr and "make image" in proc.stderr
