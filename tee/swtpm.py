"""Run a real swtpm TPM 2.0 simulator on a free loopback port (development and tests)."""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tee.errors import TpmUnavailable

# Simulators still running when the interpreter exits (an owner that raised before stop()).
_running: weakref.WeakSet[Swtpm] = weakref.WeakSet()

_PR_SET_PDEATHSIG = 1
# Resolved before any fork: the child between fork and exec should only make system calls.
_prctl = ctypes.CDLL(None, use_errno=True).prctl

# The kernel sends the parent-death signal when the *thread* that forked the child ends, not
# the process. Forking from one thread that lives as long as the process keeps swtpm alive when
# a short-lived thread (an HTTP request, a job) starts it.
_spawner: ThreadPoolExecutor | None = None


def _after_fork_in_child() -> None:
    # A forked child has no spawner thread, and its exit must not stop its parent's simulators.
    global _spawner
    _spawner = None
    _running.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _spawn(argv: list[str], **popen_args: object) -> subprocess.Popen[bytes]:
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swtpm-spawner")
    owner = os.getpid()

    def in_child() -> None:
        # A daemon blocks SIGTERM in its threads and the mask survives exec: swtpm would then
        # ignore the SIGTERM that stops it.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        # Die with the owner, even when it is SIGKILLed and cannot stop us itself.
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != owner:  # the owner died before the line above took effect
            os._exit(1)

    return _spawner.submit(subprocess.Popen, argv, preexec_fn=in_child, **popen_args).result()


@atexit.register
def _stop_all() -> None:
    for sim in list(_running):
        sim.stop()


class Swtpm:
    """A swtpm process keeping its state in `state_dir`; use as a context manager or call stop().

    It takes SIGTERM whatever signal mask its owner has, and it ends when its owner process
    ends, however that ends (SIGKILL included).
    """

    def __init__(self, state_dir: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host={self.host},port={self.port}"

    def start(self, timeout: float = 10.0) -> Swtpm:
        binary = shutil.which("swtpm")
        if binary is None:
            raise TpmUnavailable("swtpm not found: install the Debian packages swtpm swtpm-tools")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._stop_stale()
        last_error = ""
        # The port pair is chosen before swtpm binds it, so another process may win the race;
        # then try a fresh pair.
        for _ in range(5):
            self.port = _free_port_pair(self.host)
            log = self.state_dir / "swtpm.log"
            self._proc = _spawn(
                [
                    binary, "socket", "--tpm2",
                    "--server", f"type=tcp,port={self.port},bindaddr={self.host}",
                    "--ctrl", f"type=tcp,port={self.port + 1},bindaddr={self.host}",
                    "--tpmstate", f"dir={self.state_dir}",
                    "--flags", "not-need-init,startup-clear",
                    "--log", f"file={log},level=1",
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    last_error = (self._proc.stderr.read() if self._proc.stderr else b"").decode(
                        errors="replace").strip()
                    break
                if _answers(self.host, self.port) and _answers(self.host, self.port + 1):
                    self._pid_file.write_text(f"{self._proc.pid}\n")
                    _running.add(self)
                    return self
                time.sleep(0.02)
            else:
                self.stop()
                raise TpmUnavailable(f"swtpm did not answer on {self.host}:{self.port}")
        raise TpmUnavailable(f"swtpm failed to start: {last_error or 'unknown error'}")

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "swtpm.pid"

    def _stop_stale(self) -> None:
        """End an swtpm that a crashed owner left running on this state directory.

        It would hold the directory's lock and make every later start fail.
        """
        try:
            pid = int(self._pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if cmdline and os.path.basename(cmdline[0]) == b"swtpm" and (
            f"dir={self.state_dir}".encode() in cmdline
        ):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        self._pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _running.discard(self)
        if proc is None:
            return
        self._pid_file.unlink(missing_ok=True)
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Swtpm:
        return self if self.running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Ask a child to stop (SIGTERM), and kill it if it has not exited after ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port_pair(host: str) -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
                return port
    raise TpmUnavailable("no free pair of loopback ports for swtpm")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
