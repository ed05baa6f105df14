"""Accelerated homomorphic-encryption arrays: Paillier and NTT kernels behind a NumPy-like API."""

from accel.backends import use

__all__ = ["use"]
