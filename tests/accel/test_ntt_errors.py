"""Bad input to the NTT is refused with a ValueError that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from accel import ntt

N = 64
MODULI = ntt.primes(bits=60, count=2, n=N)


@pytest.fixture(scope="module")
def plan() -> ntt.Plan:
    return ntt.Plan(n=N, moduli=MODULI)


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (48, "power of two"),
        (0, "power of two"),
        (1, "power of two"),
        (-64, "power of two"),
        (131072, "at most 65536"),
        (64.0, "must be an integer"),
        ("64", "must be an integer"),
    ],
)
def test_bad_sizes(n, message) -> None:
    with pytest.raises(ValueError, match=message):
        ntt.Plan(n=n, moduli=MODULI)


def test_bad_moduli() -> None:
    p1, p2 = ntt.primes(bits=30, count=2, n=N)
    big = next(q for q in range((1 << 62) + 1, (1 << 63), 2 * N) if ntt.is_prime(q))
    cases = [
        ([385], "385 is not prime"),  # 5 * 7 * 11, and 1 mod 128
        ([p1 * p2], f"{p1 * p2} is not prime"),  # 60 bits, 1 mod 128, composite
        ([MODULI[0] + 2], "not 1 mod 2n = 128"),
        ([big], "out of range"),
        ([MODULI[0], MODULI[0]], "repeat"),
        ([], "empty"),
        ([-MODULI[0]], "out of range"),
        (7, "sequence of integers"),
        ([float(MODULI[0])], "must be integers"),
        ([str(MODULI[0])], "must be integers"),
    ]
    for moduli, message in cases:
        with pytest.raises(ValueError, match=message):
            ntt.Plan(n=N, moduli=moduli)


def test_bad_prime_requests() -> None:
    with pytest.raises(ValueError, match="power of two"):
        ntt.primes(bits=60, count=1, n=100)
    with pytest.raises(ValueError, match="between 2 and 62"):
        ntt.primes(bits=63, count=1, n=N)
    with pytest.raises(ValueError, match="positive"):
        ntt.primes(bits=60, count=0, n=N)
    with pytest.raises(ValueError, match="use more bits"):
        ntt.primes(bits=8, count=1, n=1024)
    with pytest.raises(ValueError, match="only 1 primes of 14 bits are 1 mod 2048, not 3"):
        ntt.primes(bits=14, count=3, n=1024)  # 12289 is the only one


def test_bad_arrays(plan) -> None:
    good = np.zeros((2, N), dtype=np.uint64)
    cases = [
        (good.astype(np.int64), "dtype uint64, got int64"),
        (good.astype(np.float64), "dtype uint64, got float64"),
        (good.tolist(), "numpy uint64 array, got list"),
        (np.zeros(N, dtype=np.uint64), r"shaped \(\.\.\., L=2, n=64\), got \(64,\)"),
        (np.zeros((3, N), dtype=np.uint64), r"got \(3, 64\)"),
        (np.zeros((2, N // 2), dtype=np.uint64), r"got \(2, 32\)"),
    ]
    for array, message in cases:
        for call in (plan.forward, plan.inverse):
            with pytest.raises(ValueError, match=message):
                call(array)
        with pytest.raises(ValueError, match=message):
            plan.polymul(array, array)


def test_unreduced_coefficients_are_named(plan) -> None:
    a = np.zeros((4, 2, N), dtype=np.uint64)
    a[3, 1, 17] = MODULI[1]
    with pytest.raises(ValueError, match=rf"a\[3, 1, 17\] = {MODULI[1]} is not reduced"):
        plan.forward(a)
    a[3, 1, 17] = np.uint64(2**64 - 1)
    with pytest.raises(ValueError, match=f"q_1 = {MODULI[1]}"):
        plan.inverse(a)
    a[3, 1, 17] = MODULI[1] - 1  # the largest allowed value passes
    plan.forward(a)
    with pytest.raises(ValueError, match=r"b\[3, 1, 17\]"):
        b = a.copy()
        b[3, 1, 17] = MODULI[1]
        plan.polymul(a, b)


def test_polymul_shape_mismatch(plan) -> None:
    a = np.zeros((3, 2, N), dtype=np.uint64)
    with pytest.raises(ValueError, match=r"shape mismatch: a is \(3, 2, 64\), b is \(2, 64\)"):
        plan.polymul(a, a[0])


def test_unknown_backend_is_refused(plan) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        plan.forward(np.zeros((2, N), dtype=np.uint64), backend="no-such-backend")


def test_plan_tables_are_read_only(plan) -> None:
    with pytest.raises(ValueError, match="read-only"):
        plan.psi_rev[0, 1] = 5
    with pytest.raises(ValueError, match="read-only"):
        plan.moduli[0] = 5
