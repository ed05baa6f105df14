"""What only the CPU backend promises: threads, the GIL, fork safety, input checks, tables."""

from __future__ import annotations

import math
import multiprocessing
import random
import threading
import time

import numpy as np
import pytest

from accel.backends.base import FixedBaseTable, ints_to_limbs, limbs_for, limbs_to_ints
from accel.backends.cpu import CpuBackend
from accel.backends.cpu.backend import SIMD_ENV, TABLE_BYTES, THREADS_ENV

_rng = random.Random(7)
M2 = (1 << 128) - 159
M64 = _rng.getrandbits(4096) | (1 << 4095) | 1


def residues(m: int, count: int, *, units: bool = False) -> np.ndarray:
    """Random residues; with ``units`` only invertible ones."""
    values: list[int] = []
    while len(values) < count:
        x = _rng.randrange(m)
        if not units or math.gcd(x, m) == 1:
            values.append(x)
    return ints_to_limbs(values, limbs_for(m))


# ---- threads ------------------------------------------------------------------------------


def test_one_and_two_threads_agree():
    one, two = CpuBackend(threads=1), CpuBackend(threads=2)
    m = M64
    a, b = residues(m, 64, units=True), residues(m, 64)
    e = ints_to_limbs([_rng.getrandbits(300) for _ in range(64)], 5)
    bases = residues(m, 2 * 30).reshape(2, 30, -1)
    exps = ints_to_limbs([_rng.getrandbits(53) for _ in range(30 * 3)], 1).reshape(30, 3, 1)
    table1 = one.fixed_base_table(limbs_to_ints(a[:1])[0], m, 300, window=4)
    table2 = two.fixed_base_table(limbs_to_ints(a[:1])[0], m, 300, window=4)
    assert np.array_equal(table1.data, table2.data)
    pairs = [
        (one.mulmod(a, b, m), two.mulmod(a, b, m)),
        (one.mulmod(a, b[:1], m), two.mulmod(a, b[:1], m)),
        (one.powmod(a, e, m), two.powmod(a, e, m)),
        (one.powmod(a, e[:1], m), two.powmod(a, e[:1], m)),
        (one.powmod_fixed(table1, e), two.powmod_fixed(table2, e)),
        (one.multiexp(bases, exps, m), two.multiexp(bases, exps, m)),
        (one.invmod(a[1:], m), two.invmod(a[1:], m)),
        (one.prodmod(a.reshape(8, 8, -1), m), two.prodmod(a.reshape(8, 8, -1), m)),
        (one.prodmod(a.reshape(64, 1, -1), m), two.prodmod(a.reshape(64, 1, -1), m)),
    ]
    for got1, got2 in pairs:
        assert np.array_equal(got1, got2)
    # and both are right, not merely equal
    x, y = limbs_to_ints(a), limbs_to_ints(b)
    assert limbs_to_ints(pairs[0][1]) == [p * q % m for p, q in zip(x, y, strict=True)]


