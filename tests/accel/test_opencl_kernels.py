"""The Montgomery kernels on the OpenCL device (PoCL here), checked against Python integers.

``KernelChecks`` is shared with the CUDA tests: the same cases run on every device runtime.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from accel import backends
from accel.backends.base import Backend, BackendError, ints_to_limbs, limbs_for, limbs_to_ints

# Odd moduli of 1, 32 and 64 limbs with their top bit set (the hardest carries), plus a
# 2-limb one just over a limb boundary.
MODULI = {
    "1limb": (1 << 64) - 59,
    "2limb": (1 << 64) + 13,
    "32limb": random.Random(32).getrandbits(2048) | (1 << 2047) | 1,
    "64limb": random.Random(64).getrandbits(4096) | (1 << 4095) | 1,
}


def edge_values(m: int, rng: random.Random, count: int) -> list[int]:
    """0, 1, m-1, values at and around limb boundaries, then random residues."""
    values = [0, 1, 2, m - 1, m - 2, (m - 1) // 2]
    boundaries = list(range(64, m.bit_length(), 64))
    for bits in boundaries[:2] + boundaries[-1:]:
        values += [(1 << bits) - 1, 1 << bits, (1 << bits) + 1]
    values = [v % m for v in values]
    return values + [rng.randrange(m) for _ in range(max(0, count - len(values)))]


def as_limbs(values: list[int], m: int) -> np.ndarray:
    return ints_to_limbs(values, limbs_for(m))


class KernelChecks:
    """Cases for any KernelBackend; each test module provides the ``backend`` fixture."""

    @pytest.mark.parametrize("mod", list(MODULI))
    def test_mulmod_edges_and_random(self, backend: Backend, mod: str) -> None:
        m = MODULI[mod]
        rng = random.Random(mod)
        xs = edge_values(m, rng, 24)
        ys = list(reversed(xs))
        got = limbs_to_ints(backend.mulmod(as_limbs(xs, m), as_limbs(ys, m), m))
        assert got == [x * y % m for x, y in zip(xs, ys, strict=True)]

    def test_mulmod_broadcasts_one_factor(self, backend: Backend) -> None:
        m = MODULI["32limb"]
        xs = edge_values(m, random.Random(1), 8)
        c = m - 3
        got = limbs_to_ints(backend.mulmod(as_limbs(xs, m), as_limbs([c], m), m))
        assert got == [x * c % m for x in xs]

    @pytest.mark.parametrize("mod", list(MODULI))
    def test_powmod_per_element_exponents(self, backend: Backend, mod: str) -> None:
        m = MODULI[mod]
        rng = random.Random(mod + "pow")
        xs = edge_values(m, rng, 12)
        # Exponents stay near key size (1024 bits): longer ones only cost test time.
        top = min(m.bit_length(), 1024)
        es = [0, 1, 2, 15, 16, 17, (1 << 64) - 1, 1 << 64, (1 << top) - 1]
        es += [rng.getrandbits(top) for _ in range(len(xs) - len(es))]
        es = es[: len(xs)]
        e_limbs = limbs_for(max(es))
        got = limbs_to_ints(backend.powmod(as_limbs(xs, m), ints_to_limbs(es, e_limbs), m))
        assert got == [pow(x, e, m) for x, e in zip(xs, es, strict=True)]

    def test_powmod_broadcast_exponent(self, backend: Backend) -> None:
        m = MODULI["32limb"]
        rng = random.Random(7)
        xs = edge_values(m, rng, 6)
        e = rng.getrandbits(1024)
        got = limbs_to_ints(backend.powmod(as_limbs(xs, m), ints_to_limbs([e], 16), m))
        assert got == [pow(x, e, m) for x in xs]

    @pytest.mark.parametrize("exp_bits", [5, 64, 300])
    def test_fixed_base_matches_pow(self, backend: Backend, exp_bits: int) -> None:
        m = MODULI["32limb"]
        rng = random.Random(exp_bits)
        g = rng.randrange(2, m)
        table = backend.fixed_base_table(g, m, exp_bits)
        assert table.backend == backend.name
        es = [0, 1, (1 << exp_bits) - 1, 1 << (exp_bits - 1)]
        es += [rng.getrandbits(exp_bits) for _ in range(6)]
        e_limbs = limbs_for(1 << (exp_bits - 1))
        got = limbs_to_ints(backend.powmod_fixed(table, ints_to_limbs(es, e_limbs)))
        assert got == [pow(g, e, m) for e in es]

    @pytest.mark.parametrize("window", [7, 11])
    def test_fixed_base_windows_that_straddle_limbs(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch, window: int
    ) -> None:
        monkeypatch.setattr(backend, "fixed_base_window", lambda exp_bits: window)
        m = MODULI["2limb"]
        rng = random.Random(window)
        table = backend.fixed_base_table(5, m, 200)
        assert table.window == window
        es = [0, 1, (1 << 200) - 1, 1 << 63, 1 << 64, (1 << 130) - 1]
        es += [rng.getrandbits(200) for _ in range(4)]
        got = limbs_to_ints(backend.powmod_fixed(table, ints_to_limbs(es, 4)))
        assert got == [pow(5, e, m) for e in es]

    @pytest.mark.parametrize("on_device", [False, True])
    def test_fixed_base_table_built_on_host_or_device(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch, on_device: bool
    ) -> None:
        monkeypatch.setattr(backend, "tables_on_device", on_device)
        m = MODULI["32limb"]
        g = random.Random(21).randrange(2, m)
        table = backend.fixed_base_table(g, m, 70)
        es = [0, 1, 3, (1 << 70) - 1, 1 << 64, 123456789012345678901]
        got = limbs_to_ints(backend.powmod_fixed(table, ints_to_limbs(es, 2)))
        assert got == [pow(g, e, m) for e in es]

    def test_fixed_base_rejects_long_exponent(self, backend: Backend) -> None:
        m = MODULI["1limb"]
        table = backend.fixed_base_table(3, m, 10)
        with pytest.raises(ValueError, match="more than the table's 10 bits"):
            backend.powmod_fixed(table, ints_to_limbs([1 << 10], 1))

    @pytest.mark.parametrize("mod", ["1limb", "32limb"])
    def test_multiexp(self, backend: Backend, mod: str) -> None:
        m = MODULI[mod]
        rng = random.Random(mod + "mexp")
        P, K, M = 2, 3, 2
        bases = [[rng.randrange(m) for _ in range(K)] for _ in range(P)]
        bases[0][0] = 0
        bases[1][1] = m - 1
        exps = [[rng.getrandbits(70) for _ in range(M)] for _ in range(K)]
        exps[2][1] = 0
        L = limbs_for(m)
        b = as_limbs([v for row in bases for v in row], m).reshape(P, K, L)
        e = ints_to_limbs([v for row in exps for v in row], 2).reshape(K, M, 2)
        got = limbs_to_ints(backend.multiexp(b, e, m).reshape(P * M, L))
        want = []
        for p in range(P):
            for j in range(M):
                acc = 1
                for k in range(K):
                    acc = acc * pow(bases[p][k], exps[k][j], m) % m
                want.append(acc)
        assert got == want

    @pytest.mark.parametrize("mod", ["1limb", "32limb"])
    def test_multiexp_many_bases_few_outputs(self, backend: Backend, mod: str) -> None:
        # a vector times a matrix: the bases are cut into chunks whose products the host
        # multiplies; 37 bases do not divide evenly into any chunk size above 1
        m = MODULI[mod]
        rng = random.Random(mod + "vec")
        K, M = 37, 2
        assert backend.multiexp_chunk(K, M) < K, "few outputs must split the bases"
        bases = [rng.randrange(m) for _ in range(K)]
        bases[5] = m - 1
        exps = [[rng.getrandbits(53) for _ in range(M)] for _ in range(K)]
        exps[0] = [0, 0]
        L = limbs_for(m)
        b = as_limbs(bases, m).reshape(1, K, L)
        e = ints_to_limbs([v for row in exps for v in row], 1).reshape(K, M, 1)
        got = limbs_to_ints(backend.multiexp(b, e, m).reshape(M, L))
        want = [1] * M
        for j in range(M):
            for k in range(K):
                want[j] = want[j] * pow(bases[k], exps[k][j], m) % m
        assert got == want

    def test_multiexp_chunks_cover_every_base(self, backend: Backend) -> None:
        for k, outputs in [(1, 1), (37, 2), (2000, 10), (5, 1 << 20)]:
            chunk = backend.multiexp_chunk(k, outputs)
            assert 1 <= chunk <= k
            chunks = -(-k // chunk)
            assert (chunks - 1) * chunk < k <= chunks * chunk
        assert backend.multiexp_chunk(5, 1 << 20) == 5  # enough outputs: no split

    def test_invmod_and_its_error(self, backend: Backend) -> None:
        m = MODULI["2limb"]
        xs = [1, 2, m - 1, 12345]
        got = limbs_to_ints(backend.invmod(as_limbs(xs, m), m))
        assert [x * y % m for x, y in zip(xs, got, strict=True)] == [1] * 4
        with pytest.raises(ValueError, match="element 1 has no inverse"):
            backend.invmod(as_limbs([1, 0], m), m)

    def test_prodmod(self, backend: Backend) -> None:
        m = MODULI["32limb"]
        rng = random.Random(5)
        rows = [[rng.randrange(m) for _ in range(3)] for _ in range(5)]
        a = as_limbs([v for r in rows for v in r], m).reshape(5, 3, -1)
        got = limbs_to_ints(backend.prodmod(a, m))
        want = [rows[0][i] * rows[1][i] * rows[2][i] * rows[3][i] * rows[4][i] % m
                for i in range(3)]
        assert got == want

    def test_large_batches_go_in_slices(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(backend, "max_rows", lambda words_per_row: 3)
        m = MODULI["2limb"]
        rng = random.Random(11)
        xs = [rng.randrange(m) for _ in range(8)]
        ys = [rng.randrange(m) for _ in range(8)]
        pairs = list(zip(xs, ys, strict=True))
        a, b = as_limbs(xs, m), as_limbs(ys, m)
        assert limbs_to_ints(backend.mulmod(a, b, m)) == [x * y % m for x, y in pairs]
        assert limbs_to_ints(backend.mulmod(a, b[:1], m)) == [x * ys[0] % m for x in xs]
        assert limbs_to_ints(backend.powmod(a, b, m)) == [pow(x, y, m) for x, y in pairs]
        assert limbs_to_ints(backend.powmod(a, b[:1], m)) == [pow(x, ys[0], m) for x in xs]
        table = backend.fixed_base_table(7, m, 128)
        assert limbs_to_ints(backend.powmod_fixed(table, b)) == [pow(7, y, m) for y in ys]

    def test_empty_batch(self, backend: Backend) -> None:
        m = MODULI["2limb"]
        empty = np.empty((0, 2), dtype=np.uint64)
        assert backend.mulmod(empty, empty, m).shape == (0, 2)
        assert backend.powmod(empty, np.empty((0, 1), np.uint64), m).shape == (0, 2)

    def test_bad_input_is_rejected_clearly(self, backend: Backend) -> None:
        m = MODULI["2limb"]
        a = as_limbs([1, 2, 3], m)
        with pytest.raises(ValueError, match="modulus must be odd"):
            backend.mulmod(a, a, m + 1)
        with pytest.raises(ValueError, match="dtype uint64"):
            backend.mulmod(a.astype(np.int64), a, m)
        with pytest.raises(ValueError, match="limbs per row"):
            backend.mulmod(as_limbs([1], 1 << 200), a, m)
        with pytest.raises(ValueError, match="b has 2 rows; expected 3 or 1"):
            backend.mulmod(a, a[:2], m)
        with pytest.raises(ValueError, match="built by backend 'reference'"):
            from accel.backends.base import FixedBaseTable

            backend.powmod_fixed(FixedBaseTable(3, m, 8, 4, "reference", None), a)

    def test_injected_faults_surface_as_backend_error(self, backend: Backend) -> None:
        m = MODULI["1limb"]
        a = as_limbs([5], m)
        for kind in ("kernel", "lost", "oom"):
            with backends.inject_fault(backend.name, "mulmod", kind), pytest.raises(BackendError):
                backend.mulmod(a, a, m)
        assert limbs_to_ints(backend.mulmod(a, a, m)) == [25]

    def test_health_probe(self, backend: Backend) -> None:
        assert backend.health_probe() is True
        with backends.inject_fault(backend.name, "powmod", "lost"):
            assert backend.health_probe() is False


@pytest.fixture(scope="module")
def backend() -> Backend:
    # PoCL is a required component here: not being able to start it is a failure.
    return backends.get("opencl")


class TestOpenCLKernels(KernelChecks):
    def test_device_is_listed(self, backend: Backend) -> None:
        assert backend.devices() and all(isinstance(d, str) and d for d in backend.devices())
