"""Measuring the calibration: every routed op, timed on each accelerator against the CPU.

For each workload of ``calibration.ROUTED_OPS`` the same kernels the accel code runs for that
op (an encryption is a fixed-base exponentiation and a product, a decryption two half-size
exponentiations, ...) are timed at growing batch sizes on the CPU and on each healthy
accelerator; the threshold is the smallest size from which the accelerator wins at every
larger measured size (``crossover``). This is the only calibrator: the node daemon's
``calibrate`` job calls :func:`calibrate` and installs what it returns.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gmpy2
import numpy as np

from accel.backends import router
from accel.backends.base import Backend, BackendError, FixedBaseTable, limbs_for
from accel.backends.calibration import ROUTED_OPS, Calibration

SIZES = (16, 64, 256, 1024, 4096, 16384)
QUICK_SIZES = (16, 64, 256)
MAX_SECONDS = 2.0  # a point slower than this on either side ends the growth of the sizes
QUICK_MAX_SECONDS = 0.25
REPEATS = 3  # best of: the first run of a size also pays for allocation and page faults
RANDOMNESS_MARGIN_BITS = 128  # as accel.paillier.keys: DJN exponents are |n|/2 + 128 bits
PLAINTEXT_BITS = 64  # one limb: the width of an encoded plaintext factor
NTT_N = 1024  # one measured NTT element is a polynomial of this size over one prime
NTT_PRIME_BITS = 50
LWE_COLS = 1024  # one measured LWE element is a database row of this many bytes

Progress = Callable[[float, str], None]
Batch = Callable[[], object]  # one timed call, its inputs already made


@dataclass(frozen=True)
class _Key:
    """Paillier-shaped moduli, so that every workload runs at the sizes real keys have."""

    bits: int
    nsquare: int
    psquare: int
    qsquare: int

    @classmethod
    def make(cls, bits: int, seed: int) -> _Key:
        rng = random.Random(seed)

        def prime(size: int) -> int:
            return int(gmpy2.next_prime(rng.getrandbits(size) | (1 << (size - 1))))

        p, q = prime(bits // 2), prime(bits - bits // 2)
        return cls(bits, (p * q) ** 2, p * p, q * q)


def _residues(rng: np.random.Generator, count: int, modulus: int) -> np.ndarray:
    limbs = limbs_for(modulus)
    rows = rng.integers(0, 2**64, size=(count, limbs), dtype=np.uint64)
    rows[:, -1] %= np.uint64(modulus >> (64 * (limbs - 1)))  # below the modulus
    return rows


def _exponents(rng: np.random.Generator, count: int, bits: int) -> np.ndarray:
    rows = rng.integers(0, 2**64, size=(count, -(-bits // 64)), dtype=np.uint64)
    rows[:, -1] >>= np.uint64(-bits % 64)
    return rows


# A workload prepares, for one backend and key, a function from a batch size to a timed call.
Workload = Callable[[Backend, _Key, np.random.Generator], Callable[[int], Batch]]


def _encrypt(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    exp_bits = key.bits // 2 + RANDOMNESS_MARGIN_BITS
    # built once per key and kept, as PublicKey.randomness_table does
    table: FixedBaseTable = be.fixed_base_table(3, key.nsquare, exp_bits)

    def batch(count: int) -> Batch:
        gm, x = _residues(rng, count, key.nsquare), _exponents(rng, count, exp_bits)
        return lambda: be.mulmod(gm, be.powmod_fixed(table, x), key.nsquare)

    return batch


def _decrypt(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    ep = _exponents(rng, 1, key.bits // 2)
    eq = _exponents(rng, 1, key.bits - key.bits // 2)

    def batch(count: int) -> Batch:
        cp, cq = _residues(rng, count, key.psquare), _residues(rng, count, key.qsquare)
        return lambda: (be.powmod(cp, ep, key.psquare), be.powmod(cq, eq, key.qsquare))

    return batch


def _powmod(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    def batch(count: int) -> Batch:
        c, e = _residues(rng, count, key.nsquare), _exponents(rng, count, PLAINTEXT_BITS)
        return lambda: be.powmod(c, e, key.nsquare)

    return batch


def _mulmod(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    def batch(count: int) -> Batch:
        a, b = _residues(rng, count, key.nsquare), _residues(rng, count, key.nsquare)
        return lambda: be.mulmod(a, b, key.nsquare)

    return batch


def _multiexp(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    # one output of ``count`` bases (an encrypted vector times a plaintext vector): the shape
    # whose work the device has to split, P * K * M = count
    def batch(count: int) -> Batch:
        bases = _residues(rng, count, key.nsquare)[None]
        exps = _exponents(rng, count, PLAINTEXT_BITS)[:, None, :]
        return lambda: be.multiexp(bases, exps, key.nsquare)

    return batch


def _prodmod(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    def batch(count: int) -> Batch:
        a = _residues(rng, count, key.nsquare)[:, None, :]
        return lambda: be.prodmod(a, key.nsquare)

    return batch


def _invmod(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    def batch(count: int) -> Batch:
        a = _residues(rng, count, key.nsquare)
        a[:, 0] |= np.uint64(1)  # never 0; sharing p or q with n^2 is negligible
        return lambda: be.invmod(a, key.nsquare)

    return batch


def _ntt(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    from accel.ntt import Plan  # accel.ntt imports accel.backends: load it only here
    from accel.ntt.primes import primes

    plan = Plan(NTT_N, primes(NTT_PRIME_BITS, 1, NTT_N))
    q = int(plan.moduli[0])

    def batch(count: int) -> Batch:
        a = rng.integers(0, q, size=(count, 1, NTT_N), dtype=np.uint64)
        return lambda: plan.forward(a, backend=be)

    return batch


def _lwe(be: Backend, key: _Key, rng: np.random.Generator) -> Callable[[int], Batch]:
    from accel.lwe import Matrix  # accel.lwe imports accel.backends: load it only here

    # ``count`` rows of LWE_COLS bytes against one query: the memory pass of a private query
    def batch(count: int) -> Batch:
        matrix = Matrix(rng.integers(0, 256, size=(count, LWE_COLS), dtype=np.uint8))
        query = rng.integers(0, 1 << 32, size=(1, LWE_COLS), dtype=np.uint64).astype(np.uint32)
        return lambda: matrix.mul(query, backend=be)

    return batch


WORKLOADS: dict[str, Workload] = {
    "encrypt": _encrypt,
    "decrypt": _decrypt,
    "powmod": _powmod,
    "mulmod": _mulmod,
    "multiexp": _multiexp,
    "prodmod": _prodmod,
    "invmod": _invmod,
    "ntt": _ntt,
    "lwe": _lwe,
}
# The router's size unit per measured element, where it is not one element.
UNITS = {"ntt": NTT_N, "lwe": LWE_COLS}


def crossover(points: Sequence[tuple[int, float, float]]) -> int | None:
    """The smallest batch size from which the device is faster at every larger measured size,
    given ``(size, device seconds, cpu seconds)`` in increasing size; None if it never is."""
    best = None
    for size, device_s, cpu_s in reversed(points):
        if device_s >= cpu_s:
            break
        best = size
    return best


def _seconds(batch: Batch, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        batch()
        best = min(best, time.perf_counter() - start)
    return best


def calibrate(
    ops: Sequence[str] | None = None,
    *,
    backends: Sequence[str] | None = None,
    bits: int = 2048,
    sizes: Sequence[int] | None = None,
    quick: bool = False,
    max_seconds_per_point: float | None = None,
    progress: Progress | None = None,
) -> Calibration:
    """Measure the routing table for ``ops`` (default: every routed op) on ``backends``
    (default: every accelerator) against the CPU, for keys of ``bits`` bits.

    ``sizes`` are batch sizes in elements (polynomials of ``NTT_N`` for the NTT; thresholds
    are stored in the router's units); they stop growing for a backend once a point takes
    ``max_seconds_per_point`` on either side. ``quick`` measures fewer, smaller sizes once
    each instead of the best of ``REPEATS``. ``progress(percent, message)`` is called before
    each point (and may raise to cancel). Every measured backend gets an entry for every op:
    its threshold, or ``None`` when the CPU was always faster. Nothing is installed: pass the
    result to ``set_calibration``.
    """
    wanted = list(ROUTED_OPS) if ops is None else list(dict.fromkeys(ops))
    unknown = [op for op in wanted if op not in ROUTED_OPS]
    if unknown:
        raise ValueError(f"cannot calibrate {', '.join(unknown)}; routed ops: "
                         f"{', '.join(ROUTED_OPS)}")
    grid = sorted(set(sizes if sizes is not None else QUICK_SIZES if quick else SIZES))
    if not grid or grid[0] < 1:
        raise ValueError(f"sizes must be positive batch sizes, got {sizes!r}")
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 64:
        raise ValueError(f"bits must be an integer >= 64, got {bits!r}")
    cap = max_seconds_per_point or (QUICK_MAX_SECONDS if quick else MAX_SECONDS)
    repeats = 1 if quick else REPEATS

    candidates = [n for n in router.names() if n != router.FALLBACK] if backends is None \
        else list(backends)
    devices: list[str] = []
    skipped: dict[str, str] = {}
    for name in candidates:
        if name == router.FALLBACK:
            raise ValueError(f"{router.FALLBACK!r} is what the others are measured against")
        try:
            router.get(name)
        except BackendError:
            skipped[name] = router._UNAVAILABLE.get(name, "failed to start")
            continue
        if not router.is_healthy(name):
            skipped[name] = router._HEALTH[name].reason or "unhealthy"
            continue
        devices.append(name)

    key = _Key.make(bits, seed=1)
    workloads = list(dict.fromkeys(ROUTED_OPS[op] for op in wanted))
    timings: dict[str, dict[str, dict[int, float]]] = {
        name: {} for name in (router.FALLBACK, *devices)
    }
    found: dict[str, dict[str, int | None]] = {name: {} for name in devices}
    steps = max(1, len(workloads) * len(grid))
    for w_index, workload in enumerate(workloads if devices else []):
        unit = UNITS.get(workload, 1)
        prepared = {}
        for name in (router.FALLBACK, *devices):
            if name in skipped:
                continue
            try:
                prepared[name] = WORKLOADS[workload](router.get(name), key,
                                                     np.random.default_rng(w_index))
                prepared[name](grid[0])()  # compile kernels, JIT, upload tables: not timed
            except Exception as exc:
                if name == router.FALLBACK:
                    raise
                _drop(name, workload, exc, skipped, found, timings)
                prepared.pop(name, None)
        active = [name for name in devices if name in prepared]
        points: dict[str, list[tuple[int, float, float]]] = {name: [] for name in active}
        for s_index, size in enumerate(grid):
            if not active:
                break
            if progress is not None:
                progress(100 * (w_index * len(grid) + s_index) / steps,
                         f"{workload}: batch {size}")
            cpu_s = _seconds(prepared[router.FALLBACK](size), repeats)
            timings[router.FALLBACK].setdefault(workload, {})[size * unit] = cpu_s
            for name in list(active):
                try:
                    device_s = _seconds(prepared[name](size), repeats)
                except Exception as exc:
                    _drop(name, workload, exc, skipped, found, timings)
                    active.remove(name)
                    continue
                timings[name].setdefault(workload, {})[size * unit] = device_s
                points[name].append((size * unit, device_s, cpu_s))
                if max(device_s, cpu_s) > cap:
                    active.remove(name)
        for name, measured in points.items():
            if name in skipped:
                continue
            threshold = crossover(measured)
            for op in wanted:
                if ROUTED_OPS[op] == workload:
                    found[name][op] = threshold
            router.log.info("calibration of %s, %s: %s", name, workload,
                            "never beats the CPU" if threshold is None
                            else f"beats the CPU from {threshold}")
    if progress is not None:
        progress(100, "calibrated")
    return Calibration(
        thresholds={name: ops_ for name, ops_ in found.items() if name not in skipped},
        timings={name: t for name, t in timings.items() if name not in skipped},
        bits=bits,
        quick=quick,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        skipped=skipped,
    )


def _drop(name: str, workload: str, exc: BaseException, skipped: dict[str, str],
          found: dict[str, dict[str, int | None]],
          timings: dict[str, dict[str, dict[int, float]]]) -> None:
    """A device that fails while being measured gets no table (it stays off every op) and is
    marked unhealthy, as a failure in a routed call would."""
    reason = f"failed in {workload}: {type(exc).__name__}: {exc}"
    skipped[name] = reason
    found.pop(name, None)
    timings.pop(name, None)
    router.mark_unhealthy(name, reason)
    router.log.warning("calibration: backend %s %s", name, reason)