def test_thread_count_from_argument_and_environment(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert CpuBackend().threads == 3
    assert CpuBackend(threads=5).threads == 5
    monkeypatch.delenv(THREADS_ENV)
    assert CpuBackend().threads >= 1
    assert f"{CpuBackend(threads=2).threads} threads" in CpuBackend(threads=2).devices()[0]


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_thread_count(threads):
    with pytest.raises(ValueError, match="threads"):
        CpuBackend(threads=threads)


def test_bad_thread_environment(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV):
        CpuBackend()


def test_more_threads_than_rows():
    cpu = CpuBackend(threads=16)
    a = residues(M2, 3)
    assert limbs_to_ints(cpu.mulmod(a, a, M2)) == [x * x % M2 for x in limbs_to_ints(a)]


def test_calls_release_the_gil():
    """Python in another thread keeps running while a long C call is in flight."""
    cpu = CpuBackend(threads=1)
    base = residues(M64, 30)
    exp = ints_to_limbs([(1 << 2048) - 1], 32)
    started = threading.Event()
    call_done = []

    def work():
        started.set()
        cpu.powmod(base, exp, M64)
        call_done.append(time.perf_counter())

    worker = threading.Thread(target=work)
    t0 = time.perf_counter()
    worker.start()
    started.wait()
    total = 0
    for i in range(100_000):  # a few milliseconds of pure Python
        total += i
    loop_done = time.perf_counter()
    worker.join()
    call_time = call_done[0] - t0
    # With the GIL held through the call, the loop could only finish after the call did.
    assert total == 4_999_950_000
    assert loop_done - t0 < 0.5 * call_time, (loop_done - t0, call_time)


def _child_computes(queue):
    cpu = CpuBackend(threads=2)
    a = ints_to_limbs([3, 5, 7, 11], 2)
    queue.put(limbs_to_ints(cpu.mulmod(a, a, M2)))


def test_usable_in_a_forked_child_after_use_in_the_parent():
    cpu = CpuBackend(threads=2)
    a = residues(M64, 16)
    cpu.powmod(a, ints_to_limbs([65537], 1), M64)  # the parent has run threads
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_computes, args=(queue,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert queue.get(timeout=1) == [9, 25, 49, 121]


# ---- fixed-base tables --------------------------------------------------------------------


def test_default_table_for_4096_bit_modulus_and_1100_bit_exponents():
    cpu = CpuBackend()
    base = _rng.randrange(M64)
    table = cpu.fixed_base_table(base, M64, 1100)
    assert table.backend == "cpu" and table.window == 10
    assert table.data.nbytes <= TABLE_BYTES
    exps = [(1 << 1100) - 1, 1 << 1099, 0, _rng.getrandbits(1100)]
    got = limbs_to_ints(cpu.powmod_fixed(table, ints_to_limbs(exps, 18)))
    assert got == [pow(base, x, M64) for x in exps]


def test_table_window_override_and_small_exponents():
    cpu = CpuBackend()
    for window in (1, 3, 7):
        table = cpu.fixed_base_table(12345, M2, 20, window=window)
        assert table.window == window
        exps = ints_to_limbs([0, 1, (1 << 20) - 1, 777], 1)
        assert limbs_to_ints(cpu.powmod_fixed(table, exps)) == [
            pow(12345, x, M2) for x in (0, 1, (1 << 20) - 1, 777)
        ]


# ---- modulus 1 and empty batches ----------------------------------------------------------


def test_modulus_one_gives_zeros_like_python():
    cpu = CpuBackend()
    zero = np.zeros((2, 1), dtype=np.uint64)
    e = ints_to_limbs([0, 5], 1)
    assert not cpu.mulmod(zero, zero, 1).any()
    assert not cpu.powmod(zero, e, 1).any()
    assert not cpu.invmod(zero, 1).any()
    assert not cpu.powmod_fixed(cpu.fixed_base_table(0, 1, 8), e).any()


def test_empty_batches():
    cpu = CpuBackend()
    L = limbs_for(M2)
    empty = np.zeros((0, L), dtype=np.uint64)
    assert cpu.mulmod(empty, empty, M2).shape == (0, L)
    assert cpu.powmod(empty, np.zeros((1, 1), dtype=np.uint64), M2).shape == (0, L)
    assert cpu.invmod(empty, M2).shape == (0, L)
    assert cpu.multiexp(np.zeros((1, 0, L), np.uint64), np.zeros((0, 2, 1), np.uint64), M2)[
        0
    ].tolist() == [[1, 0], [1, 0]]


# ---- bad input ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu():
    return CpuBackend(threads=2)


def test_modulus_checks(cpu):
    a = residues(M2, 2)
    with pytest.raises(ValueError, match="odd modulus"):
        cpu.mulmod(a, a, M2 + 1)
    for bad in (0, -7):
        with pytest.raises(ValueError, match="positive"):
            cpu.mulmod(a[:, :1] * 0, a[:, :1] * 0, bad)
    for bad in (7.0, "7", None, True):
        with pytest.raises(TypeError, match="modulus must be an int"):
            cpu.mulmod(a, a, bad)


def test_array_type_and_layout_checks(cpu):
    a = residues(M2, 4)
    with pytest.raises(TypeError, match="numpy uint64 array"):
        cpu.mulmod(a.tolist(), a, M2)
    with pytest.raises(TypeError, match="dtype uint64"):
        cpu.mulmod(a.astype(np.int64), a, M2)
    with pytest.raises(TypeError, match="dtype uint64"):
        cpu.mulmod(a.astype(">u8"), a, M2)
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.mulmod(np.asfortranarray(a), a, M2)
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.powmod(a[::2], a[:1, :1], M2)
    with pytest.raises(ValueError, match="2 axes"):
        cpu.mulmod(a.reshape(-1), a, M2)
    with pytest.raises(ValueError, match="has 3 limbs but the modulus needs 2"):
        cpu.mulmod(np.zeros((4, 3), np.uint64), a, M2)
    with pytest.raises(ValueError, match="at least one limb"):
        cpu.powmod(a, np.zeros((4, 0), np.uint64), M2)


def test_row_count_checks(cpu):
    a = residues(M2, 4)
    with pytest.raises(ValueError, match="b must have 1 or 4 rows"):
        cpu.mulmod(a, a[:2], M2)
    with pytest.raises(ValueError, match="exp must have 1 or 4 rows"):
        cpu.powmod(a, np.ones((3, 1), np.uint64), M2)
    with pytest.raises(ValueError, match="one row per base"):
        cpu.multiexp(a.reshape(1, 4, 2), np.ones((3, 2, 1), np.uint64), M2)
    with pytest.raises(ValueError, match="empty batch"):
        cpu.prodmod(np.zeros((0, 3, 2), np.uint64), M2)


def test_unreduced_inputs_are_named(cpu):
    a = residues(M2, 5)
    bad = a.copy()
    bad[3] = ints_to_limbs([M2 + 1], 2)[0]
    with pytest.raises(ValueError, match=r"b: residue 3 is not reduced"):
        cpu.mulmod(a, bad, M2)
    with pytest.raises(ValueError, match=r"base: residue 3"):
        cpu.powmod(bad, a[:1], M2)
    with pytest.raises(ValueError, match=r"a: residue 3"):
        cpu.invmod(bad, M2)
    with pytest.raises(ValueError, match=r"bases: residue 3"):
        cpu.multiexp(bad.reshape(1, 5, 2), np.ones((5, 1, 1), np.uint64), M2)
    with pytest.raises(ValueError, match=r"a: residue 3"):
        cpu.prodmod(bad.reshape(5, 1, 2), M2)


def test_fixed_table_checks(cpu):
    with pytest.raises(ValueError, match="base must be reduced"):
        cpu.fixed_base_table(M2, M2, 64)
    with pytest.raises(ValueError, match="exp_bits"):
        cpu.fixed_base_table(3, M2, 0)
    with pytest.raises(ValueError, match="window"):
        cpu.fixed_base_table(3, M2, 64, window=13)
    table = cpu.fixed_base_table(3, M2, 70, window=5)
    with pytest.raises(ValueError, match="exponent 1 has more than 70 bits"):
        cpu.powmod_fixed(table, ints_to_limbs([5, 1 << 70, 1 << 100], 2))
    with pytest.raises(ValueError, match="exponent 0 has more than 70 bits"):
        cpu.powmod_fixed(table, ints_to_limbs([1 << 130], 3))
    foreign = FixedBaseTable(3, M2, 70, 5, "opencl", None)
    with pytest.raises(TypeError, match="made by the cpu backend"):
        cpu.powmod_fixed(foreign, ints_to_limbs([5], 2))
    forged = FixedBaseTable(3, M2, 70, 5, "cpu", np.zeros((2, 31, 2), np.uint64))
    with pytest.raises(ValueError, match="does not match"):
        cpu.powmod_fixed(forged, ints_to_limbs([5], 2))


def test_invmod_of_zero_names_the_row(cpu):
    a = ints_to_limbs([1, 2, 0, 5], 2)
    with pytest.raises(ValueError, match="element 2 has no inverse"):
        cpu.invmod(a, M2)


# ---- the AVX-512 IFMA kernels against the portable ones -----------------------------------


def _cpu_has_ifma() -> bool:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        return any(line.startswith("flags") and " avx512ifma" in line for line in f)


def test_simd_follows_the_cpu_and_the_environment(monkeypatch):
    assert CpuBackend(simd=True).simd == _cpu_has_ifma()
    assert not CpuBackend(simd=False).simd
    monkeypatch.setenv(SIMD_ENV, "0")
    assert not CpuBackend().simd
    monkeypatch.setenv(SIMD_ENV, "1")
    assert CpuBackend().simd == _cpu_has_ifma()


@pytest.mark.parametrize("bits", [256, 300, 2048, 4000, 4096])
def test_simd_and_portable_paths_agree(bits):
    """Both paths against Python integers, with rows that fill eight lanes unevenly."""
    fast, portable = CpuBackend(threads=2, simd=True), CpuBackend(threads=2, simd=False)
    m = _rng.getrandbits(bits) | (1 << (bits - 1)) | 1
    L = limbs_for(m)
    xs = [0, 1, m - 1, 2, *(_rng.randrange(m) for _ in range(9))]  # 13 rows
    ys = [m - 1, 0, m - 1, *(_rng.randrange(m) for _ in range(10))]
    es = [0, 1, (1 << 192) - 1, 1 << 191, *(_rng.getrandbits(192) for _ in range(9))]
    a, b, e = ints_to_limbs(xs, L), ints_to_limbs(ys, L), ints_to_limbs(es, 3)
    table_base = xs[5]
    expected = {
        "mulmod": [x * y % m for x, y in zip(xs, ys, strict=True)],
        "mulmod_broadcast": [x * ys[3] % m for x in xs],
        "powmod": [pow(x, y, m) for x, y in zip(xs, es, strict=True)],
        "powmod_common": [pow(x, es[2], m) for x in xs],
        "powmod_fixed": [pow(table_base, y, m) for y in es],
        "prodmod": [math.prod(xs) % m],
        "prodmod_columns": [math.prod(xs[j::13]) % m for j in range(13)],
    }
    tables = [b.fixed_base_table(table_base, m, 192, window=6) for b in (fast, portable)]
    assert np.array_equal(tables[0].data, tables[1].data)
    for backend, table in zip((fast, portable), tables, strict=True):
        got = {
            "mulmod": backend.mulmod(a, b, m),
            "mulmod_broadcast": backend.mulmod(a, b[3:4], m),
            "powmod": backend.powmod(a, e, m),
            "powmod_common": backend.powmod(a, e[2:3], m),
            "powmod_fixed": backend.powmod_fixed(table, e),
            "prodmod": backend.prodmod(a.reshape(13, 1, L), m),
            "prodmod_columns": backend.prodmod(a.reshape(1, 13, L), m),
        }
        for op, want in expected.items():
            assert limbs_to_ints(got[op]) == want, (op, backend.simd)
    K, M = 11, 4
    bases = ints_to_limbs(xs[:K] + ys[:K], L).reshape(2, K, L)
    exps = [_rng.getrandbits(53) if _rng.random() < 0.7 else 0 for _ in range(K * M)]
    exps[0] = (1 << 64) - 1
    exp_arr = ints_to_limbs(exps, 1).reshape(K, M, 1)
    want = [
        math.prod(pow(row[k], exps[k * M + j], m) for k in range(K)) % m
        for row in (xs[:K], ys[:K])
        for j in range(M)
    ]
    for backend in (fast, portable):
        assert limbs_to_ints(backend.multiexp(bases, exp_arr, m).reshape(2 * M, L)) == want


@pytest.mark.parametrize("bits", [300, 4096])
def test_simd_and_portable_invmod_agree(bits):
    """Batch inversion runs 8 lanes x 64 rows per group: 1100 rows leave a ragged last group."""
    m = _rng.getrandbits(bits) | (1 << (bits - 1)) | 1
    a = residues(m, 1100, units=True)
    xs = limbs_to_ints(a)
    want = [pow(x, -1, m) for x in xs]
    for simd in (True, False):
        assert limbs_to_ints(CpuBackend(threads=2, simd=simd).invmod(a, m)) == want
    bad = a.copy()
    bad[1090] = 0
    bad[700] = 0  # the first culprit, in the second group's third lane
    for simd in (True, False):
        with pytest.raises(ValueError, match="element 700 has no inverse"):
            CpuBackend(threads=2, simd=simd).invmod(bad, m)


@pytest.mark.parametrize(
    "m",
    [
        (1 << 209) - 1,  # all ones; k - 1 = 208 is a 52-bit digit boundary
        (1 << 207) - 1,  # k + 1 = 208 is one
        (1 << 4161) - 1,  # the same at 81 digits
        (1 << 4159) - 1,
        (1 << 4158) - 1,  # the widest modulus of 80 digits (4m must stay below R)
        (1 << 4095) + 1,  # the smallest of its bit length: the largest quotients
        _rng.getrandbits(4096) | (1 << 4095) | 1,
        (1 << 192) + 133,  # the fewest digits the kernels take
    ],
    ids=["209-ones", "207-ones", "4161-ones", "4159-ones", "4158-ones", "4096-min", "4096",
         "193"],
)
def test_simd_mulmod_per_row_factors_at_the_edges(m):
    """Per-row products: Barrett quotients from shifted digits and a truncated product, on
    the largest operands, with every lane filled and one ragged group."""
    fast = CpuBackend(threads=2, simd=True)
    L = limbs_for(m)
    xs = [m - 1, m - 1, 1, m - 2, 0, *(_rng.randrange(m) for _ in range(20))]
    ys = [m - 1, 1, m - 1, m - 2, m - 1, *(_rng.randrange(m) for _ in range(20))]
    got = fast.mulmod(ints_to_limbs(xs, L), ints_to_limbs(ys, L), m)
    assert limbs_to_ints(got) == [x * y % m for x, y in zip(xs, ys, strict=True)]


@pytest.mark.parametrize(
    "m",
    [
        (1 << 256) - 189,  # just below R: every REDC row carries out
        (1 << 255) + 1,  # just above R / 2: the largest quotient digits
        (1 << 512) - 1,
        (1 << 4096) - 1,
        (1 << 4095) + 1,
        (1 << 4093) + 3,  # a top limb with spare bits
        (1 << 320) - 1,  # five limbs: the limb count outside the unrolled reduction
    ],
    ids=["256-max", "256-min", "512-ones", "4096-ones", "4096-min", "4094", "320-ones"],
)
def test_portable_montgomery_at_the_edges(m):
    """The portable reduction on operands that drive every carry chain to its limit:
    broadcast products, squares and powers stay exact."""
    portable = CpuBackend(threads=1, simd=False)
    L = limbs_for(m)
    xs = [m - 1, m - 2, 1, 0, (m + 1) // 2, *(_rng.randrange(m) for _ in range(11))]
    a = ints_to_limbs(xs, L)
    for y in (m - 1, (m - 1) // 2, 1):
        got = portable.mulmod(a, ints_to_limbs([y], L), m)
        assert limbs_to_ints(got) == [x * y % m for x in xs]
    es = [(1 << 64) - 1, 2, 1, 0, 65537, *(_rng.getrandbits(64) for _ in range(11))]
    got = portable.powmod(a, ints_to_limbs(es, 1), m)
    assert limbs_to_ints(got) == [pow(x, e, m) for x, e in zip(xs, es, strict=True)]


def test_many_small_threaded_calls_finish_and_agree():
    """Calls return once all their rows are done, not when helpers exit: a burst of small
    two-thread calls (helpers may start after the caller did all the work) stays exact."""
    two = CpuBackend(threads=2)
    m = M64
    a, b = residues(m, 40), residues(m, 40)
    want = [x * y % m for x, y in zip(limbs_to_ints(a), limbs_to_ints(b), strict=True)]
    for _ in range(300):
        assert limbs_to_ints(two.mulmod(a, b, m)) == want


def test_threaded_failure_reports_the_first_bad_row_every_time():
    """A failing chunk stops the rest of the call without leaving it waiting for them."""
    two = CpuBackend(threads=2, simd=False)
    m = M64
    a = residues(m, 2000, units=True)
    a[1500] = 0
    a[1999] = 0
    for _ in range(20):
        with pytest.raises(ValueError, match="element 1500 has no inverse"):
            two.invmod(a, m)
