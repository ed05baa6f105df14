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
from accel import backends
from accel.backends import BackendError, router
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
        assert set(entry) == {"name", "devices", "healthy", "reason"}
    assert listed["opencl"]["healthy"] is True and listed["opencl"]["devices"]
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
    assert backends.calibration() == {"opencl": {"mulmod": 100}}
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
        assert backends.reload_calibration() == {}
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
    assert router.crossover([(16, 2.0, 1.0), (64, 0.9, 1.0), (256, 1.0, 2.0)]) == 64
    assert router.crossover([(16, 0.5, 1.0), (64, 2.0, 1.0), (256, 1.0, 2.0)]) == 256
    assert router.crossover([(16, 0.5, 1.0), (64, 0.5, 1.0)]) == 16
    assert router.crossover([(16, 2.0, 1.0), (64, 2.0, 1.0)]) is None
    assert router.crossover([]) is None


def test_calibrate_measures_and_saves_a_table_the_router_uses(isolated_router: Path) -> None:
    sizes = (2, 8)
    table = backends.calibrate(["opencl"], bits=128, sizes=sizes)
    assert set(table) == {"opencl"}
    assert set(table["opencl"]) <= set(router.CALIBRATED_OPS)
    assert all(v in sizes for v in table["opencl"].values())
    saved = json.loads((isolated_router / router.CALIBRATION_FILE).read_text())
    assert saved["thresholds"] == table
    for op, threshold in table["opencl"].items():
        assert backends.resolve(op=op, size=threshold).name == "opencl"
    assert backends.resolve(op="invmod", size=10**6).name == "cpu"  # never calibrated


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
