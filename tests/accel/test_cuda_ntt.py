"""NTT kernels on the GPU, bit-identical to the Numba CPU path (same cases as OpenCL)."""

from __future__ import annotations

import pytest

from accel.backends.base import Backend
from tests.accel.gpu import cuda_backend
from tests.accel.test_opencl_ntt import NttChecks


@pytest.fixture(scope="module")
def backend() -> Backend:
    return cuda_backend()


@pytest.mark.gpu
class TestCudaNtt(NttChecks):
    pass
