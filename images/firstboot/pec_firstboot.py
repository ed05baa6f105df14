#!/opt/pec/venv/bin/python3
"""First boot of an appliance installed from the OS image (pec-firstboot.service).

`pec-firstboot` (before the daemon starts) detects the profile, creates the state directory
with the admin account and provisions the trust root: a SoftHSM2 token with PINs only the TPM
can unseal, the TPM attestation key and the golden PCRs (when a TPM is present). The admin
password comes from the provisioning file pec-provision.json on a partition labelled PECPROV;
without one, a one-time setup code is printed on the console and becomes the admin's initial
password. Each step's outcome goes to STATE/firstboot.json, whose presence stops later runs; a
failed step stops the run with a message naming the step, and the unit runs again next boot.

`pec-firstboot record` (after the daemon is up) writes the first boot into the audit ledger
through the daemon's API, once, and notes the ledger record in STATE/firstboot.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.accounts.rules import MIN_PASSWORD

STATE = Path("/var/lib/pec")
RECORD_NAME = "firstboot.json"
PROVISION_LABEL = "PECPROV"
PROVISION_FILE = "pec-provision.json"
PROVISION_KEYS = {"admin_password", "hostname"}
TPM_DEVICES = ("/dev/tpmrm0",)
# Matches /etc/softhsm/softhsm2.conf in the image: tokens under the state directory.
SOFTHSM_SUBDIR = "hsm"
CLI = os.environ.get("PEC_CLI", "/opt/pec/venv/bin/pec-appliance")
# Unambiguous upper-case letters and digits: read off a console, typed into a browser.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class FirstbootError(RuntimeError):
    """A step could not be completed; the message says which and why."""


def log(message: str) -> None:
    print(f"pec-firstboot: {message}", flush=True)


def run_cli(*args: str) -> str:
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise FirstbootError(
            f"`pec-appliance {' '.join(args)}` exited {proc.returncode}: "
            f"{detail[-1] if detail else 'no output'}"
        )
    return proc.stdout


def detect_profile(root: str) -> dict[str, Any]:
    out = run_cli("profile", "--root", root, "--json")
    try:
        report = json.loads(out)
    except json.JSONDecodeError as e:
        raise FirstbootError(f"`pec-appliance profile --json` printed no JSON: {e}") from None
    if not isinstance(report, dict) or "profile" not in report:
        raise FirstbootError("`pec-appliance profile --json` has no 'profile' field")
    return report


def parse_provisioning(text: str, source: str) -> dict[str, str]:
    """Validate the provisioning file; the error names the file and the offending key."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FirstbootError(f"{source}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise FirstbootError(f"{source}: expected a JSON object")
    unknown = sorted(set(data) - PROVISION_KEYS)
    if unknown:
        raise FirstbootError(f"{source}: unknown key(s) {', '.join(unknown)}")
    password = data.get("admin_password")
    if not isinstance(password, str) or len(password) < MIN_PASSWORD or "\n" in password:
        raise FirstbootError(
            f"{source}: admin_password must be a one-line string of at least "
            f"{MIN_PASSWORD} characters"
        )
    hostname = data.get("hostname", "")
    if hostname and (
        not isinstance(hostname, str)
        or len(hostname) > 63
        or not all(c.isalnum() or c == "-" for c in hostname)
        or hostname.startswith("-")
    ):
        raise FirstbootError(f"{source}: hostname must be letters, digits and '-' (max 63)")
    return {"admin_password": password, "hostname": hostname}


def find_provisioning_device() -> str | None:
    # Disks appear asynchronously; let udev finish so the label is visible.
    subprocess.run(["udevadm", "settle", "--timeout=30"], check=False)
    proc = subprocess.run(
        ["blkid", "-L", PROVISION_LABEL], capture_output=True, text=True, check=False
    )
    device = proc.stdout.strip()
    return device or None


def read_provisioning(device: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="pec-provision-", dir="/run") as mnt:
        subprocess.run(
            ["mount", "-o", "ro,nosuid,nodev,noexec", device, mnt],
            check=True,
            capture_output=True,
        )
        try:
            path = Path(mnt) / PROVISION_FILE
            if not path.is_file():
                raise FirstbootError(f"{device} (label {PROVISION_LABEL}) has no {PROVISION_FILE}")
            return parse_provisioning(path.read_text(), f"{device}:{PROVISION_FILE}")
        finally:
            subprocess.run(["umount", mnt], check=False)


def setup_code() -> str:
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(20))
    return "-".join(raw[i : i + 4] for i in range(0, 20, 4))


def show_on_console(code: str, console: str) -> None:
    # Straight to the console device, never to stdout: the journal is kept on disk and the
    # code is a password until the admin changes it.
    banner = (
        "\n"
        "==============================================================\n"
        " PEC appliance: no provisioning file found.\n"
        f" One-time setup code (admin password): {code}\n"
        " Log in to the admin panel as 'admin' with it and change it.\n"
        "==============================================================\n"
    )
    with open(console, "w") as tty:
        tty.write(banner)


def init_state(state: Path, password: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir="/run", prefix="pec-admin-", delete=True) as f:
        os.chmod(f.name, 0o600)
        f.write(password + "\n")
        f.flush()
        run_cli("init", "--state-dir", str(state), "--admin-password-file", f.name)


def tpm_device(root: str) -> str | None:
    for dev in TPM_DEVICES:
        if os.path.exists(os.path.join(root, dev.lstrip("/"))):
            return dev
    return None


