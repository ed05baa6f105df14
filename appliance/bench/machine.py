"""What every benchmark prints beside its times: the machine and its load (the machines are
shared, so a figure without the load it was measured under says little)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    """The CPUs this process may run on, their model, Python and the kernel."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def fmt_load(value: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in value)
