"""Starts the real node daemon and the real panel as separate processes for the panel tests."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.appliance.daemon_proc import ADMIN_PASSWORD

DAEMON_START_S = 90.0
PANEL_START_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli", *args]


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """Read the process's stdout until a line starts with ``prefix``; fail with what it said."""
    assert proc.stdout is not None
    seen: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.5):
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line.rstrip())
            if line.startswith(prefix):
                return line.strip()
    finally:
        selector.close()
    proc.kill()
    raise RuntimeError(
        f"{prefix!r} not seen (exit code {proc.poll()}); output:\n" + "\n".join(seen[-30:])
    )


def _drain(proc: subprocess.Popen[str]) -> None:
    """Keep reading stdout after the ready line so a chatty process never blocks on the pipe."""
    assert proc.stdout is not None
    threading.Thread(target=proc.stdout.read, daemon=True).start()


def stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class PanelStack:
    """A daemon on ``state_dir`` and, once started, a panel on ``url``."""

    base: Path
    admin_password: str = ADMIN_PASSWORD
    daemon: subprocess.Popen[str] | None = None
    panel: subprocess.Popen[str] | None = None
    url: str = ""
    logs: list[Path] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    def start_daemon(self, before_serve: Callable[[Path], None] | None = None) -> None:
        """Initialise the state directory, call ``before_serve`` on it, start the daemon."""
        password_file = self.base / "admin-password"
        password_file.write_text(self.admin_password + "\n")
        password_file.chmod(0o600)
        init = subprocess.run(
            _cli("init", "--state-dir", str(self.state_dir),
                 "--admin-password-file", str(password_file)),
            capture_output=True, text=True, timeout=DAEMON_START_S, check=False,
        )
        if init.returncode != 0:
            raise RuntimeError(f"pec-appliance init failed: {init.stderr.strip()}")
        if before_serve is not None:
            before_serve(self.state_dir)
        self.daemon = self._spawn("daemon", _cli("serve", "--state-dir", str(self.state_dir)))
        _wait_for_line(self.daemon, "pec-noded ready", DAEMON_START_S)
        _drain(self.daemon)

    def start_panel(self, host: str = "127.0.0.1") -> None:
        port = free_port()
        self.panel = self._spawn(
            "panel",
            _cli("panel", "--state-dir", str(self.state_dir), "--listen", f"{host}:{port}"),
        )
        ready = _wait_for_line(self.panel, "pec-panel ready", PANEL_START_S)
        _drain(self.panel)
        self.url = ready.split()[2].rstrip("/")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[str]:
        log = self.base / f"{name}.stderr.log"
        self.logs.append(log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("w") as stderr:
            return subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        stop(self.panel)
        stop(self.daemon)
