"""Boot the appliance image in QEMU and check it from the host, step by step.

    .venv/bin/python images/boot_test.py [--image build/image/pec-appliance.img]

The virtual machine: q35, UEFI (OVMF), a TPM 2.0 backed by an swtpm this script starts, a
sparse copy of the image (the built image is never written), a second disk labelled PECPROV
with a provisioning file, the serial console to a file, the panel's HTTPS port forwarded to a
free loopback port, and the appliance's diagnostics port (virtio-serial) on a Unix socket.
After the daemon's ready line shows on the console, each check runs as a named step; then the
guest is powered off and booted again from the same disk and TPM, without the provisioning
disk, and checked once more. The first failure ends the run with the console log, the units'
state and the appliance's journals printed. With --setup-code there is no provisioning disk:
the admin logs in with the one-time setup code that the first boot prints on the console.
"""

from __future__ import annotations

import argparse
import contextlib
import html.parser
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tee.swtpm import stop_process

REPO = Path(__file__).resolve().parent.parent
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
READY_MARK = "pec-noded ready:"
SETUP_CODE_MARK = "One-time setup code (admin password):"
PROFILES = {"mini", "standard", "jumbo", "unclassified"}
GUEST_PANEL_PORT = 443
ADMIN_USER = "admin"


class StepFailed(RuntimeError):
    """A boot-test step failed; the message says what was expected and what came instead."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise StepFailed(f"'{tool}' not found: install the Debian package {package}")
    return path


class Machine:
    """The virtual appliance and the swtpm behind its TPM, stopped when the block ends."""

    def __init__(self, image: Path, work: Path, accel: str, memory_mib: int, cpus: int):
        self.image, self.work, self.accel = image, work, accel
        self.memory_mib, self.cpus = memory_mib, cpus
        self.console = work / "console.log"
        self.diag_socket = work / "diag.sock"
        self.monitor_socket = work / "monitor.sock"
        # A private copy of the image, so that a second boot sees what the first one wrote
        # and the built image is never touched.
        self.disk = work / "disk.img"
        self.panel_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def provisioning_disk(self, password: str) -> Path:
        disk = self.work / "provision.img"
        disk.unlink(missing_ok=True)
        subprocess.run(
            ["mkfs.vfat", "-n", "PECPROV", "-C", str(disk), "8192"],
            check=True, capture_output=True,
        )
        data = self.work / "pec-provision.json"
        data.write_text(json.dumps({"admin_password": password, "hostname": "pec-boot-test"}))
        subprocess.run(
            ["mcopy", "-i", str(disk), str(data), "::/pec-provision.json"],
            check=True, capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        )
        data.unlink()
        return disk

    def start(self, password: str | None, first: bool = True) -> None:
        qemu = need("qemu-system-x86_64", "qemu-system-x86")
        swtpm = need("swtpm", "swtpm")
        need("mkfs.vfat", "dosfstools")
        need("mcopy", "mtools")
        for f in (OVMF_CODE, OVMF_VARS):
            if not f.is_file():
                raise StepFailed(f"{f} not found: install the Debian package ovmf")
        vars_copy = self.work / "OVMF_VARS.fd"
        tpm_dir = self.work / "tpm"
        if first:
            # A new box: blank firmware variables, a TPM never used, the image as written.
            shutil.copyfile(OVMF_VARS, vars_copy)
            shutil.rmtree(tpm_dir, ignore_errors=True)
            tpm_dir.mkdir()
            subprocess.run(["cp", "--sparse=always", str(self.image), str(self.disk)],
                           check=True)
        tpm_sock = self.work / "swtpm.sock"
        for sock in (tpm_sock, self.diag_socket, self.monitor_socket):
            sock.unlink(missing_ok=True)
        self.console.write_text("")
        self.swtpm = subprocess.Popen(
            [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
             "--ctrl", f"type=unixio,path={tpm_sock}",
             "--log", f"file={self.work / 'swtpm.log'},level=2", "--terminate"],
        )
        self.procs.append(self.swtpm)
        deadline = time.monotonic() + 10
        while not tpm_sock.exists():
            if time.monotonic() > deadline or self.swtpm.poll() is not None:
                raise StepFailed(f"swtpm did not open {tpm_sock}; see {self.work / 'swtpm.log'}")
            time.sleep(0.05)
        if self.accel == "kvm":
            accel_args = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel_args = ["-accel", "tcg,thread=multi", "-cpu", "max"]
        provisioning = []
        if password is not None:
            disk = self.provisioning_disk(password)
            provisioning = ["-drive", f"if=virtio,format=raw,file={disk},readonly=on"]
        cmd = [
            qemu, "-machine", "q35", *accel_args,
            "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"if=virtio,format=raw,file={self.disk}",
            *provisioning,
            "-chardev", f"socket,id=chrtpm,path={tpm_sock}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.panel_port}-:"
                       f"{GUEST_PANEL_PORT}",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=diag,path={self.diag_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=diag,name=org.pec.diag.0",
            "-serial", f"file:{self.console}",
            "-monitor", f"unix:{self.monitor_socket},server=on,wait=off",
            "-display", "none", "-no-reboot",
        ]
        (self.work / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        with (self.work / "qemu.log").open("wb") as log:
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))

    @property
    def qemu(self) -> subprocess.Popen[bytes]:
        return self.procs[-1]

    def power_down(self, timeout: float) -> None:
        """Press the power button (ACPI) and wait until the guest has shut down cleanly."""
        with socket.socket(socket.AF_UNIX) as mon:
            mon.settimeout(10)
            mon.connect(str(self.monitor_socket))
            mon.sendall(b"system_powerdown\n")
            try:
                self.qemu.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise StepFailed(f"the guest did not power off within {timeout:.0f} s") from None
        self.swtpm.wait(timeout=10)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_console(self, mark: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.console_text()
            for line in text.splitlines():
                if mark in line:
                    return line.strip()
            qemu_log = (self.work / "qemu.log").read_text(errors="replace")
            if "KVM internal error" in qemu_log:
                # QEMU pauses the guest instead of exiting: without this check we would wait
                # the whole timeout. Seen with nested virtualisation.
                raise StepFailed(
                    f"KVM failed to run the guest: {qemu_log.strip()[:300]} ... "
                    "run with PEC_QEMU_ACCEL=tcg (software emulation, the default)"
                )
            if self.qemu.poll() is not None:
                qemu_log = (self.work / "qemu.log").read_text(errors="replace").strip()
                raise StepFailed(
                    f"QEMU exited ({self.qemu.returncode}) before '{mark}': {qemu_log[-2000:]}"
                )
            time.sleep(1)
        raise StepFailed(f"no '{mark}' on the console within {timeout:.0f} s")


class DiagPort:
    """Client of the appliance's diagnostics port: one request line, one JSON answer line."""

    def __init__(self, path: Path, timeout: float = 150):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buffer = b""

    def ask(self, request: str) -> dict[str, Any]:
        self.sock.sendall(request.encode() + b"\n")
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise StepFailed(f"diagnostics port gave no answer to '{request}'") from None
            if not chunk:
                raise StepFailed("diagnostics port closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def output(self, request: str) -> str:
        reply = self.ask(request)
        if not reply.get("ok"):
            raise StepFailed(
                f"in the appliance, '{request}' failed (rc={reply.get('rc')}): "
                f"{(reply.get('stderr') or reply.get('stdout') or '').strip()[-1500:]}"
            )
        return reply["stdout"]

    def json(self, request: str) -> Any:
        out = self.output(request)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise StepFailed(f"'{request}' printed no JSON: {out[:300]!r}") from None

    def close(self) -> None:
        self.sock.close()


class FormParser(html.parser.HTMLParser):
    """The first form's action and input fields, enough to log in as a person would."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: list[dict[str, str]] = []
        self.in_form = False
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.done:
            self.in_form, self.action = True, a.get("action", "")
        elif tag == "input" and self.in_form:
            self.inputs.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self.in_form:
            self.in_form, self.done = False, True


class Panel:
    """HTTPS client of the forwarded panel port (self-signed certificate, cookies kept)."""

    def __init__(self, port: int):
        self.port = port
        self.context = ssl.create_default_context()
        # The appliance makes its own certificate at first start; nothing to pin it to here.
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=60,
                                           context=self.context)
        headers = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = f"https://127.0.0.1:{self.port}"
            headers["Referer"] = f"https://127.0.0.1:{self.port}{path}"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key.strip()] = rest.split(";", 1)[0]
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text

    def get_following(self, path: str, hops: int = 5) -> tuple[int, str, str]:
        for _ in range(hops):
            status, headers, text = self.request("GET", path)
            if status in (301, 302, 303, 307, 308) and "location" in headers:
                path = urllib.parse.urlsplit(headers["location"]).path or "/"
                continue
            return status, path, text
        raise StepFailed(f"more than {hops} redirects from the panel")


# ------------------------------------------------------------------------------ the steps
def check_daemon(diag: DiagPort, ctx: dict[str, Any]) -> str:
    status = diag.json("status")
    if not isinstance(status, dict):
        raise StepFailed(f"status is not a JSON object: {status!r}")
    ctx["status"] = status
    return f"node {status.get('node_id')} version {status.get('version')}"


def check_trust_health(diag: DiagPort, ctx: dict[str, Any]) -> str:
    status = diag.json("status")
    health = status.get("health", {})
    bad = {k: health.get(k) for k in ("hsm", "tpm") if (health.get(k) or {}).get("ok") is not True}
    if bad:
        raise StepFailed(f"trust root not healthy: {bad}")
    return f"HSM: {health['hsm'].get('detail')}; TPM: {health['tpm'].get('detail')}"


def check_firstboot_once(diag: DiagPort, ctx: dict[str, Any]) -> str:
    record = diag.json("firstboot")
    before = ctx["firstboot_record"]
    if record.get("started") != before.get("started") or record.get("audit") != before.get(
            "audit"):
        raise StepFailed(f"first-boot record changed on the second boot: {record}")
    return f"first boot of {before.get('started')} kept, not run again"


def check_profile(diag: DiagPort, ctx: dict[str, Any]) -> str:
    profile = ctx["status"].get("profile")
    if profile not in PROFILES:
        raise StepFailed(f"status reports profile {profile!r}, expected one of {sorted(PROFILES)}")
    ready = ctx["ready_line"]
    if f"profile={profile}" not in ready:
        raise StepFailed(f"ready line '{ready}' disagrees with status profile {profile!r}")
    return f"profile {profile}, capabilities {ctx['status'].get('capabilities')}"


def check_firstboot(diag: DiagPort, ctx: dict[str, Any]) -> str:
    record = diag.json("firstboot")
    source = record.get("steps", {}).get("admin-source", "")
    if ctx["admin_source"] not in source:
        raise StepFailed(f"admin account came from {source!r}, expected {ctx['admin_source']!r}")
    if ctx["admin_source"] == "setup code":
        journal = diag.output("journal pec-firstboot.service")
        if ctx["password"] in journal or ctx["password"] in json.dumps(record):
            raise StepFailed("the one-time setup code is in the journal or the first-boot record")
    trust = record.get("steps", {}).get("trust-root")
    if not isinstance(trust, dict) or "skipped" in trust:
        raise StepFailed(f"first boot did not provision the trust root with the TPM: {trust!r}")
    return f"first boot: {', '.join(record.get('steps', {}))}"


def verify_bundle(bundle: Path, policy: Path, nonce: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "verify-attestation", str(bundle),
         "--policy", str(policy), "--nonce", nonce],
        cwd=REPO, capture_output=True, text=True, check=False,
    )


def check_attestation(diag: DiagPort, ctx: dict[str, Any]) -> str:
    nonce = secrets.token_hex(16)
    bundle_text = diag.output(f"attest {nonce}")
    golden = diag.json("golden")
    if ctx.setdefault("golden", golden) != golden:
        raise StepFailed("the golden PCR file changed since the first boot")
    if nonce not in bundle_text:
        raise StepFailed("the attestation bundle does not carry the host's nonce")
    work: Path = ctx["work"]
    bundle, policy = work / "bundle.json", work / "golden-pcrs.json"
    bundle.write_text(bundle_text)
    policy.write_text(json.dumps(golden))
    good = verify_bundle(bundle, policy, nonce)
    if good.returncode != 0:
        raise StepFailed(
            f"verify-attestation rejected the bundle (rc={good.returncode}): "
            f"{(good.stderr or good.stdout).strip()[-1000:]}"
        )
    # The same bundle against a golden set with one PCR changed must be refused, or the
    # verification above proved nothing.
    tampered = json.loads(json.dumps(golden))
    pcrs = tampered.get("pcrs", tampered) if isinstance(tampered, dict) else None
    index = next((k for k, v in (pcrs or {}).items() if isinstance(v, str) and v), None)
    if index is None:
        raise StepFailed(f"golden PCR file has no PCR values: {str(golden)[:300]}")
    pcrs[index] = ("0" if pcrs[index][0] != "0" else "1") + pcrs[index][1:]
    bad_policy = work / "golden-tampered.json"
    bad_policy.write_text(json.dumps(tampered))
    bad = verify_bundle(bundle, bad_policy, nonce)
    if bad.returncode == 0:
        raise StepFailed(f"verify-attestation accepted a golden set with PCR {index} changed")
    stale = verify_bundle(bundle, policy, secrets.token_hex(16))
    if stale.returncode == 0:
        raise StepFailed("verify-attestation accepted the bundle for another nonce")
    return (f"bundle verifies against {len(pcrs)} golden PCRs and the nonce; refused with "
            f"PCR {index} changed or another nonce")


def check_panel(diag: DiagPort, ctx: dict[str, Any]) -> str:
    panel = Panel(ctx["panel_port"])
    deadline = time.monotonic() + 120
    while True:
        try:
            status, path, text = panel.get_following("/")
            break
        except (OSError, http.client.HTTPException) as e:
            if time.monotonic() > deadline:
                raise StepFailed(f"panel on the forwarded port does not answer: {e}") from None
            time.sleep(2)
    form = FormParser()
    form.feed(text)
    if status != 200 or not any(i.get("type") == "password" for i in form.inputs):
        raise StepFailed(f"GET / ended at {path} with {status} and no password field")
    ctx["panel"], ctx["login_path"], ctx["login_form"] = panel, path, form
    return f"login page at {path} (HTTP {status}, TLS)"


def check_login(diag: DiagPort, ctx: dict[str, Any]) -> str:
    panel: Panel = ctx["panel"]
    form: FormParser = ctx["login_form"]
    fields: dict[str, str] = {}
    for field in form.inputs:
        name, kind = field.get("name"), field.get("type", "text")
        if not name:
            continue
        if kind == "password":
            fields[name] = ctx["password"]
        elif kind in ("text", "email") or "user" in name:
            fields[name] = ADMIN_USER
        elif kind == "hidden":
            fields[name] = field.get("value", "")
    action = urllib.parse.urljoin(ctx["login_path"], form.action or ctx["login_path"])
    status, headers, _ = panel.request("POST", urllib.parse.urlsplit(action).path, fields)
    if status not in (302, 303):
        raise StepFailed(f"login as {ADMIN_USER} with the {ctx['admin_source']} gave {status}")
    target = urllib.parse.urlsplit(headers.get("location", "")).path or "/"
    page_status, page_path, _ = panel.get_following(target)
    if page_status != 200 or page_path == ctx["login_path"]:
        raise StepFailed(f"after login the panel sent us to {page_path} ({page_status})")
    return f"logged in as {ADMIN_USER}, landed on {page_path}"


def check_ledger(diag: DiagPort, ctx: dict[str, Any]) -> str:
    # The daemon's ExecStartPost writes the first boot into the ledger right after it is ready.
    deadline = time.monotonic() + 120
    while not (entry := diag.json("firstboot").get("audit")):
        if time.monotonic() > deadline:
            raise StepFailed("the first boot is not in the audit ledger 120 s after ready")
        time.sleep(3)
    verdict = diag.json("audit-verify")
    if not verdict.get("ok"):
        raise StepFailed(f"audit ledger does not verify: {verdict}")
    ctx["firstboot_record"] = diag.json("firstboot")
    return f"first boot is ledger record {entry.get('seq')}; the ledger verifies"


def check_manifest(diag: DiagPort, ctx: dict[str, Any]) -> str:
    inside = diag.json("manifest")
    outside = json.loads((ctx["image"].parent / "manifest.json").read_text())
    for key in ("build_time", "wheel", "git_commit"):
        if inside.get(key) != outside.get(key):
            raise StepFailed(f"manifest {key!r} in the image {inside.get(key)!r} differs from "
                             f"the build's {outside.get(key)!r}")
    if len(inside.get("debian_packages", {})) < 100 or "pec-appliance" not in inside["python"]:
        raise StepFailed("the image's manifest lacks its package lists")
    return (f"built {inside['build_time']}, wheel sha256 {inside['wheel']['sha256'][:16]}..., "
            f"{len(inside['debian_packages'])} Debian packages")


Step = Callable[[DiagPort, dict[str, Any]], str]

STEPS: list[tuple[str, Step]] = [
    ("daemon answers", check_daemon),
    ("profile reported", check_profile),
    ("trust root healthy (HSM unlocked by the TPM)", check_trust_health),
    ("first boot provisioned", check_firstboot),
    ("image manifest matches the build", check_manifest),
    ("attestation verifies against golden PCRs", check_attestation),
    ("panel login page loads", check_panel),
    ("admin logs in with the provisioned password or setup code", check_login),
    ("first boot in the audit ledger, ledger verifies", check_ledger),
]

# After a clean power-off and a second boot of the same disk and TPM.
REBOOT_STEPS: list[tuple[str, Step]] = [
    ("second boot: first boot does not run again", check_firstboot_once),
    ("second boot: trust root unlocks with the same PCRs", check_trust_health),
    ("second boot: attestation verifies against the first boot's golden PCRs",
     check_attestation),
]


def dump_evidence(machine: Machine, diag: DiagPort | None) -> None:
    print("\n---------------- console log " + "-" * 40, file=sys.stderr)
    print(machine.console_text()[-60000:], file=sys.stderr)
    if diag is None:
        return
    for request in ("units", "journal pec-firstboot.service", "journal pec-noded.service",
                    "journal pec-panel.service"):
        with contextlib.suppress(Exception):
            reply = diag.ask(request)
            print(f"\n---------------- {request} " + "-" * 40, file=sys.stderr)
            print((reply.get("stdout") or "") + (reply.get("stderr") or ""), file=sys.stderr)


@contextlib.contextmanager
def running(machine: Machine, password: str | None) -> Iterator[Machine]:
    try:
        machine.start(password)
        yield machine
    finally:
        machine.stop()


FAILURES = (StepFailed, OSError, subprocess.CalledProcessError, json.JSONDecodeError)


def pick_accel(choice: str) -> str:
    if choice != "auto":
        return choice
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=REPO / "build/image/pec-appliance.img")
    parser.add_argument("--work", type=Path, default=REPO / "build/image-test")
    parser.add_argument("--accel", choices=("tcg", "kvm", "auto"),
                        default=os.environ.get("PEC_QEMU_ACCEL", "tcg"),
                        help="tcg: software emulation (default); kvm; auto: kvm if /dev/kvm")
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds to wait for the daemon's ready line")
    parser.add_argument("--memory", type=int, default=3072, help="guest memory in MiB")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--setup-code", action="store_true",
                        help="boot without a provisioning disk: the admin logs in with the "
                             "one-time setup code read off the console")
    args = parser.parse_args(argv)

    # A terminated test (CI timeout, Ctrl-C) still stops QEMU and swtpm on its way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.image.is_file():
        print(f"boot-test: no image at {args.image}: run 'make image' first", file=sys.stderr)
        print("image-test: 0 passed, 1 failed")
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    accel = pick_accel(args.accel)
    password = None if args.setup_code else secrets.token_urlsafe(18)
    machine = Machine(args.image.resolve(), args.work.resolve(), accel, args.memory, args.cpus)
    ctx: dict[str, Any] = {
        "work": machine.work, "image": args.image.resolve(), "password": password,
        "panel_port": machine.panel_port,
        "admin_source": "setup code" if args.setup_code else "provisioning file",
    }
    diag: DiagPort | None = None
    started = time.monotonic()
    current = "start the virtual machine"
    results: list[tuple[str, str, float]] = []

    def run_steps(steps: list[tuple[str, Step]], diag: DiagPort) -> None:
        nonlocal current
        for name, check in steps:
            current = name
            t0 = time.monotonic()
            detail = check(diag, ctx)
            results.append((name, detail, time.monotonic() - t0))
            print(f"PASS  {name} ({time.monotonic() - t0:.1f} s): {detail}", flush=True)

    try:
        with running(machine, password):
            try:
                print(f"boot-test: {args.image} under QEMU ({accel}), console {machine.console}")
                current = "daemon ready line on the console"
                ctx["ready_line"] = machine.wait_for_console(READY_MARK, args.timeout)
                boot_s = time.monotonic() - started
                results.append((current, ctx["ready_line"], boot_s))
                print(f"PASS  {current} ({boot_s:.0f} s): {ctx['ready_line']}", flush=True)
                if password is None:
                    current = "one-time setup code on the console"
                    t0 = time.monotonic()
                    line = machine.wait_for_console(SETUP_CODE_MARK, 5)
                    ctx["password"] = line.split(SETUP_CODE_MARK, 1)[1].strip()
                    results.append((current, "", time.monotonic() - t0))
                    print(f"PASS  {current}: {ctx['password'][:4]}-...", flush=True)
                current = "connect to the diagnostics port"
                diag = DiagPort(machine.diag_socket)
                run_steps(STEPS, diag)
                current = "clean power-off"
                diag.close()
                diag = None
                t0 = time.monotonic()
                machine.power_down(args.timeout)
                results.append((current, "", time.monotonic() - t0))
                print(f"PASS  {current} ({time.monotonic() - t0:.0f} s)", flush=True)
                # Second boot without the provisioning disk: nothing may depend on it now.
                current = "second boot: daemon ready line on the console"
                t0 = time.monotonic()
                machine.console = machine.work / "console-2.log"
                machine.start(None, first=False)
                line = machine.wait_for_console(READY_MARK, args.timeout)
                results.append((current, line, time.monotonic() - t0))
                print(f"PASS  {current} ({time.monotonic() - t0:.0f} s): {line}", flush=True)
                current = "connect to the diagnostics port"
                diag = DiagPort(machine.diag_socket)
                run_steps(REBOOT_STEPS, diag)
            except FAILURES as e:
                # Evidence while the machine still runs: its diagnostics port answers.
                print(f"FAIL  {current}: {e}", file=sys.stderr, flush=True)
                dump_evidence(machine, diag)
                raise
            finally:
                if diag is not None:
                    diag.close()
    except FAILURES as e:
        if current == "start the virtual machine":
            print(f"FAIL  {current}: {e}", file=sys.stderr)
        print(f"boot-test: FAILED at step '{current}' (work dir {machine.work})", file=sys.stderr)
        sys.stderr.flush()
        print(f"image-test: {len(results)} passed, 1 failed", flush=True)
        print(f"boot-test: {time.monotonic() - started:.0f} s, accel {accel}")
        return 1
    total = time.monotonic() - started
    print(f"image-test: {len(results)} passed, 0 failed", flush=True)
    print(f"boot-test: {total:.0f} s (ready after {results[0][2]:.0f} s, accel {accel})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
