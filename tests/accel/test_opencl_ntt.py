"""NTT kernels on the OpenCL device, bit-identical to the Numba CPU path (docs/ntt.md).

``NttChecks`` is shared with the CUDA tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from accel import backends, ntt
from accel.backends.base import Backend
from accel.ntt import cpu


def random_batch(plan: ntt.Plan, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, size=(batch, plan.limbs, plan.n), dtype=np.uint64)
    a %= plan.moduli[None, :, None]
    # Edge coefficients: 0, 1 and q - 1 in every limb.
    a[0, :, 0] = 0
    a[0, :, 1] = 1
    a[0, :, 2] = plan.moduli - np.uint64(1)
    return a


# Up to n = 4096 everything runs in local memory (one chunk); 8192 adds one global-memory
# stage, 16384 two fused in one pass, 32768 three, 65536 four.
CASES = [(16, 30, 2, 3), (1024, 62, 2, 1), (4096, 60, 2, 2), (8192, 60, 1, 2),
         (16384, 60, 1, 1), (32768, 60, 1, 1), (65536, 50, 1, 1)]


class NttChecks:
    @pytest.mark.parametrize(("n", "bits", "limbs", "batch"), CASES)
    def test_forward_and_inverse_match_the_cpu_path(
        self, backend: Backend, n: int, bits: int, limbs: int, batch: int
    ) -> None:
        plan = ntt.Plan(n=n, moduli=ntt.primes(bits=bits, count=limbs, n=n))
        a = random_batch(plan, batch, n)
        A = backend.ntt_forward(plan, a)
        np.testing.assert_array_equal(A, cpu.forward(plan, a))
        np.testing.assert_array_equal(backend.ntt_inverse(plan, A), a)

    def test_plan_routes_to_the_backend_and_polymul_matches(self, backend: Backend) -> None:
        n = 64
        plan = ntt.Plan(n=n, moduli=ntt.primes(bits=40, count=2, n=n))
        a, b = random_batch(plan, 2, 1), random_batch(plan, 2, 2)
        with backends.use(backend.name):
            assert backends.resolve(op="ntt", size=a.size).name == backend.name
            got = plan.polymul(a, b)
        # the Numba path directly: the CPU backend's C extension need not be built here
        np.testing.assert_array_equal(got, cpu.polymul(plan, a, b))
        # schoolbook negacyclic product of the first limb of the first row
        q = int(plan.moduli[0])
        x, y = [int(v) for v in a[0, 0]], [int(v) for v in b[0, 0]]
        want = [0] * n
        for i in range(n):
            for j in range(n):
                k, s = (i + j) % n, 1 if i + j < n else -1
                want[k] = (want[k] + s * x[i] * y[j]) % q
        assert [int(v) for v in got[0, 0]] == want

    @pytest.mark.parametrize("bits", [30, 62])
    def test_polymul_on_the_device_matches_the_cpu_path(self, backend: Backend, bits: int) -> None:
        n = 4096
        plan = ntt.Plan(n=n, moduli=ntt.primes(bits=bits, count=2, n=n))
        a, b = random_batch(plan, 1, bits), random_batch(plan, 1, bits + 1)
        b[0, :, :8] = plan.moduli[:, None] - np.uint64(1)  # largest products
        np.testing.assert_array_equal(backend.ntt_polymul(plan, a, b), cpu.polymul(plan, a, b))

    def test_bad_shape_is_rejected(self, backend: Backend) -> None:
        plan = ntt.Plan(n=16, moduli=ntt.primes(bits=30, count=1, n=16))
        with pytest.raises(ValueError, match=r"shaped \(B, 1, 16\)"):
            backend.ntt_forward(plan, np.zeros((1, 2, 16), dtype=np.uint64))

    def test_ntt_fault_falls_back_to_numba(self, backend: Backend) -> None:
        plan = ntt.Plan(n=32, moduli=ntt.primes(bits=30, count=1, n=32))
        a = random_batch(plan, 1, 3)
        try:
            with backends.inject_fault(backend.name, "ntt", "oom"):
                got = plan.forward(a, backend=backend.name)
            np.testing.assert_array_equal(got, cpu.forward(plan, a))
            assert not backends.router.is_healthy(backend.name)
        finally:
            assert backends.probe([backend.name]) == {backend.name: True}


@pytest.fixture(scope="module")
def backend() -> Backend:
    return backends.get("opencl")


class TestOpenCLNtt(NttChecks):
    pass
