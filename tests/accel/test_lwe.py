"""accel.lwe: the LWE pass of private query (uint8 matrix times uint32 queries mod 2^32) on
every backend, bit-identical to exact integer arithmetic; and the exact BLAS product."""

from __future__ import annotations

import numpy as np
import pytest

from accel import backends, lwe
from accel.backends import router
from accel.backends.base import Backend
from tests.accel.gpu import cuda_backend


def _reference(db: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Exact integers, then reduced: no wrap-around trick shared with the kernels."""
    return ((q.astype(object) @ db.T.astype(object)) % (1 << 32)).astype(np.uint32)


def _u32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 1 << 32, size=shape, dtype=np.uint64).astype(np.uint32)


class LweChecks:
    """The cases every backend passes (the CPU here; OpenCL and CUDA by fixture)."""

    # rows and batches that are not multiples of the kernels' blocks of 4, single rows and
    # columns, and a batch big enough for several query blocks
    @pytest.mark.parametrize(("rows", "cols", "batch"),
                             [(1, 1, 1), (3, 5, 2), (4, 64, 4), (37, 53, 7), (130, 1000, 9),
                              (9, 4099, 1)])
    def test_matches_exact_integers(self, backend: Backend, rows: int, cols: int,
                                    batch: int) -> None:
        rng = np.random.default_rng(rows * 1000 + cols + batch)
        db = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
        q = _u32(rng, (batch, cols))
        np.testing.assert_array_equal(lwe.Matrix(db).mul(q, backend=backend), _reference(db, q))

    def test_extreme_values_wrap_exactly(self, backend: Backend) -> None:
        # every product and every partial sum at its largest: the 16-bit split's carry and
        # the accumulators' wrap are both exercised
        db = np.full((5, 777), 255, dtype=np.uint8)
        q = np.array([[0xFFFFFFFF] * 777, [0x8000] * 777, [0x7FFF8000] * 777,
                      [0x0000FFFF] * 777, [0x80000000] * 777], dtype=np.uint32)
        np.testing.assert_array_equal(lwe.Matrix(db).mul(q, backend=backend), _reference(db, q))

    def test_the_matrix_serves_many_batches(self, backend: Backend) -> None:
        rng = np.random.default_rng(7)
        db = rng.integers(0, 256, size=(50, 300), dtype=np.uint8)
        m = lwe.Matrix(db)
        for batch in (1, 5, 2):
            q = _u32(rng, (batch, 300))
            np.testing.assert_array_equal(m.mul(q, backend=backend), _reference(db, q))


@pytest.fixture(scope="module")
def backend() -> Backend:
    return backends.get("cpu")


class TestCpuLwe(LweChecks):
    def test_reads_a_read_only_memory_map_without_copying(self, tmp_path) -> None:
        rng = np.random.default_rng(3)
        path = tmp_path / "db.u8"
        db = rng.integers(0, 256, size=(21, 333), dtype=np.uint8)
        db.tofile(path)
        mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(21, 333))
        m = lwe.Matrix(mapped)
        assert np.shares_memory(m.entries, mapped)
        q = _u32(rng, (3, 333))
        np.testing.assert_array_equal(m.mul(q), _reference(db, q))


class TestOpenCLLwe(LweChecks):
    @pytest.fixture(scope="class")
    def backend(self) -> Backend:
        return backends.get("opencl")


@pytest.mark.gpu
class TestCudaLwe(LweChecks):
    @pytest.fixture(scope="class")
    def backend(self) -> Backend:
        return cuda_backend()


def test_routed_call_falls_back_to_the_cpu_on_a_device_fault() -> None:
    rng = np.random.default_rng(5)
    db = rng.integers(0, 256, size=(8, 40), dtype=np.uint8)
    q = _u32(rng, (2, 40))
    try:
        with backends.inject_fault("opencl", "lwe"):
            out = lwe.Matrix(db).mul(q, backend="opencl")
        np.testing.assert_array_equal(out, _reference(db, q))
        assert not router.is_healthy("opencl")
    finally:
        assert backends.probe(["opencl"]) == {"opencl": True}


@pytest.mark.parametrize(("entries", "match"), [
    (np.zeros((2, 3), dtype=np.uint16), "uint8"),
    (np.zeros(6, dtype=np.uint8), "2-D"),
    (np.zeros((0, 3), dtype=np.uint8), "at least one"),
    ([[1, 2]], "ndarray"),
])
def test_bad_matrices_are_refused(entries: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lwe.Matrix(entries)  # type: ignore[arg-type]


@pytest.mark.parametrize("queries", [np.zeros((1, 4), np.uint32), np.zeros((1, 3), np.int64),
                                     np.zeros(3, np.uint32)])
def test_bad_queries_are_refused(queries: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(batch, 3\) uint32"):
        lwe.Matrix(np.zeros((2, 3), dtype=np.uint8)).mul(queries)


def test_an_empty_batch_answers_nothing() -> None:
    assert lwe.Matrix(np.ones((2, 3), np.uint8)).mul(np.zeros((0, 3), np.uint32)).shape == (0, 2)


def test_matmul_u32_is_exact() -> None:
    rng = np.random.default_rng(11)
    a, b = _u32(rng, (7, 1500)), _u32(rng, (1500, 5))
    exact = ((a.astype(object) @ b.astype(object)) % (1 << 32)).astype(np.uint32)
    np.testing.assert_array_equal(lwe.matmul_u32(a, b), exact)
    top = np.full((2, 4096), 0xFFFFFFFF, np.uint32)
    np.testing.assert_array_equal(lwe.matmul_u32(top, top.T),
                                  np.full((2, 2), (4096 * 0xFFFFFFFF**2) % (1 << 32), np.uint32))


def test_matmul_u32_refuses_what_it_cannot_do_exactly() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        lwe.matmul_u32(np.zeros((2, 3), np.uint32), np.zeros((4, 2), np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        lwe.matmul_u32(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.uint32))
