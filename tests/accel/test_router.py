"""Routing, calibration and the CPU fallback, with real OpenCL (PoCL) faults injected."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import accel
from accel import backends, lwe
from accel.backends import ROUTED_OPS, BackendError, Calibration, calibrator, router
from accel.backends.base import ints_to_limbs, limbs_to_ints
from tests.accel.reference_backend import ReferenceBackend

M = random.Random(3).getrandbits(256) | (1 << 255) | 1  # 4 limbs
L = 4


@pytest.fixture(autouse=True)
def isolated_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fresh policy, an empty calibration directory and healthy backends for every test."""
    monkeypatch.setenv(router.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(router.FAULT_ENV, raising=False)
    backends.set_policy("fastest-healthy")
    backends.set_probe_interval(None)
    backends.reload_calibration()
    cpu_factory = router._REGISTRY["cpu"]
    try:
        backends.get("cpu")
    except BackendError:
        # Until the C extension is built, Python integers stand in for the CPU backend.
        backends.register("cpu", ReferenceBackend)
    yield tmp_path / "cache"
    if router._REGISTRY["cpu"] is not cpu_factory:
        backends.register("cpu", cpu_factory)
    monkeypatch.delenv(router.FAULT_ENV, raising=False)
    backends.set_policy("fastest-healthy")
    backends.set_probe_interval(None)
    backends.reload_calibration()
    backends.probe(["opencl"])


def operands(count: int = 6) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    rng = random.Random(count)
    xs = [0, 1, M - 1] + [rng.randrange(M) for _ in range(count - 3)]
    ys = [M - 1, M - 1, M - 1] + [rng.randrange(M) for _ in range(count - 3)]
    return ints_to_limbs(xs, L), ints_to_limbs(ys, L), xs, ys


def test_available_lists_every_backend_with_health() -> None:
    listed = {entry["name"]: entry for entry in backends.available()}
    assert {"cpu", "opencl", "cuda"} <= set(listed)
    for entry in listed.values():
        assert set(entry) == {"name", "devices", "healthy", "reason", "loaded"}
        assert entry["healthy"] or entry["reason"]  # an unhealthy backend always says why
    assert listed["opencl"]["healthy"] is True and listed["opencl"]["devices"]
    assert listed["opencl"]["loaded"] is True and listed["opencl"]["reason"] == ""
    assert listed["cpu"]["healthy"] is True


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backends.resolve("tpu")
    with pytest.raises(ValueError, match="unknown backend"), accel.use("tpu"):
        pass
    with pytest.raises(ValueError, match="unknown policy"):
        backends.set_policy("random")


def test_explicit_and_forced_choices() -> None:
    assert backends.resolve(op="mulmod", size=10**6).name == "cpu"  # uncalibrated: CPU
    with accel.use("opencl"):
        assert backends.resolve(op="mulmod", size=1).name == "opencl"
        assert backends.resolve("cpu", op="mulmod").name == "cpu"  # backend= wins over use()
    assert backends.resolve("opencl").name == "opencl"
    ref = ReferenceBackend()
    assert backends.resolve(ref) is ref


def test_policy_and_calibration_decide(isolated_router: Path) -> None:
    path = backends.set_calibration({"opencl": {"mulmod": 100}})
    assert path == isolated_router / router.CALIBRATION_FILE
    assert json.loads(path.read_text())["thresholds"] == {"opencl": {"mulmod": 100}}
    assert backends.resolve(op="mulmod", size=99).name == "cpu"  # small batches stay home
    assert backends.resolve(op="mulmod", size=100).name == "opencl"
    assert backends.resolve(op="powmod", size=10**6).name == "cpu"  # not calibrated for it
    backends.set_policy("cpu-only")
    assert backends.resolve(op="mulmod", size=10**6).name == "cpu"
    backends.set_policy("fastest-healthy")
    # A new process reads the file back.
    router._CALIBRATION = None
    assert backends.calibration().thresholds == {"opencl": {"mulmod": 100}}
    assert backends.resolve(op="mulmod", size=100).name == "opencl"


def test_bad_calibration_is_rejected_and_a_corrupt_file_ignored(
    isolated_router: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        backends.set_calibration({"opencl": {"": 1}})
    with pytest.raises(ValueError, match="must be an int >= 0"):
        backends.set_calibration({"opencl": {"mulmod": -1}})
    isolated_router.mkdir(parents=True)
    (isolated_router / router.CALIBRATION_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="accel.backends"):
        assert backends.reload_calibration() == Calibration()
    assert "unreadable calibration" in caplog.text


@pytest.mark.parametrize("kind", ["kernel", "lost", "oom"])
def test_fault_falls_back_to_cpu_with_identical_result(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, xs, ys = operands()
    want = backends.get("cpu").mulmod(a, b, M)
    assert limbs_to_ints(want) == [x * y % M for x, y in zip(xs, ys, strict=True)]
    with accel.use("opencl"):
        routed = backends.resolve(op="mulmod", size=len(xs))
        assert routed.name == "opencl"
        with backends.inject_fault("opencl", "mulmod", kind), caplog.at_level(
            logging.WARNING, logger="accel.backends"
        ):
            got = routed.mulmod(a, b, M)
        np.testing.assert_array_equal(got, want)
        assert "opencl failed in mulmod" in caplog.text
        assert not router.is_healthy("opencl")
        entry = next(e for e in backends.available() if e["name"] == "opencl")
        assert entry["healthy"] is False and "injected fault" in entry["reason"]
        # While unhealthy, even a forced choice runs on the CPU.
        assert backends.resolve(op="mulmod").name == "cpu"
        assert backends.probe(["opencl"]) == {"opencl": True}
        assert backends.resolve(op="mulmod").name == "opencl"


def test_probe_keeps_a_still_failing_device_out() -> None:
    a, b, _, _ = operands()
    with backends.inject_fault("opencl", "*", "lost"):
        backends.resolve("opencl").mulmod(a, b, M)
        assert backends.probe(["opencl"]) == {"opencl": False}
        assert backends.resolve("opencl").name == "cpu"
    assert backends.probe(["opencl"]) == {"opencl": True}


def test_probe_interval_brings_the_device_back_by_itself() -> None:
    a, b, _, _ = operands()
    with backends.inject_fault("opencl", "mulmod", "kernel"):
        backends.resolve("opencl").mulmod(a, b, M)
    assert not router.is_healthy("opencl")
    assert backends.resolve("opencl").name == "cpu"  # no interval: waits for probe()
    backends.set_probe_interval(0)
    assert backends.resolve("opencl").name == "opencl"


def test_fault_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(9)
    xs = [rng.randrange(M) for _ in range(4)]
    es = [0, 1, rng.getrandbits(200), M - 1]
    base, exp = ints_to_limbs(xs, L), ints_to_limbs(es, L)
    monkeypatch.setenv(router.FAULT_ENV, "opencl:powmod:oom")
    got = backends.resolve("opencl").powmod(base, exp, M)
    assert limbs_to_ints(got) == [pow(x, e, M) for x, e in zip(xs, es, strict=True)]
    assert not router.is_healthy("opencl")
    monkeypatch.setenv(router.FAULT_ENV, "opencl:powmod:melted")
    with pytest.raises(ValueError, match="kind one of kernel, lost, oom"):
        router.raise_injected_fault("opencl", "powmod")


def test_fixed_base_table_moves_to_the_cpu_on_fault() -> None:
    g, exp_bits = 5, 100
    routed = backends.resolve("opencl")
    table = routed.fixed_base_table(g, M, exp_bits)
    assert table.backend == "opencl"
    es = [0, 1, (1 << exp_bits) - 1, 12345678901234567890]
    exp = ints_to_limbs(es, 2)
    with backends.inject_fault("opencl", "powmod_fixed", "kernel"):
        got = routed.powmod_fixed(table, exp)
    assert limbs_to_ints(got) == [pow(g, e, M) for e in es]
    # The CPU can also be handed the device's table directly through the router.
    assert limbs_to_ints(backends.resolve("cpu").powmod_fixed(table, exp)) == limbs_to_ints(got)


def test_bad_input_is_not_a_device_fault() -> None:
    a, _, _, _ = operands()
    with pytest.raises(ValueError):
        backends.resolve("opencl").mulmod(a, a[:2], M)
    assert router.is_healthy("opencl")


def test_fault_injection_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"), backends.inject_fault(
        "opencl", "mulmod", "fire"
    ):
        pass
    with pytest.raises(ValueError, match="unknown op"), backends.inject_fault("opencl", "sort"):
        pass


def test_crossover_is_where_the_device_wins_from_then_on() -> None:
    assert calibrator.crossover([(16, 2.0, 1.0), (64, 0.9, 1.0), (256, 1.0, 2.0)]) == 64
    assert calibrator.crossover([(16, 0.5, 1.0), (64, 2.0, 1.0), (256, 1.0, 2.0)]) == 256
    assert calibrator.crossover([(16, 0.5, 1.0), (64, 0.5, 1.0)]) == 16
    assert calibrator.crossover([(16, 2.0, 1.0), (64, 2.0, 1.0)]) is None
    assert calibrator.crossover([]) is None


def test_calibrate_measures_every_routed_op_and_set_calibration_saves_it(
    isolated_router: Path,
) -> None:
    sizes = (2, 8)
    cal = backends.calibrate(backends=["opencl"], bits=128, sizes=sizes, quick=True)
    # every routed op has an entry: a threshold, or None where the CPU always won
    assert set(cal.thresholds) == {"opencl"}
    assert set(cal.thresholds["opencl"]) == set(ROUTED_OPS)
    assert {"encrypt", "decrypt"} <= cal.ops("opencl")
    for op, threshold in cal.thresholds["opencl"].items():
        unit = calibrator.UNITS.get(ROUTED_OPS[op], 1)
        assert threshold is None or threshold in {size * unit for size in sizes}, op
    assert set(cal.timings) == {"cpu", "opencl"}
    assert set(cal.timings["opencl"]) == set(ROUTED_OPS.values())
    assert cal.bits == 128 and cal.quick and cal.measured_at
    assert not (isolated_router / router.CALIBRATION_FILE).exists()  # measuring installs nothing
    path = backends.set_calibration(cal)
    assert path == isolated_router / router.CALIBRATION_FILE
    assert Calibration.load(path) == cal == backends.calibration()
    for op, threshold in cal.thresholds["opencl"].items():
        if threshold is not None:
            assert backends.resolve(op=op, size=threshold).name == "opencl"
    with pytest.raises(ValueError, match="cannot calibrate sort"):
        backends.calibrate(["sort"])


def test_calibration_documents_round_trip(tmp_path: Path) -> None:
    cal = Calibration(thresholds={"opencl": {"encrypt": 64, "decrypt": None}},
                      timings={"cpu": {"encrypt": {16: 0.5}}, "opencl": {"encrypt": {16: 0.25}}},
                      bits=512, quick=True, measured_at="2025-01-01T00:00:00Z",
                      skipped={"cuda": "no NVIDIA driver"})
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    assert Calibration.load(cal.save(tmp_path / "c.json")) == cal
    assert cal.ops_per_s("opencl") == {"encrypt": {"16": 64.0}}
    # a version 1 file (thresholds only) still reads
    (tmp_path / "v1.json").write_text('{"version": 1, "thresholds": {"cuda": {"encrypt": 256}}}')
    assert Calibration.load(tmp_path / "v1.json").thresholds == {"cuda": {"encrypt": 256}}
    with pytest.raises(ValueError, match="unknown calibration version"):
        Calibration.from_dict({"version": 9})


def test_every_op_the_accel_code_routes_is_calibrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encryption, decryption, the arithmetic and the NTT ask the router only for ops that
    the calibration measures: otherwise they could never leave the CPU."""
    from accel.ntt import Plan
    from accel.ntt.primes import primes
    from accel.paillier import keygen

    seen: set[str] = set()
    choose = router._choose

    def spy(op: str, size: int) -> str:
        seen.add(op)
        return choose(op, size)

    monkeypatch.setattr(router, "_choose", spy)
    pk, sk = keygen(256)
    x = pk.encrypt(np.array([1.5, -2.0, 3.0]))
    y = (x * np.array([2.0, -1.0, 3.0]) + x) @ np.array([[1.0, -2.0], [0.5, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(sk.decrypt(y), [28.5, 27.0])
    assert sk.decrypt(np.sum(-x)) == pytest.approx(-2.5)
    y.to_bytes()  # a computed array is re-randomised first
    plan = Plan(16, primes(30, 1, 16))
    plan.polymul(np.ones((1, 1, 16), np.uint64), np.ones((1, 1, 16), np.uint64))
    lwe.Matrix(np.ones((4, 8), np.uint8)).mul(np.ones((1, 8), np.uint32))
    assert {"encrypt", "decrypt", "ntt", "lwe"} <= seen
    assert seen == set(ROUTED_OPS)


def test_routed_encrypt_and_decrypt_follow_a_calibration_favouring_opencl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from accel.paillier import keygen

    opencl = backends.get("opencl")
    calls: list[str] = []
    for method in ("powmod_fixed", "powmod"):
        real = getattr(opencl, method)

        def counted(*args: object, _real=real, _name=method) -> object:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(opencl, method, counted)
    pk, sk = keygen(256)
    values = np.arange(8.0) - 3.5
    backends.set_calibration({"opencl": {"encrypt": 4, "decrypt": 4}}, save=False)
    backends.set_policy("fastest-healthy")
    enc = pk.encrypt(values)
    assert calls == ["powmod_fixed"]  # the DJN randomness ran on PoCL
    np.testing.assert_array_equal(sk.decrypt(enc), values)
    assert calls == ["powmod_fixed", "powmod", "powmod"]  # CRT decryption, mod p^2 and q^2
    # below the threshold, and under "cpu-only", both stay on the CPU
    calls.clear()
    np.testing.assert_array_equal(sk.decrypt(pk.encrypt(values[:3])), values[:3])
    backends.set_policy("cpu-only")
    np.testing.assert_array_equal(sk.decrypt(pk.encrypt(values)), values)
    assert calls == []


def test_survey_with_refresh_probes_and_the_router_follows_it() -> None:
    with backends.inject_fault("opencl", "*", "lost"):
        entry = next(e for e in backends.available(refresh=True) if e["name"] == "opencl")
        assert entry["healthy"] is False and entry["loaded"] is True
        assert entry["reason"]
        with accel.use("opencl"):
            assert backends.resolve(op="mulmod").name == "cpu"
    entry = next(e for e in backends.available(refresh=True) if e["name"] == "opencl")
    assert entry["healthy"] is True and entry["reason"] == ""
    cuda = next(e for e in backends.available() if e["name"] == "cuda")
    if not cuda["loaded"]:  # no CUDA runtime or NVIDIA driver here: absent, with the reason
        assert cuda["healthy"] is False and cuda["devices"] == [] and cuda["reason"]


def test_a_backend_that_cannot_start_is_listed_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PEC_OPENCL_DEVICE", "no-such-device")
    backends.register("opencl-elsewhere", "accel.backends.opencl.backend:OpenCLBackend")
    try:
        entry = next(e for e in backends.available() if e["name"] == "opencl-elsewhere")
        assert entry["healthy"] is False and entry["devices"] == []
        assert "no OpenCL device name contains 'no-such-device'" in entry["reason"]
        with pytest.raises(BackendError, match="not available"):
            backends.resolve("opencl-elsewhere")
    finally:
        backends.unregister("opencl-elsewhere")
    assert "opencl-elsewhere" not in backends.names()
