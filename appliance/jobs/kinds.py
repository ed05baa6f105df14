"""The job kinds the daemon runs: benchmark, calibrate, selftest, burnin, keygen.

Each kind validates its params up front (a bad request is refused at submit time, never half
run) and reports progress through ``ctx.progress``, which is also where it is cancelled.
Each registers itself (``@job_kind``) when this module is imported. The kinds that measure the
hardware (benchmark, calibrate, burnin) are exclusive: the runner runs them alone, so that
other jobs' load does not skew the figures they record.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import accel.backends
from accel.backends.base import Backend, int_to_limbs, ints_to_limbs, limbs_for, limbs_to_ints
from accel.backends.calibrator import QUICK_SIZES as CALIBRATION_QUICK_SIZES
from accel.backends.calibrator import SIZES as CALIBRATION_SIZES
from appliance.jobs.registry import job_kind
from appliance.jobs.runner import JobContext, describe_error
from appliance.trust import audit

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


@job_kind("benchmark", validate=validate_benchmark,
          description="Paillier benchmark of the accel backends against python-paillier",
          exclusive=True)
def run_benchmark(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    from accel.bench import paillier as bench  # loaded by the jobs that run it

    ctx.log(f"Paillier benchmark, {params['bits']} bits, quick={params['quick']}")
    kwargs: dict[str, Any] = {"bits": params["bits"], "quick": params["quick"],
                              "progress": ctx.progress}
    wanted = params.get("backend")
    if wanted:
        kwargs["backend"] = wanted
    if wanted and wanted != "all":
        # refuse before the key generation: a run that can measure nothing must not end "done"
        _require_backend(ctx, wanted)
    result = bench.run(**kwargs)
    if not result.get("backends"):
        skipped = "; ".join(f"{name}: {why}" for name, why in
                            (result.get("skipped") or {}).items())
        raise RuntimeError("the benchmark measured nothing: no backend could run"
                           + (f" ({skipped})" if skipped else ""))
    ctx.log("benchmark finished")
    return result


def _require_backend(ctx: JobContext, name: str) -> None:
    """Fail with the reason and the alternatives when backend ``name`` cannot run here."""
    statuses = {status["name"]: status for status in accel.backends.available(refresh=True)}
    if statuses.get(name, {}).get("healthy"):
        return
    healthy = [n for n, status in statuses.items() if status["healthy"]]
    why = statuses[name]["reason"] if name in statuses else "not a registered backend"
    ctx.log(f"{name}: not available: {why}")
    raise RuntimeError(f"backend {name} is not available on this node ({why}): available are "
                       f"{', '.join(healthy) or 'none'}")


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


@job_kind("selftest", validate=validate_selftest,
          description="each backend's conformance on a small batch")
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
    p = Params(params, {"max_batch", "bits", "quick"})
    return {"max_batch": p.int("max_batch", max(CALIBRATION_SIZES), 16, 65536),
            "bits": p.int("bits", 2048, 512, 8192), "quick": p.bool("quick", False)}


@job_kind("calibrate", validate=validate_calibrate,
          description="measure each backend so the router knows when a device wins",
          exclusive=True)
def run_calibrate(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """The router's calibration (accel.backends.calibrate: every routed op, encryption and
    decryption included, on each healthy accelerator against the CPU), installed in the router
    and saved where the router reads it back at the next start: the state directory."""
    grid = CALIBRATION_QUICK_SIZES if params["quick"] else CALIBRATION_SIZES
    sizes = [s for s in grid if s <= params["max_batch"]]
    ctx.log(f"calibrating every routed op, {params['bits']}-bit keys, batches {sizes}")
    calibration = accel.backends.calibrate(bits=params["bits"], sizes=sizes,
                                           quick=params["quick"], progress=ctx.progress)
    for name, why in calibration.skipped.items():
        ctx.log(f"{name}: not measured: {why}")
    if not calibration.thresholds:
        ctx.log("no accelerator to measure: every op stays on the CPU")
    path = accel.backends.set_calibration(calibration)
    for name, ops in calibration.thresholds.items():
        wins = {op: size for op, size in ops.items() if size is not None}
        ctx.log(f"{name}: beats the CPU from batch {wins}" if wins
                else f"{name}: never beats the CPU here")
    ctx.log(f"the router routes by it now; saved to {path}")
    return {**calibration.to_dict(), "path": str(path)}


# burnin ---------------------------------------------------------------------------------

def validate_burnin(params: dict[str, Any]) -> dict[str, Any]:
    p = Params(params, {"seconds"})
    return {"seconds": p.int("seconds", 60, 1, 86400)}


@job_kind("burnin", validate=validate_burnin,
          description="self-checking exponentiations for a given time (hardware acceptance)",
          exclusive=True)
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


@job_kind("keygen", validate=validate_keygen, requires="mpc",
          description="generate a Paillier key sealed by the HSM")
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
