"""The CPU backend: C kernels over GMP, run on every core with the GIL released."""

from accel.backends.cpu.backend import CpuBackend

__all__ = ["CpuBackend"]
