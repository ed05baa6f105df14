"""The negacyclic NTT against its definition and the schoolbook product."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from accel import ntt
from accel.ntt import cpu
from tests.accel.reference_backend import ReferenceBackend

# 30 and 31 bits sit on either side of the narrow kernels' limit (2^30)
BITS = (30, 31, 50, 60, 62)


def _ints(row: np.ndarray) -> list[int]:
    return [int(v) for v in row]


# -- the definitions, with Python integers ----------------------------------------------------


def bitrev(j: int, log_n: int) -> int:
    return int(format(j, f"0{log_n}b")[::-1], 2) if log_n else 0


def negacyclic_product(a: list[int], b: list[int], q: int) -> list[int]:
    """Schoolbook ``a * b mod (x^n + 1, q)``: x^n wraps to -1."""
    n = len(a)
    out = [0] * n
    for i, ai in enumerate(a):
        if ai == 0:
            continue
        for j, bj in enumerate(b):
            k = i + j
            if k < n:
                out[k] += ai * bj
            else:
                out[k - n] -= ai * bj
    return [v % q for v in out]


def evaluate(a: list[int], q: int, point: int) -> int:
    """``a(point) mod q`` by Horner's rule."""
    acc = 0
    for coefficient in reversed(a):
        acc = (acc * point + coefficient) % q
    return acc


def forward_by_definition(a: list[int], q: int, psi: int) -> list[int]:
    """The documented output: ``A[j] = a(psi^(2 bitrev(j) + 1))``."""
    n = len(a)
    log_n = n.bit_length() - 1
    return [evaluate(a, q, pow(psi, 2 * bitrev(j, log_n) + 1, q)) for j in range(n)]