def provision_trust(state: Path, tpm: str | None) -> dict[str, Any]:
    if tpm is None:
        # The trust root seals the HSM PIN to the TPM: without one there is nothing to seal to,
        # and the daemon reports the trust root as not configured.
        return {"skipped": "no TPM 2.0 device"}
    from appliance.trust.layout import TOKEN_LABEL, TrustLayout
    from appliance.trust.root import provision
    from hsm.softhsm import SOFTHSM2_MODULE, create_softhsm_token

    if not TrustLayout(state).trust_json.exists():
        # SoftHSM2 is this image's PKCS#11 module: its token lives where the system
        # configuration (/etc/softhsm/softhsm2.conf) looks, so the trust root finds it as it
        # would a vendor HSM's through its module. A token left by an unfinished earlier run
        # holds no appliance key and its PIN is lost: replace it.
        subprocess.run(
            ["softhsm2-util", "--delete-token", "--token", TOKEN_LABEL],
            capture_output=True, check=False,
        )
        user_pin = secrets.token_hex(16)
        # Nobody needs the SO PIN later: re-provisioning makes a new token.
        create_softhsm_token(state / SOFTHSM_SUBDIR, TOKEN_LABEL, secrets.token_hex(16), user_pin)
    else:
        user_pin = None
    result = provision(
        str(state), dev=False, module=SOFTHSM2_MODULE, token_label=TOKEN_LABEL,
        pin=user_pin, tcti=f"device:{tpm}",
    )
    golden = state / "golden-pcrs.json"
    if not golden.is_file():
        raise FirstbootError(f"trust-root provisioning wrote no {golden}")
    return {"tpm": tpm, **{k: v for k, v in result.items() if isinstance(v, str | int | bool)}}


def set_hostname(name: str) -> None:
    Path("/etc/hostname").write_text(name + "\n")
    subprocess.run(["hostname", name], check=False)


def record_in_ledger(state: Path, timeout: float = 120) -> dict[str, Any]:
    from appliance.client import DaemonClient, DaemonError

    record = json.loads((state / RECORD_NAME).read_text())
    if record.get("audit"):
        return record["audit"]
    details = {
        "profile": record.get("profile"),
        "admin_source": record["steps"].get("admin-source"),
        "trust_root": record["steps"].get("trust-root"),
        "started": record.get("started"),
        "finished": record.get("finished"),
    }
    deadline = time.monotonic() + timeout
    while True:
        try:
            entry = DaemonClient(state).post(
                "/v1/audit/record",
                # the daemon names the actor: this script's Unix user (root, from systemd)
                {"action": "firstboot.complete", "object": "node", "details": details},
            )
            break
        except (OSError, DaemonError) as e:
            # The daemon opens its socket shortly after it starts.
            if time.monotonic() > deadline:
                raise FirstbootError(f"the daemon did not take the audit record: {e}") from None
            time.sleep(1)
    record["audit"] = {k: entry.get(k) for k in ("seq", "hash", "time") if k in entry}
    write_record(state, record)
    return record["audit"]


def write_record(state: Path, record: dict[str, Any]) -> None:
    tmp = state / (RECORD_NAME + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, state / RECORD_NAME)


def first_boot(state: Path, root: str, console: str) -> int:
    if (state / RECORD_NAME).exists():
        log(f"already done ({state / RECORD_NAME}); nothing to do")
        return 0

    record: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    steps: dict[str, Any] = {}
    record["steps"] = steps

    def step(name: str, action: Callable[[], Any], keep: bool = True) -> Any:
        log(f"step {name}")
        try:
            result = action()
        except FirstbootError as e:
            raise FirstbootError(f"step '{name}' failed: {e}") from None
        except Exception as e:  # a library error must still name the step on the console
            raise FirstbootError(f"step '{name}' failed: {type(e).__name__}: {e}") from None
        # keep=False: the result holds a secret; the record names the step only.
        steps[name] = result if keep and result is not None else "ok"
        return result

    try:
        profile = step("profile", lambda: detect_profile(root))
        device = step("provisioning-device", find_provisioning_device)
        if device:
            provisioning = step("provisioning-file", lambda: read_provisioning(device), False)
            steps["admin-source"] = f"provisioning file on {device}"
            password = provisioning["admin_password"]
            if provisioning["hostname"]:
                step("hostname", lambda: set_hostname(provisioning["hostname"]))
        else:
            password = setup_code()
            show_on_console(password, console)
            steps["admin-source"] = "one-time setup code on the console"
        step("init", lambda: init_state(state, password))
        tpm = tpm_device(root)
        step("trust-root", lambda: provision_trust(state, tpm))
        record["profile"] = profile.get("profile")
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_record(state, record)
    except FirstbootError as e:
        log(str(e))
        return 1
    log(f"done: profile={record['profile']}; the audit record follows when the daemon is up")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="first boot of the PEC appliance")
    parser.add_argument("action", nargs="?", choices=("provision", "record"),
                        default="provision")
    parser.add_argument("--state-dir", type=Path, default=STATE)
    parser.add_argument("--root", default="/")
    parser.add_argument("--console", default="/dev/console")
    args = parser.parse_args(argv)
    if args.action == "provision":
        return first_boot(args.state_dir, args.root, args.console)
    if not (args.state_dir / RECORD_NAME).exists():
        log("no first-boot record yet; nothing to put in the audit ledger")
        return 0
    try:
        entry = record_in_ledger(args.state_dir)
    except (FirstbootError, OSError, KeyError, json.JSONDecodeError) as e:
        log(f"step 'audit' failed: {e}")
        return 1
    log(f"first boot recorded in the audit ledger: {entry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
