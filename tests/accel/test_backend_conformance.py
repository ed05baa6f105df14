"""Every backend against the pure-integer reference: same shapes, same limbs, every op.

Moduli cover 1, 2, 32 and 64 limbs; values the limb edges (0, 1, m - 1, 2^64 - 1, 2^64,
2^(64k)); exponents 0, 1 and all-ones; batches of 1, 3 and 1001 rows; broadcasts.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel.backends.base import ints_to_limbs, limbs_for, limbs_to_ints

_rng = random.Random(20240611)

MODULI = {
    "1limb-mersenne61": (1 << 61) - 1,
    "1limb-full": (1 << 64) - 59,
    "2limb": (1 << 64) + 13,
    "2limb-full": (1 << 128) - 159,
    "32limb": _rng.getrandbits(2048) | (1 << 2047) | 1,
    "64limb": _rng.getrandbits(4096) | (1 << 4095) | 1,
}


def edge_values(m: int, extra: int = 3) -> list[int]:
    """0, 1, 2, m - 1, m - 2, limb-boundary values below m, and a few random residues."""
    values = [0, 1, 2, m - 1, m - 2]
    for k in range(1, limbs_for(m) + 1):
        values += [v for v in ((1 << (64 * k)) - 1, 1 << (64 * k), 1 << (64 * k - 1)) if v < m]
    values += [_rng.randrange(m) for _ in range(extra)]
    return [v % m for v in values]


def edge_exponents(limbs: int) -> list[int]:
    top = 64 * limbs
    return [0, 1, 2, 3, (1 << top) - 1, 1 << (top - 1), _rng.getrandbits(top)]


def limbs(values: list[int], m: int) -> np.ndarray:
    return ints_to_limbs(values, limbs_for(m))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray) and got.dtype == np.uint64
    assert got.shape == want.shape
    assert limbs_to_ints(got.reshape(-1, got.shape[-1])) == limbs_to_ints(
        want.reshape(-1, want.shape[-1])
    )


@pytest.mark.parametrize("name", list(MODULI))
def test_mulmod_edges_and_broadcast(any_backend, reference, name):
    m = MODULI[name]
    xs = edge_values(m)
    a, b = limbs(xs, m), limbs(xs[::-1], m)
    assert_same(any_backend.mulmod(a, b, m), reference.mulmod(a, b, m))
    for single in (0, 1, m - 1, xs[-1]):
        row = limbs([single], m)
        assert_same(any_backend.mulmod(a, row, m), reference.mulmod(a, row, m))


@pytest.mark.parametrize("rows", [1, 3, 1001])
@pytest.mark.parametrize("name", ["1limb-full", "2limb-full"])
def test_batch_sizes(any_backend, reference, name, rows):
    m = MODULI[name]
    a = limbs([_rng.randrange(m) for _ in range(rows)], m)
    b = limbs([_rng.randrange(m) for _ in range(rows)], m)
    e = ints_to_limbs([_rng.getrandbits(100) for _ in range(rows)], 2)
    assert_same(any_backend.mulmod(a, b, m), reference.mulmod(a, b, m))
    assert_same(any_backend.powmod(a, e, m), reference.powmod(a, e, m))
    assert_same(any_backend.powmod(a, e[:1], m), reference.powmod(a, e[:1], m))


@pytest.mark.parametrize("name", list(MODULI))
def test_powmod_edges(any_backend, reference, name):
    m = MODULI[name]
    exp_limbs = 2
    bases = edge_values(m, extra=1)
    exps = edge_exponents(exp_limbs)
    pairs = [(b, e) for b in bases for e in exps]
    if limbs_for(m) >= 32:
        # Python's pow is the slow side here; every base and every exponent still appears.
        pairs = [(b, exps[i % len(exps)]) for i, b in enumerate(bases)] + [
            (bases[-1], e) for e in exps
        ]
    a = limbs([b for b, _ in pairs], m)
    e = ints_to_limbs([x for _, x in pairs], exp_limbs)
    assert_same(any_backend.powmod(a, e, m), reference.powmod(a, e, m))


@pytest.mark.parametrize(
    ("name", "exp_bits"), [("1limb-full", 1024), ("32limb", 1024), ("64limb", 192)]
)
def test_powmod_one_exponent_for_all_rows(any_backend, reference, name, exp_bits):
    """The CRT-decryption shape: c^(p-1) mod p^2 for a whole batch (Python's pow is slow at
    these sizes, so the big moduli get few rows)."""
    m = MODULI[name]
    a = limbs([*edge_values(m, extra=1)[-3:], 0, 1], m)
    exp_limbs = limbs_for((1 << exp_bits) - 1)
    for exp in ((1 << (exp_bits - 1)) | _rng.getrandbits(exp_bits - 1), (1 << exp_bits) - 1, 0, 1):
        e = ints_to_limbs([exp], exp_limbs)
        assert_same(any_backend.powmod(a, e, m), reference.powmod(a, e, m))


@pytest.mark.parametrize(
    ("name", "exp_bits"),
    [
        ("1limb-mersenne61", 1),
        ("1limb-full", 64),
        ("2limb", 65),
        ("2limb-full", 130),
        ("32limb", 100),
        ("64limb", 64),
    ],
)
def test_powmod_fixed(any_backend, reference, name, exp_bits):
    m = MODULI[name]
    base = edge_values(m)[-1]
    table = any_backend.fixed_base_table(base, m, exp_bits)
    assert (table.base, table.modulus, table.exp_bits) == (base, m, exp_bits)
    ref_table = reference.fixed_base_table(base, m, exp_bits)
    top = 1 << exp_bits
    exps = [x % top for x in (0, 1, 2, top - 1, top >> 1, _rng.randrange(top), _rng.randrange(top))]
    for exp_limbs in (limbs_for(top - 1), limbs_for(top - 1) + 1):
        e = ints_to_limbs(exps, exp_limbs)
        assert_same(any_backend.powmod_fixed(table, e), reference.powmod_fixed(ref_table, e))


@pytest.mark.parametrize("base_kind", ["zero", "one", "minus-one"])
def test_powmod_fixed_trivial_bases(any_backend, reference, base_kind):
    m = MODULI["2limb-full"]
    base = {"zero": 0, "one": 1, "minus-one": m - 1}[base_kind]
    table = any_backend.fixed_base_table(base, m, 70)
    e = ints_to_limbs([0, 1, 2, (1 << 70) - 1], 2)
    assert_same(
        any_backend.powmod_fixed(table, e),
        reference.powmod_fixed(reference.fixed_base_table(base, m, 70), e),
    )


@pytest.mark.parametrize("name", ["1limb-full", "2limb", "32limb", "64limb"])
def test_multiexp(any_backend, reference, name):
    m = MODULI[name]
    P, K, M, E = 2, 5, 4, 2
    bases = limbs(edge_values(m, extra=10)[: P * K], m).reshape(P, K, -1)
    exps = [_rng.getrandbits(53) if _rng.random() < 0.6 else 0 for _ in range(K * M)]
    exps[0] = (1 << 128) - 1  # full width, top bit set
    exps[1] = 1
    exps[2 * M + 3] = 1 << 127
    for k in range(K):  # column 2: every exponent zero
        exps[k * M + 2] = 0
    e = ints_to_limbs(exps, E).reshape(K, M, E)
    assert_same(any_backend.multiexp(bases, e, m), reference.multiexp(bases, e, m))


def test_multiexp_signed_split_shape(any_backend, reference):
    """The encrypted-vector @ matrix pattern: bases and their inverses, one side zero."""
    m = MODULI["2limb-full"]
    K, M = 40, 3
    xs = [_rng.randrange(1, m) for _ in range(K)]
    xs = [x for x in xs if math.gcd(x, m) == 1]
    inv = [pow(x, -1, m) for x in xs]
    bases = limbs(xs + inv, m).reshape(1, 2 * len(xs), -1)
    w = [[_rng.randrange(-(1 << 53), 1 << 53) for _ in range(M)] for _ in xs]
    exps = [[max(v, 0) for v in row] for row in w] + [[max(-v, 0) for v in row] for row in w]
    e = ints_to_limbs([v for row in exps for v in row], 1).reshape(2 * len(xs), M, 1)
    got = any_backend.multiexp(bases, e, m)
    assert_same(got, reference.multiexp(bases, e, m))
    want = [math.prod(pow(x, wj[j], m) for x, wj in zip(xs, w, strict=True)) % m for j in range(M)]
    assert limbs_to_ints(got.reshape(M, -1)) == want


@pytest.mark.parametrize("name", list(MODULI))
def test_invmod(any_backend, reference, name):
    m = MODULI[name]
    xs = [x for x in edge_values(m, extra=5) if math.gcd(x, m) == 1]
    a = limbs(xs, m)
    got = any_backend.invmod(a, m)
    assert_same(got, reference.invmod(a, m))
    assert [x * y % m for x, y in zip(xs, limbs_to_ints(got), strict=True)] == [1] * len(xs)


def test_invmod_large_batch(any_backend, reference):
    m = MODULI["1limb-full"]  # prime: everything but 0 is invertible
    a = limbs([_rng.randrange(1, m) for _ in range(1001)], m)
    assert_same(any_backend.invmod(a, m), reference.invmod(a, m))


@pytest.mark.parametrize("bad", [0, 2, 1000])
def test_invmod_names_first_non_invertible(any_backend, bad):
    m = 3 * ((1 << 127) - 1)
    xs = [_rng.randrange(1, m) for _ in range(1001)]
    xs = [x if math.gcd(x, m) == 1 else 1 for x in xs]
    xs[bad] = 0 if bad == 0 else 3 * _rng.randrange(1, m // 3)
    if bad < 1000:
        xs[1000] = 0  # a later culprit must not be the one named
    with pytest.raises(ValueError, match=rf"\b{bad}\b"):
        any_backend.invmod(limbs(xs, m), m)


@pytest.mark.parametrize(("K", "N"), [(1, 3), (7, 3), (1001, 1), (3, 50)])
@pytest.mark.parametrize("name", ["1limb-full", "64limb"])
def test_prodmod(any_backend, reference, name, K, N):
    m = MODULI[name]
    if limbs_for(m) == 64 and K * N > 200:
        K = min(K, 100)
    a = limbs([_rng.randrange(m) for _ in range(K * N)], m).reshape(K, N, -1)
    a[0, 0] = limbs([m - 1], m)[0]
    want = reference.prodmod(a, m)
    assert_same(any_backend.prodmod(a, m), want)
    vals = np.array(limbs_to_ints(a.reshape(K * N, -1)), dtype=object).reshape(K, N)
    assert limbs_to_ints(want) == [math.prod(vals[:, j]) % m for j in range(N)]


def test_health_probe(any_backend):
    assert any_backend.health_probe()
    assert any_backend.devices()


@st.composite
def batches(draw):
    limb_count = draw(st.integers(1, 6))
    m = draw(st.integers(1 << (64 * limb_count - 1), (1 << (64 * limb_count)) - 1)) | 1
    rows = draw(st.integers(1, 5))
    residues = st.integers(0, m - 1)
    a = draw(st.lists(residues, min_size=rows, max_size=rows))
    b = draw(st.lists(residues, min_size=rows, max_size=rows))
    exp_limbs = draw(st.integers(1, 3))
    e = draw(st.lists(st.integers(0, (1 << (64 * exp_limbs)) - 1), min_size=rows, max_size=rows))
    return m, a, b, e, exp_limbs


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=batches())
def test_random_mulmod_powmod(any_backend, reference, batch):
    m, a, b, e, exp_limbs = batch
    A, B, E = limbs(a, m), limbs(b, m), ints_to_limbs(e, exp_limbs)
    assert_same(any_backend.mulmod(A, B, m), reference.mulmod(A, B, m))
    assert_same(any_backend.powmod(A, E, m), reference.powmod(A, E, m))
