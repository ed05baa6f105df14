"""OpenCL backend: the Montgomery and NTT kernels on any OpenCL device (PoCL on CPUs in tests).

The package also holds the kernel sources and host code that the CUDA backend shares, so it
imports without pyopencl; only ``OpenCLBackend`` needs it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OpenCLBackend"]


def __getattr__(name: str) -> Any:
    if name == "OpenCLBackend":
        from accel.backends.opencl.backend import OpenCLBackend

        return OpenCLBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
