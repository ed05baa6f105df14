"""Backend fixtures for the accel tests.

``any_backend`` runs a test once per registered backend, so a new backend joins the
conformance suite by registering itself with ``accel.backends``. The CPU backend must always
load; an accelerator may only be absent where its hardware is (CUDA without an NVIDIA GPU).
"""

from __future__ import annotations

import pytest

from accel import backends
from accel.backends.base import Backend
from tests.accel.gpu import cuda_backend
from tests.accel.reference_backend import ReferenceBackend


@pytest.fixture(params=backends.names())
def any_backend(request: pytest.FixtureRequest) -> Backend:
    name = request.param
    if name == "cuda":
        return cuda_backend()
    return backends.get(name)  # a backend that fails to load fails the test


@pytest.fixture(scope="session")
def reference() -> ReferenceBackend:
    return ReferenceBackend()


@pytest.fixture(scope="session")
def cpu_backend() -> Backend:
    from accel.backends.cpu import CpuBackend

    return CpuBackend()
