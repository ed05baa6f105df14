"""The one allowed skip: CUDA kernels cannot run on a machine without an NVIDIA GPU.

Where a GPU is present, a CUDA backend that fails to start is a failure like any other.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from accel import backends
from accel.backends.base import Backend


def nvidia_gpu_present() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    return Path("/dev/nvidia0").exists() or (gpus.is_dir() and any(gpus.iterdir()))


def cuda_backend() -> Backend:
    if not nvidia_gpu_present():
        pytest.skip("no NVIDIA GPU or driver on this machine: CUDA kernels are compile-tested only")
    return backends.get("cuda")
