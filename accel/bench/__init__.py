"""Benchmarks that measure accel beside its anchors (phe, galois) in the same run."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """The CPU, its logical CPU count, the OS and the load average: a benchmark's context."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}{load}"
