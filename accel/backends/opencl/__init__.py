"""OpenCL backend: the Montgomery kernels on any OpenCL device (PoCL on CPUs in tests)."""

from accel.backends.opencl.backend import OpenCLBackend

__all__ = ["OpenCLBackend"]
