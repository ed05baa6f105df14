"""CUDA backend: the Montgomery kernels on an NVIDIA GPU (pycuda, or CuPy without it)."""

from accel.backends.cuda.backend import CudaBackend, kernel_sources

__all__ = ["CudaBackend", "kernel_sources"]