def random_reduced(rng: np.random.Generator, moduli, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Uniform coefficients ``< q_l`` shaped ``(*shape, L, n)``."""
    limbs = [
        rng.integers(0, int(q), size=(*shape, n), dtype=np.uint64, endpoint=False) for q in moduli
    ]
    return np.ascontiguousarray(np.stack(limbs, axis=-2))


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20260527)


# -- primes and tables ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [*BITS, 20])
def test_primes_have_the_promised_form(bits: int) -> None:
    found = ntt.primes(bits=bits, count=4, n=1024)
    assert len(set(found)) == 4
    assert found == sorted(found, reverse=True)
    for q in found:
        assert q.bit_length() == bits
        assert q % 2048 == 1
        assert ntt.is_prime(q)
        # no proper factor below 2^16: an independent check of primality
        assert all(q % d for d in range(3, 1 << 16, 2))


def test_is_prime_agrees_with_a_sieve() -> None:
    limit = 20000
    sieve = np.ones(limit, dtype=bool)
    sieve[:2] = False
    for p in range(2, int(limit**0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    assert [v for v in range(limit) if ntt.is_prime(v)] == list(np.flatnonzero(sieve))
    # strong pseudoprimes to several small bases
    for composite in (3215031751, 3825123056546413051, 318665857834031151167461):
        assert not ntt.is_prime(composite)
    assert ntt.is_prime((1 << 61) - 1)


@pytest.mark.parametrize("n", [2, 16, 512])
def test_plan_tables_follow_the_documented_layout(n: int) -> None:
    moduli = ntt.primes(bits=60, count=1, n=n) + ntt.primes(bits=30, count=1, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    log_n = n.bit_length() - 1
    assert plan.log_n == log_n and plan.limbs == 2
    for name in (
        "moduli", "psi", "psi_rev", "psi_rev_shoup", "psi_inv_rev", "psi_inv_rev_shoup",
        "n_inv", "n_inv_shoup", "barrett",
    ):  # fmt: skip
        table = getattr(plan, name)
        assert table.dtype == np.uint64 and table.flags.c_contiguous, name
    for row, q in enumerate(moduli):
        psi = int(plan.psi[row])
        assert pow(psi, n, q) == q - 1  # order exactly 2n
        psi_inv = pow(psi, -1, q)
        for i in range(n):
            w = int(plan.psi_rev[row, i])
            w_inv = int(plan.psi_inv_rev[row, i])
            assert w == pow(psi, bitrev(i, log_n), q)
            assert w_inv == pow(psi_inv, bitrev(i, log_n), q)
            assert int(plan.psi_rev_shoup[row, i]) == (w << 64) // q
            assert int(plan.psi_inv_rev_shoup[row, i]) == (w_inv << 64) // q
        assert int(plan.n_inv[row]) * n % q == 1
        assert int(plan.n_inv_shoup[row]) == (int(plan.n_inv[row]) << 64) // q
        lo, hi = (int(v) for v in plan.barrett[row])
        assert (hi << 64) | lo == (1 << 128) // q


# -- against the definitions ------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [8, 64])
def test_forward_is_evaluation_at_odd_powers_in_bit_reversed_order(bits, n, rng) -> None:
    moduli = ntt.primes(bits=bits, count=2, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (), n)
    spectrum = plan.forward(a)
    for row, q in enumerate(moduli):
        expected = forward_by_definition(_ints(a[row]), q, int(plan.psi[row]))
        assert _ints(spectrum[row]) == expected


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [2, 4, 8, 32, 256])
def test_polymul_matches_the_schoolbook_negacyclic_product(bits, n, rng) -> None:
    moduli = ntt.primes(bits=bits, count=3, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (), n)
    b = random_reduced(rng, moduli, (), n)
    product = plan.polymul(a, b)
    for row, q in enumerate(moduli):
        assert _ints(product[row]) == negacyclic_product(_ints(a[row]), _ints(b[row]), q)


def test_mixed_widths_and_extreme_coefficients(rng) -> None:
    """One basis with 30- and 62-bit primes (both kernels in one call), all values q - 1."""
    n = 128
    moduli = [*ntt.primes(bits=62, count=2, n=n), *ntt.primes(bits=30, count=2, n=n)]
    plan = ntt.Plan(n=n, moduli=moduli)
    top = np.array([[q - 1] * n for q in moduli], dtype=np.uint64)
    zero = np.zeros_like(top)
    one = zero.copy()
    one[:, 0] = 1
    mixed = random_reduced(rng, moduli, (), n)
    for a, b in ((top, top), (top, mixed), (zero, mixed), (one, mixed)):
        product = plan.polymul(a, b)
        for row, q in enumerate(moduli):
            assert _ints(product[row]) == negacyclic_product(_ints(a[row]), _ints(b[row]), q)
    assert np.array_equal(plan.inverse(plan.forward(top)), top)


@pytest.mark.parametrize("bits", [*BITS, 61])
def test_pointwise_products_are_exact(bits, rng) -> None:
    n = 64
    moduli = ntt.primes(bits=bits, count=2, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (2,), n)
    b = random_reduced(rng, moduli, (2,), n)
    # the extremes: (q-1)^2, (q-1) * 1, 0 * x, and values next to 2^32 and 2^(bits-1)
    for row, q in enumerate(moduli):
        a[0, row, :4] = [q - 1, q - 1, 0, min(q - 1, 1 << 32)]
        b[0, row, :4] = [q - 1, 1, q - 1, 1 << (bits - 1)]
    product = cpu.pointwise(plan, a, b)
    for k in range(2):
        for row, q in enumerate(moduli):
            expected = [x * y % q for x, y in zip(_ints(a[k, row]), _ints(b[k, row]), strict=True)]
            assert _ints(product[k, row]) == expected


@pytest.mark.parametrize("bits", BITS)
def test_round_trip_and_linearity(bits, rng) -> None:
    n = 1024
    moduli = ntt.primes(bits=bits, count=2, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (3,), n)
    b = random_reduced(rng, moduli, (3,), n)
    a_copy = a.copy()
    spectrum = plan.forward(a)
    assert np.array_equal(a, a_copy), "forward must not modify its input"
    assert not np.array_equal(spectrum, a)
    assert np.array_equal(plan.inverse(spectrum), a)
    q = plan.moduli[:, None]
    total = (a + b) % q  # no overflow: 2q < 2^63
    assert np.array_equal(plan.forward(total), (spectrum + plan.forward(b)) % q)
    c = 12345

    def times_c(x: np.ndarray) -> np.ndarray:
        rows = [[c * int(v) % q for v in row] for row, q in zip(x[0], moduli, strict=True)]
        return np.array(rows, dtype=np.uint64)

    assert np.array_equal(plan.forward(times_c(a)), times_c(spectrum))


# -- large n ----------------------------------------------------------------------------------


def _monomial(n: int, k: int, q: int) -> np.ndarray:
    """x^k for 0 <= k < 2n (x^n = -1)."""
    out = np.zeros((1, n), dtype=np.uint64)
    out[0, k % n] = 1 if k < n else q - 1
    return out


def _negacyclic_shift(a: np.ndarray, k: int, q: int) -> np.ndarray:
    """a * x^k: coefficients move up by k and change sign each time they wrap past x^n."""
    n = a.shape[-1]
    out = np.roll(a, k % n, axis=-1)
    wrapped = np.zeros(n, dtype=bool)
    wrapped[: k % n] = True
    if k >= n:
        wrapped = ~wrapped
    negated = np.where(out == 0, out, np.uint64(q) - out)
    return np.where(wrapped, negated, out)


@pytest.mark.parametrize(("n", "bits"), [(16384, 60), (16384, 30), (65536, 62), (65536, 50)])
def test_large_n_shifts_and_evaluations(n, bits, rng) -> None:
    (q,) = ntt.primes(bits=bits, count=1, n=n)
    plan = ntt.Plan(n=n, moduli=[q])
    a = random_reduced(rng, [q], (), n)
    for k in (0, 1, 7, n - 1, n, n + 3, 2 * n - 1):
        assert np.array_equal(plan.polymul(a, _monomial(n, k, q)), _negacyclic_shift(a, k, q)), k
    # a few outputs against direct evaluation of the 2n-th root's odd powers
    spectrum = plan.forward(a)
    coefficients = _ints(a[0])
    psi = int(plan.psi[0])
    for j in (0, 1, n // 2 + 5, n - 1):
        point = pow(psi, 2 * bitrev(j, plan.log_n) + 1, q)
        assert int(spectrum[0, j]) == evaluate(coefficients, q, point)
    # the product of two random polynomials at one evaluation point
    b = random_reduced(rng, [q], (), n)
    point = pow(psi, 2 * bitrev(3, plan.log_n) + 1, q)
    expected = evaluate(coefficients, q, point) * evaluate(_ints(b[0]), q, point) % q
    assert evaluate(_ints(plan.polymul(a, b)[0]), q, point) == expected


# -- batches, threads, backends ---------------------------------------------------------------


def test_batched_shapes_equal_one_call_per_polynomial(rng) -> None:
    n = 256
    moduli = ntt.primes(bits=60, count=3, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (2, 3), n)
    b = random_reduced(rng, moduli, (2, 3), n)
    spectrum = plan.forward(a)
    product = plan.polymul(a, b)
    assert spectrum.shape == product.shape == (2, 3, 3, n)
    for i in range(2):
        for j in range(3):
            assert np.array_equal(spectrum[i, j], plan.forward(a[i, j]))
            assert np.array_equal(product[i, j], plan.polymul(a[i, j], b[i, j]))
    # a non-contiguous view gives the same answer as its copy
    view = a[:, ::2]
    assert np.array_equal(plan.forward(view), plan.forward(view.copy()))
    assert plan.forward(a[:0]).shape == (0, 3, 3, n)


def test_results_do_not_depend_on_the_thread_count(rng) -> None:
    n = 2048
    moduli = ntt.primes(bits=62, count=4, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (3,), n)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = plan.forward(a)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        every = plan.forward(a)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(single, every)


class DefinitionBackend(ReferenceBackend):
    """A backend with its own (slow, by-definition) NTT, to prove that Plan routes to it."""

    name = "definition"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ntt_forward(self, plan, a):
        self.calls.append("forward")
        out = np.empty_like(a)
        for b in range(a.shape[0]):
            for row, q in enumerate(plan.moduli):
                out[b, row] = forward_by_definition(_ints(a[b, row]), int(q), int(plan.psi[row]))
        return out


def test_plan_routes_to_a_backend_that_has_ntt_methods(rng) -> None:
    n = 32
    moduli = ntt.primes(bits=50, count=2, n=n)
    plan = ntt.Plan(n=n, moduli=moduli)
    a = random_reduced(rng, moduli, (2,), n)
    b = random_reduced(rng, moduli, (2,), n)
    backend = DefinitionBackend()
    assert np.array_equal(plan.forward(a, backend=backend), plan.forward(a))
    # polymul composes the backend's forward with the CPU product and inverse
    assert np.array_equal(plan.polymul(a, b, backend=backend), plan.polymul(a, b))
    assert backend.calls == ["forward", "forward", "forward"]
    # a backend without NTT methods gets the Numba path; so does the named cpu backend
    assert np.array_equal(plan.inverse(a, backend=ReferenceBackend()), cpu.inverse(plan, a))
    assert np.array_equal(plan.polymul(a, b, backend="cpu"), cpu.polymul(plan, a, b))


def test_works_where_no_cache_directory_is_writable(tmp_path) -> None:
    """A read-only install: Numba finds no cache locator, the kernels compile in process."""
    script = (
        "import numpy as np\n"
        "from accel import ntt\n"
        "from accel.ntt import cpu\n"
        "assert cpu._forward_row_wide._cache.__class__.__name__ == 'NullCache'\n"
        "plan = ntt.Plan(n=16, moduli=ntt.primes(bits=60, count=1, n=16))\n"
        "a = (np.arange(16, dtype=np.uint64) * np.uint64(7919)).reshape(1, 16)\n"
        "assert np.array_equal(plan.inverse(plan.forward(a)), a)\n"
        "print('round trip ok')\n"
    )
    env = {
        **os.environ,
        # only the IPython locator, which declines ordinary files: no locator is available
        "NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.IPythonCacheLocator",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round trip ok" in done.stdout


def test_kernels_are_cached_on_disk_where_they_can_be() -> None:
    assert type(cpu._forward_row_wide._cache).__name__ == "FunctionCache"
    assert type(cpu._inverse_rows._cache).__name__ == "FunctionCache"
