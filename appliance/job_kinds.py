"""The job kinds the daemon runs: benchmark, calibrate, selftest, burnin, keygen.

Each kind validates its params up front (a bad request is refused at submit time, never half
run) and reports progress through ``ctx.progress``, which is also where it is cancelled.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import numpy as np

import accel.backends
from accel.backends.base import Backend, int_to_limbs, ints_to_limbs, limbs_for, limbs_to_ints
from appliance import audit
from appliance.backend_survey import describe_error
from appliance.jobs import JobContext, JobKind

# a prime modulus: a ** (p - 1) == 1 (mod p) for every a, a self-checking workload
MERSENNE_521 = (1 << 521) - 1
BENCH_BITS = (512, 1024, 2048, 3072, 4096)
KEY_BITS = (1024, 2048, 3072, 4096)


class Params:
    """Checked access to a job's params; unknown keys are refused."""

    def __init__(self, params: dict[str, Any], allowed: set[str]) -> None:
        unknown = sorted(set(params) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"unknown param(s) {', '.join(unknown)}; known: {known}")
        self.params = params

    def int(self, key: str, default: int, lo: int, hi: int,
            choices: tuple[int, ...] | None = None) -> int:
        value = self.params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{key} must be one of {', '.join(map(str, choices))}, got {value}")
        if not lo <= value <= hi:
            raise ValueError(f"{key} must be between {lo} and {hi}, got {value}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.params.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value

    def backend(self, key: str = "backend") -> str | None:
        value = self.params.get(key)
        if value is None:
            return None
        if value not in (*accel.backends.names(), "all"):
            raise ValueError(
                f"{key} must be one of {', '.join([*accel.backends.names(), 'all'])}, "
                f"got {value!r}"
            )
        return value


def _loaded_backends(ctx: JobContext) -> tuple[list[Backend], dict[str, str]]:
    """Backends that load, and the reason for each that does not."""
    loaded, missing = [], {}
    for name in accel.backends.names():
        try:
            loaded.append(accel.backends.get(name))
        except Exception as exc:  # an absent driver or runtime is a finding, not a crash
            missing[name] = describe_error(exc)
            ctx.log(f"{name}: not available: {missing[name]}")
    return loaded, missing


def _random_batch(count: int, modulus: int) -> list[int]:
    return [secrets.randbelow(modulus - 2) + 2 for _ in range(count)]


# benchmark ------------------------------------------------------------------------------

def validate_benchmark(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params, {"bits", "quick", "backend"})
    return {"bits": p.int("bits", 2048, 512, 4096, BENCH_BITS), "quick": p.bool("quick", False),
            "backend": p.backend()}


def run_benchmark(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    from accel.bench import paillier as bench  # loaded by the jobs that run it

    ctx.log(f"Paillier benchmark, {params['bits']} bits, quick={params['quick']}")
    kwargs: dict[str, Any] = {"bits": params["bits"], "quick": params["quick"],
                              "progress": ctx.progress}
    if params.get("backend"):
        kwargs["backend"] = params["backend"]
    result = bench.run(**kwargs)
    ctx.log("benchmark finished")
    return result


# selftest -------------------------------------------------------------------------------

def validate_selftest(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params, {"batch"})
    return {"batch": p.int("batch", 16, 1, 4096)}


def _conformance(backend: Backend, batch: int) -> dict[str, bool]:
    """mulmod and powmod on random residues against Python's integers."""
    checks = {"health_probe": bool(backend.health_probe())}
    modulus = secrets.randbits(1024) | (1 << 1023) | 1
    limbs = limbs_for(modulus)
    a, b = _random_batch(batch, modulus), _random_batch(batch, modulus)
    e = [secrets.randbits(256) for _ in range(batch)]
    got = limbs_to_ints(backend.mulmod(ints_to_limbs(a, limbs), ints_to_limbs(b, limbs), modulus))
    checks["mulmod"] = got == [x * y % modulus for x, y in zip(a, b, strict=True)]
    got = limbs_to_ints(backend.powmod(ints_to_limbs(a, limbs), ints_to_limbs(e, 4), modulus))
    checks["powmod"] = got == [pow(x, y, modulus) for x, y in zip(a, e, strict=True)]
    return checks


def run_selftest(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    loaded, missing = _loaded_backends(ctx)
    report: dict[str, Any] = {
        name: {"ok": None, "reason": f"not available: {why}"} for name, why in missing.items()
    }
    for i, backend in enumerate(loaded):
        ctx.progress(100 * i / max(1, len(loaded)), f"checking {backend.name}")
        try:
            checks = _conformance(backend, params["batch"])
            failed = [name for name, ok in checks.items() if not ok]
            report[backend.name] = {"ok": not failed, "checks": checks,
                                    "reason": f"wrong results: {', '.join(failed)}" if failed
                                    else None, "devices": backend.devices()}
        except Exception as exc:
            report[backend.name] = {"ok": False, "reason": describe_error(exc)}
        ctx.log(f"{backend.name}: {'ok' if report[backend.name]['ok'] else 'FAILED'}")
    bad = [name for name, r in report.items() if r["ok"] is False]
    if not loaded:
        raise RuntimeError("selftest: no backend could be loaded: " + "; ".join(
            f"{name}: {why}" for name, why in missing.items()))
    if bad:
        raise RuntimeError("selftest failed: " + "; ".join(
            f"{name}: {report[name]['reason']}" for name in bad))
    return {"ok": True, "batch": params["batch"], "backends": report}


# calibrate ------------------------------------------------------------------------------

def validate_calibrate(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params, {"max_batch", "bits"})
    return {"max_batch": p.int("max_batch", 1024, 16, 65536),
            "bits": p.int("bits", 2048, 512, 8192)}


def _throughput(fn: Any, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / max(time.perf_counter() - start, 1e-9)


def run_calibrate(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Throughput of each healthy backend per op and batch size, and where each beats the CPU.

    The crossover (the smallest measured batch at which a backend is faster than "cpu") is
    what the router needs to keep small batches on the CPU.
    """
    loaded, missing = _loaded_backends(ctx)
    healthy = [b for b in loaded if b.health_probe()]
    if not healthy:
        raise RuntimeError("calibrate: no healthy backend to measure")
    modulus = secrets.randbits(params["bits"]) | (1 << (params["bits"] - 1)) | 1
    limbs = limbs_for(modulus)
    sizes = [s for s in (16, 64, 256, 1024, 4096, 16384, 65536) if s <= params["max_batch"]]
    measured: dict[str, dict[str, dict[str, float]]] = {}
    steps, done = len(healthy) * len(sizes), 0
    for backend in healthy:
        per_op: dict[str, dict[str, float]] = {"mulmod": {}, "powmod": {}}
        for size in sizes:
            ctx.progress(100 * done / steps, f"{backend.name}: batch {size}")
            a = ints_to_limbs(_random_batch(size, modulus), limbs)
            e = np.tile(int_to_limbs(secrets.randbits(256), 4), (size, 1))
            per_op["mulmod"][str(size)] = _throughput(
                lambda b=backend, a=a: b.mulmod(a, a, modulus), size)
            per_op["powmod"][str(size)] = _throughput(
                lambda b=backend, a=a, e=e: b.powmod(a, e, modulus), size)
            done += 1
        measured[backend.name] = per_op
        ctx.log(f"{backend.name}: measured {len(sizes)} batch sizes")
    crossover: dict[str, dict[str, int | None]] = {}
    cpu = measured.get("cpu")
    for name, per_op in measured.items():
        crossover[name] = {}
        for op, by_size in per_op.items():
            if name == "cpu" or cpu is None:
                crossover[name][op] = 0 if name == "cpu" else None
                continue
            wins = [int(s) for s, rate in by_size.items() if rate > cpu[op][s]]
            crossover[name][op] = min(wins) if wins else None
    calibration = {"bits": params["bits"], "sizes": sizes, "ops_per_s": measured,
                   "crossover": crossover, "unavailable": missing,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ctx.store.set_setting("calibration", calibration)
    # the router's table: per device backend and op, the batch size from which it wins
    thresholds = {
        name: {op: size for op, size in ops.items() if size is not None}
        for name, ops in crossover.items() if name != "cpu"
    }
    calibration["thresholds"] = {name: ops for name, ops in thresholds.items() if ops}
    try:
        accel.backends.set_calibration(calibration["thresholds"])
        calibration["applied"] = True
    except Exception as exc:  # the table is still stored and shown
        calibration["applied"] = False
        ctx.log(f"the router did not take the calibration: {describe_error(exc)}")
    ctx.store.set_setting("calibration", calibration)
    return calibration


# burnin ---------------------------------------------------------------------------------

def validate_burnin(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params, {"seconds"})
    return {"seconds": p.int("seconds", 60, 1, 86400)}


def run_burnin(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Hardware acceptance: self-checking exponentiations for ``seconds``.

    Every round computes a ** (p - 1) mod p for a Mersenne prime p, which must be 1, on
    Python's integers and on each healthy backend; any other value is an arithmetic fault.
    """
    loaded, _ = _loaded_backends(ctx)
    healthy = [b for b in loaded if b.health_probe()]
    limbs = limbs_for(MERSENNE_521)
    exp = int_to_limbs(MERSENNE_521 - 1, limbs)[None, :]
    used = [b.name for b in healthy]
    rounds, faults = 0, {"python": 0, **{name: 0 for name in used}}
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < params["seconds"]:
        ctx.progress(100 * elapsed / params["seconds"],
                     f"round {rounds + 1}, {sum(faults.values())} faults")
        values = _random_batch(8, MERSENNE_521)
        faults["python"] += sum(pow(v, MERSENNE_521 - 1, MERSENNE_521) != 1 for v in values)
        for backend in list(healthy):
            try:
                out = backend.powmod(ints_to_limbs(values, limbs), exp, MERSENNE_521)
                faults[backend.name] += sum(v != 1 for v in limbs_to_ints(out))
            except Exception as exc:  # a device that errors is a fault; stop using it
                faults[backend.name] += 1
                healthy.remove(backend)
                ctx.log(f"{backend.name}: failed in round {rounds + 1}: {describe_error(exc)}")
        rounds += 1
    total = sum(faults.values())
    ctx.log(f"burn-in: {rounds} rounds, {total} faults")
    if total:
        raise RuntimeError(f"burn-in found {total} arithmetic faults: {faults}")
    return {"seconds": params["seconds"], "rounds": rounds, "faults": faults,
            "backends": used}


# keygen ---------------------------------------------------------------------------------

def validate_keygen(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params, {"bits"})
    return {"bits": p.int("bits", 2048, 1024, 4096, KEY_BITS)}


def run_keygen(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    trust = ctx.trust
    ctx.progress(0, f"generating a {params['bits']}-bit Paillier key")
    ctx.log(f"Paillier key generation, {params['bits']} bits; the private key is sealed by "
            "the HSM key-encryption key")
    key = trust.keygen(params["bits"])
    ctx.log(f"key {key['id']} sealed, fingerprint {key['fingerprint']}")
    audit.record("system", "key.generate", f"key:{key['id']}",
                 {"job": ctx.job_id, "bits": key["bits"], "fingerprint": key["fingerprint"]})
    return key


KINDS: dict[str, JobKind] = {
    k.name: k
    for k in (
        JobKind("benchmark", run_benchmark, validate_benchmark, None,
                "Paillier benchmark of the accel backends against python-paillier"),
        JobKind("calibrate", run_calibrate, validate_calibrate, None,
                "measure each backend so the router knows when a device wins"),
        JobKind("selftest", run_selftest, validate_selftest, None,
                "each backend's conformance on a small batch"),
        JobKind("burnin", run_burnin, validate_burnin, None,
                "self-checking exponentiations for a given time (hardware acceptance)"),
        JobKind("keygen", run_keygen, validate_keygen, "mpc",
                "generate a Paillier key sealed by the HSM"),
    )
}
