"""Start the real daemon process on a temporary state directory, for the daemon and CLI tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.client import DaemonClient
from appliance.provision import init_state_dir
from appliance.state.statedir import StateDir
from appliance.trust.layout import SEALED_PIN_PCRS, TrustLayout
from tee import Swtpm, Tpm

REPO = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "correct horse battery staple"


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m appliance.cli ARGS`` from the repository, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class Daemon:
    def __init__(self, state_dir: Path, root: Path, env: dict | None = None) -> None:
        self.state_dir, self.root, self.env = state_dir, root, env or {}
        self.proc: subprocess.Popen | None = None
        self.ready_line = ""
        self.stderr_lines: list[str] = []
        self.client = DaemonClient(state_dir, timeout=30)

    def init(self) -> None:
        init_state_dir(StateDir(self.state_dir), root=str(self.root), admin_password=ADMIN_PASSWORD)

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", "--state-dir", str(self.state_dir)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **self.env},
        )
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or not got[0].startswith("pec-noded ready:"):
            self.stop_now()
            raise AssertionError(
                f"daemon not ready: stdout {got!r}, stderr {self.stderr_lines[-10:]!r}"
            )
        self.ready_line = got[0].strip()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.stderr_lines.append(line.rstrip())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop_now(self) -> None:
        """Stop the daemon (SIGTERM, SIGKILL if it hangs) and end an swtpm a kill left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        pid = swtpm_pid(self.state_dir)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash or the OOM killer would."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait_job(self, job_id: int, states: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}")
            if job["state"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} is still {job['state']} after {timeout} s")

    def wait_progress(self, job_id: int, at_least: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while (job := self.client.get(f"/v1/jobs/{job_id}"))["progress"] < at_least:
            assert time.monotonic() < deadline, f"job {job_id} never reached {at_least}: {job}"
            time.sleep(0.2)
        return job


def swtpm_pid(state_dir: Path) -> int | None:
    """The pid of a running swtpm serving ``state_dir``'s development TPM, or None."""
    tpm_dir = Path(state_dir).absolute() / "tpm"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"swtpm" and f"dir={tpm_dir}".encode() in argv:
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != "Z":
                return int(proc.name)
    return None


def seal_pin_to_another_boot_chain(state_dir: Path) -> bytes:
    """Re-seal the HSM PIN as if provisioning had measured another boot chain (PCR 14), so
    that the daemon starts with its keys locked; returns the original sealed blob."""
    layout = TrustLayout(state_dir)
    original = layout.pin_sealed.read_bytes()
    with Swtpm(layout.tpm_dir) as sim, Tpm(sim.tcti) as tpm:
        pin = tpm.unseal(original)
        tpm.extend(14, b"another bootloader")
        layout.pin_sealed.write_bytes(tpm.seal(pin, SEALED_PIN_PCRS))
    return original
