"""swtpm's lifetime follows its owner: real swtpm processes, real signals."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from tee import Swtpm, Tpm

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie waiting to be reaped counts as ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for pid {pid}")


def test_swtpm_takes_sigterm_although_its_owner_blocks_it(tmp_path):
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        sim = Swtpm(tmp_path / "tpm").start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        pid = sim._proc.pid
        assert _blocked_signals(pid) == 0, "swtpm inherited its owner's signal mask"
        began = time.monotonic()
        sim.stop()
        # stop() waits 10 s for SIGTERM before it resorts to SIGKILL
        assert time.monotonic() - began < 5, "swtpm ignored SIGTERM"
        assert not _alive(pid)
    finally:
        sim.stop()


def test_swtpm_outlives_the_thread_that_started_it(tmp_path):
    # The parent-death signal fires when the forking thread ends: a swtpm started from a
    # short-lived thread (an API request, a job) must not die with that thread.
    started: list[Swtpm] = []
    worker = threading.Thread(target=lambda: started.append(Swtpm(tmp_path / "tpm").start()))
    worker.start()
    worker.join(30)
    assert started, "swtpm did not start in the thread"
    with started[0] as sim:
        time.sleep(0.5)
        assert sim.running
        with Tpm(sim.tcti) as tpm:
            assert tpm.pcrs([0])


def test_swtpm_dies_with_an_owner_killed_by_sigkill(tmp_path):
    owner_code = textwrap.dedent(f"""
        import signal, sys, time
        from tee import Swtpm
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM, signal.SIGINT}})
        sim = Swtpm({str(tmp_path / "tpm")!r}).start()
        print(sim._proc.pid, flush=True)
        time.sleep(120)
    """)
    owner = subprocess.Popen([sys.executable, "-c", owner_code], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    pid = None
    try:
        line = owner.stdout.readline()
        assert line.strip().isdigit(), f"owner did not report swtpm's pid: {line!r}"
        pid = int(line)
        assert _alive(pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert _wait_gone(pid, 10), "swtpm outlived its SIGKILLed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
    # The state directory is free again for the next owner.
    with Swtpm(tmp_path / "tpm") as sim, Tpm(sim.tcti) as tpm:
        assert tpm.pcrs([0])
    assert not os.path.exists(tmp_path / "tpm" / "swtpm.pid")
