#!/usr/bin/env python3
"""``make gpu-check``: the CUDA tests and the GPU benchmarks, reported as one JSON document.

Runs on a machine with an NVIDIA GPU and reaches no network. Each section runs in its own
try/except and reports its error in the document instead of stopping the run; a global time
budget (``PEC_GPU_CHECK_BUDGET`` seconds, default 280) keeps the whole check under five
minutes: sections that would start too late are reported as skipped.

A GPU machine may lack the CPU backend's build inputs (cffi, gmp.h) and gmpy2. When the
checkout brings them, the check first makes them usable, each step reported in the document:

- ``.whl/``: wheels for this machine's Python (cffi, pycparser, setuptools, gmpy2, phe),
  installed with ``pip install --no-index --target`` into ``PEC_GPU_CHECK_SITE`` (default
  /tmp/site), or unpacked there where pip itself is missing; that folder goes first on
  ``sys.path`` and on ``PYTHONPATH`` for the subprocesses;
- ``.gpu/include/``: ``gmp.h`` (used only where the system has none; the linker gets a
  ``libgmp.so`` link to the runtime's ``libgmp.so.10``) and CPython 3.11 headers, used only
  where this Python's own ``Python.h`` is missing (the cffi module uses the limited API, which
  later Pythons keep);
- then the CPU backend's C extension is built in place, and the Paillier benchmark runs per
  backend (``python -m accel.bench paillier --backend cpu`` and ``--backend cuda``).

Measured (2048-bit Paillier, the device part of each operation, inputs and outputs moved
between host and device inside the timing):

- DJN encryption: fixed-base ``h_s ** r mod n^2`` (table on the device) times ``1 + m n``;
- full-randomness encryption: ``r ** n mod n^2`` times ``1 + m n``;
- decryption: ``c ** (p-1) mod p^2`` and ``c ** (q-1) mod q^2`` (the CRT halves; the
  remaining per-element host arithmetic is linear in the size of n);
- the same three through ``accel.paillier`` (end to end, host work included) if it imports;
- NTT n = 65536 over 64 limbs of 60-bit primes, data resident on the device;
- ``python -m accel.bench paillier`` on the CPU backend and on this backend, if the
  Paillier layer imports;
- the router's calibration against the CPU backend, if that backend runs here.

Every measured kernel's first results are checked against Python integers. Their 2048-bit key
comes from ``accel.paillier.primes``, which needs gmpy2 (from the wheels above).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import json
import os
import platform
import secrets
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGET_S = float(os.environ.get("PEC_GPU_CHECK_BUDGET", "280"))
# Another backend name runs the same measurements elsewhere (a smoke run of this script), and
# a comma-separated list of section names runs only those.
BACKEND = os.environ.get("PEC_GPU_CHECK_BACKEND", "cuda")
ONLY = {s for s in os.environ.get("PEC_GPU_CHECK_ONLY", "").split(",") if s}
TARGETS = {
    "djn_encrypt_per_s": (">=", 200_000),
    "full_randomness_encrypt_per_s": (">=", 20_000),
    "decrypt_per_s": (">=", 50_000),
    "ntt_65536_x64_us_per_limb": ("<=", 2.0),
}
SITE = Path(os.environ.get("PEC_GPU_CHECK_SITE", "/tmp/site"))
WHEELS = Path(os.environ.get("PEC_GPU_CHECK_WHEELS", str(ROOT / ".whl")))
CARRIED_INCLUDE = ROOT / ".gpu" / "include"
GMP_LINK_DIR = Path(os.environ.get("PEC_GPU_CHECK_GMPLIB", "/tmp/gmplib"))
KEY_BITS = 2048
RANDOMNESS_MARGIN_BITS = 128  # DJN exponent = n_bits / 2 + margin, as accel.paillier uses

_START = time.monotonic()
REPORT: dict[str, Any] = {"check": "pec-accel gpu-check", "budget_s": BUDGET_S, "sections": {}}


def remaining() -> float:
    return BUDGET_S - (time.monotonic() - _START)


class Skip(Exception):
    """A section that cannot run here for a reason that is not a failure of the code."""


def section(name: str, needs_s: float, run: Callable[..., Any], *args: Any,
            always: bool = False) -> Any:
    """Run one part of the check; its results, or its error, land in REPORT["sections"]."""
    out: dict[str, Any] = {}
    REPORT["sections"][name] = out
    if ONLY and name not in ONLY and not always:
        out.update(status="skipped", error="not selected by PEC_GPU_CHECK_ONLY")
        return None
    if remaining() < needs_s:
        out.update(status="skipped",
                   error=f"time budget: {remaining():.0f}s left, needs {needs_s:.0f}s")
        return None
    t0 = time.monotonic()
    value = None
    try:
        value = run(out, *args)
        out.setdefault("status", "ok")
    except Skip as why:
        out.update(status="skipped", error=str(why))
    except Exception as exc:
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc().splitlines()[-8:]
    out["seconds"] = round(time.monotonic() - t0, 2)
    return value


# -- helpers -------------------------------------------------------------------------------


def random_residues(rng: np.random.Generator, count: int, modulus: int) -> np.ndarray:
    """``count`` uniform-ish limb rows below ``modulus`` (top limb kept below the modulus')."""
    from accel.backends.base import int_to_limbs, limbs_for

    limbs = limbs_for(modulus)
    top = int(int_to_limbs(modulus, limbs)[-1])
    rows = rng.integers(0, 2**64, size=(count, limbs), dtype=np.uint64)
    rows[:, -1] = rng.integers(0, max(1, top), size=count, dtype=np.uint64)
    return rows


def random_exponents(rng: np.random.Generator, count: int, bits: int) -> np.ndarray:
    limbs = -(-bits // 64)
    rows = rng.integers(0, 2**64, size=(count, limbs), dtype=np.uint64)
    spare = limbs * 64 - bits
    if spare:
        rows[:, -1] >>= np.uint64(spare)
    return rows


def rate(run: Callable[[int], Any], want_s: float = 0.6, start: int = 1024,
         most: int = 1 << 17) -> dict[str, float]:
    """Operations per second of ``run(count)``: warm up, then grow the batch until one call
    takes about ``want_s``; the best of two timed calls counts."""
    run(min(start, 64))  # compile and build tables outside the timing
    count = start
    while True:
        t0 = time.perf_counter()
        run(count)
        elapsed = time.perf_counter() - t0
        if elapsed >= want_s / 2 or count >= most or remaining() < 20:
            break
        count = min(most, count * max(2, int(want_s / max(elapsed, 1e-6))))
    t0 = time.perf_counter()
    run(count)
    elapsed = min(elapsed, time.perf_counter() - t0)
    return {"batch": count, "seconds": round(elapsed, 4), "per_s": round(count / elapsed, 1)}


def check_rows(got: np.ndarray, want: list[int], what: str) -> None:
    from accel.backends.base import limbs_to_ints

    if limbs_to_ints(got[: len(want)]) != want:
        raise AssertionError(f"{what}: device result differs from Python integers")


# -- sections ------------------------------------------------------------------------------


def environment(out: dict[str, Any]) -> None:
    out["python"] = platform.python_version()
    out["numpy"] = np.__version__
    for module in ("cupy", "pycuda", "numba", "pyopencl"):
        spec = importlib.util.find_spec(module)
        out[module] = None
        if spec is not None:
            with contextlib.suppress(Exception):
                out[module] = getattr(__import__(module), "__version__", "present")
    query = "name,driver_version,memory.total,compute_cap"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi_error"] = f"{type(exc).__name__}: {exc}"
        return
    if done.returncode == 0 and done.stdout.strip():
        fields = [f.strip() for f in done.stdout.strip().splitlines()[0].split(",")]
        out["gpu"] = dict(zip(query.split(","), fields, strict=False))
        REPORT["device"] = out["gpu"].get("name")
        REPORT["driver"] = out["gpu"].get("driver_version")
    else:
        out["nvidia_smi_error"] = (done.stderr or done.stdout).strip()[-400:]


def _use_site() -> None:
    """Put the wheel folder first for this process and for every subprocess it starts."""
    if str(SITE) not in sys.path:
        sys.path.insert(1, str(SITE))
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(SITE), str(ROOT), *old]))


def _dist_info(wheel: Path) -> str:
    """``name-version.dist-info``, the folder a wheel installs its metadata in."""
    name, version = wheel.name.split("-")[:2]
    return f"{name}-{version}.dist-info".lower()


def install_wheels(out: dict[str, Any]) -> None:
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        raise Skip(f"no wheels in {WHEELS}: nothing to install")
    out["wheels"] = [w.name for w in wheels]
    present = {p.name.lower() for p in SITE.glob("*.dist-info")}
    todo = [w for w in wheels if _dist_info(w) not in present]
    out["target"] = str(SITE)
    if not todo:
        out["method"] = "already installed"
    else:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--target", str(SITE), *map(str, todo)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            out["method"] = "pip"
        else:
            # Without pip a wheel is still a zip laid out as site-packages wants it.
            out["pip_error"] = (done.stderr or done.stdout).strip()[-300:]
            SITE.mkdir(parents=True, exist_ok=True)
            for wheel in todo:
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(SITE)
            out["method"] = "unzip"
    _use_site()


def _has_header(name: str) -> bool:
    return any(Path(d, name).exists()
               for d in ("/usr/include", "/usr/local/include", "/usr/include/x86_64-linux-gnu"))


def _gmp_link_dir(out: dict[str, Any]) -> Path | None:
    """A folder with ``libgmp.so`` for the linker where only the runtime's ``.so.10`` exists."""
    dirs = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
    if any(Path(d, "libgmp.so").exists() for d in dirs):
        return None
    found = ctypes.util.find_library("gmp")
    runtime = next((Path(d, found) for d in dirs if found and Path(d, found).exists()), None)
    runtime = runtime or next((Path(d, "libgmp.so.10") for d in dirs
                               if Path(d, "libgmp.so.10").exists()), None)
    if runtime is None:
        raise RuntimeError("no libgmp.so.10 on this machine: the CPU backend cannot link")
    GMP_LINK_DIR.mkdir(parents=True, exist_ok=True)
    link = GMP_LINK_DIR / "libgmp.so"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(runtime)
    out["libgmp_link"] = f"{link} -> {runtime}"
    return GMP_LINK_DIR


def _cpu_backend_works(out: dict[str, Any]) -> bool:
    probe = ("import json; from accel import backends; b = backends.get('cpu'); "
             "print(json.dumps({'devices': b.devices(), 'healthy': b.health_probe()}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    if done.returncode == 0:
        out["cpu_backend"] = json.loads(done.stdout.strip().splitlines()[-1])
        return bool(out["cpu_backend"]["healthy"])
    out["cpu_backend_error"] = (done.stderr or done.stdout).strip().splitlines()[-1:]
    return False


def build_cpu_extension(out: dict[str, Any]) -> None:
    if _cpu_backend_works(out):
        out["build"] = "already built"
        return
    env = dict(os.environ)
    include = [p for p in env.get("C_INCLUDE_PATH", "").split(os.pathsep) if p]
    if not _has_header("gmp.h"):
        if not (CARRIED_INCLUDE / "gmp.h").exists():
            raise RuntimeError(f"no gmp.h on this machine nor in {CARRIED_INCLUDE}")
        include.append(str(CARRIED_INCLUDE))
        out["gmp_h"] = str(CARRIED_INCLUDE / "gmp.h")
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        carried = CARRIED_INCLUDE / "python3.11"
        if not (carried / "Python.h").exists():
            raise RuntimeError("no Python.h for this interpreter nor carried headers")
        include += [str(CARRIED_INCLUDE), str(carried)]
        out["python_h"] = f"{carried} (limited API)"
    env["C_INCLUDE_PATH"] = os.pathsep.join(dict.fromkeys(include))
    link_dir = _gmp_link_dir(out)
    if link_dir is not None:
        env["LIBRARY_PATH"] = os.pathsep.join(
            [str(link_dir), *[p for p in env.get("LIBRARY_PATH", "").split(os.pathsep) if p]])
    # The builder is loaded by path: importing the package would try the missing extension.
    build = ("import importlib.util as u; "
             "s = u.spec_from_file_location('pec_cpu_build', 'accel/backends/cpu/build.py'); "
             "m = u.module_from_spec(s); s.loader.exec_module(m); "
             "print(m.ffibuilder.compile(tmpdir='.', verbose=False))")
    done = subprocess.run([sys.executable, "-c", build], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=max(30, min(180, remaining() - 60)))
    if done.returncode != 0:
        out["build_output"] = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError("building the CPU backend's C extension failed")
    out["build"] = done.stdout.strip().splitlines()[-1]
    if not _cpu_backend_works(out):
        raise RuntimeError("the CPU backend was built but does not work")


def backend_section(out: dict[str, Any]) -> Any:
    from accel import backends

    out["available"] = backends.available()
    cuda = backends.get(BACKEND)
    out["backend"] = BACKEND
    out["devices"] = cuda.devices()
    out["health_probe"] = cuda.health_probe()
    if not out["health_probe"]:
        raise AssertionError("the cuda backend's health probe failed")
    return cuda


def paillier_kernels(out: dict[str, Any], cuda: Any, rng: np.random.Generator) -> None:
    from accel.backends.base import int_to_limbs, limbs_for, limbs_to_ints
    from accel.paillier.primes import random_prime  # needs gmpy2: the wheels section ran first

    t0 = time.perf_counter()
    p, q = random_prime(KEY_BITS // 2), random_prime(KEY_BITS // 2)
    n, n2 = p * q, (p * q) ** 2
    out["keygen_s"] = round(time.perf_counter() - t0, 2)
    L = limbs_for(n2)
    hs = pow(secrets.randbelow(n - 2) + 2, 2 * n, n2)  # DJN base: a 2n-th power
    exp_bits = KEY_BITS // 2 + RANDOMNESS_MARGIN_BITS

    t0 = time.perf_counter()
    table = cuda.fixed_base_table(hs, n2, exp_bits)
    out["djn_table_build_s"] = round(time.perf_counter() - t0, 2)

    def djn(count: int) -> np.ndarray:
        r = random_exponents(rng, count, exp_bits)
        gm = random_residues(rng, count, n2)  # stands for 1 + m n (same cost)
        return cuda.mulmod(cuda.powmod_fixed(table, r), gm, n2)

    r = random_exponents(rng, 4, exp_bits)
    got = cuda.powmod_fixed(table, r)
    check_rows(got, [pow(hs, e, n2) for e in limbs_to_ints(r)], "DJN fixed-base powmod")
    out["djn_encrypt"] = rate(djn)
    REPORT["measurements"]["djn_encrypt_per_s"] = out["djn_encrypt"]["per_s"]

    n_exp = int_to_limbs(n, limbs_for(n))[None, :]

    def full(count: int) -> np.ndarray:
        base = random_residues(rng, count, n)
        base = np.concatenate([base, np.zeros((count, L - base.shape[1]), np.uint64)], axis=1)
        gm = random_residues(rng, count, n2)
        return cuda.mulmod(cuda.powmod(base, n_exp, n2), gm, n2)

    base = random_residues(rng, 4, n2)
    check_rows(cuda.powmod(base, n_exp, n2), [pow(b, n, n2) for b in limbs_to_ints(base)],
               "full-randomness powmod")
    # One element per thread: the batch must fill the device or the rate measures latency.
    lanes = device_lanes(cuda)
    out["full_randomness_encrypt"] = rate(full, start=lanes, most=lanes)
    REPORT["measurements"]["full_randomness_encrypt_per_s"] = (
        out["full_randomness_encrypt"]["per_s"]
    )

    p2, q2 = p * p, q * q
    ep = int_to_limbs(p - 1, limbs_for(p - 1))[None, :]
    eq = int_to_limbs(q - 1, limbs_for(q - 1))[None, :]

    def decrypt(count: int) -> tuple[np.ndarray, np.ndarray]:
        return (cuda.powmod(random_residues(rng, count, p2), ep, p2),
                cuda.powmod(random_residues(rng, count, q2), eq, q2))

    cp = random_residues(rng, 4, p2)
    check_rows(cuda.powmod(cp, ep, p2), [pow(c, p - 1, p2) for c in limbs_to_ints(cp)],
               "decryption powmod")
    out["decrypt"] = rate(decrypt)
    REPORT["measurements"]["decrypt_per_s"] = out["decrypt"]["per_s"]


def device_lanes(backend: Any) -> int:
    """A batch that gives every multiprocessor of a CUDA device 256 elements (256 elsewhere:
    CPU OpenCL devices in smoke runs)."""
    if backend.name != "cuda":
        return 256
    try:
        import cupy

        return int(cupy.cuda.Device().attributes["MultiProcessorCount"]) * 256
    except Exception:
        return 132 * 256  # an H100's count: the check is meant for one


def paillier_layer(out: dict[str, Any], rng: np.random.Generator) -> None:
    try:
        from accel import backends
        from accel.paillier import keygen
    except Exception as exc:  # the layer may need pieces this machine lacks
        raise Skip(f"accel.paillier does not import here: {type(exc).__name__}: {exc}") from exc
    pk, sk = keygen(KEY_BITS)
    with backends.use(BACKEND):
        pk.encrypt(np.ones(4))  # tables and compilation outside the timing
        sk.encrypt(np.ones(4))
        x = rng.standard_normal(4)
        if not np.allclose(sk.decrypt(pk.encrypt(x)), x):
            raise AssertionError("accel.paillier round trip on cuda gave a wrong answer")
        out["encrypt"] = rate(lambda k: pk.encrypt(rng.standard_normal(k)), start=512,
                              most=1 << 15)
        out["encrypt_private_key_holder"] = rate(lambda k: sk.encrypt(rng.standard_normal(k)),
                                                 start=512, most=1 << 15)
        # one element per thread: batches below a device's worth measure latency, not rate
        lanes = device_lanes(backends.get(BACKEND))
        out["encrypt_full_randomness"] = rate(
            lambda k: pk.encrypt(rng.standard_normal(k), full_randomness=True), start=lanes,
            most=lanes)
        cts = pk.encrypt(rng.standard_normal(2 * lanes))
        out["decrypt"] = rate(lambda k: sk.decrypt(cts[: min(k, cts.size)]), start=lanes,
                              most=cts.size)


def _ntt_plan_tables(n: int, count: int) -> Any:
    """An ``accel.ntt.Plan`` when accel.ntt imports (Numba), else the same tables built in
    Python from docs/ntt.md, so that the GPU transform can be measured without Numba."""
    try:
        from accel import ntt

        return ntt.Plan(n=n, moduli=ntt.primes(bits=60, count=count, n=n)), "accel.ntt.Plan"
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("ntt_primes", ROOT / "accel/ntt/primes.py")
    primes_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(primes_mod)  # pure Python; the package __init__ needs Numba
    moduli = primes_mod.primes(bits=60, count=count, n=n)
    log_n = n.bit_length() - 1
    perm = np.zeros(1, dtype=np.int64)
    for _ in range(log_n):
        perm = np.concatenate([perm * 2, perm * 2 + 1])

    class Tables:
        pass

    plan = Tables()
    plan.n, plan.log_n, plan.limbs = n, log_n, count
    plan.moduli = np.array(moduli, dtype=np.uint64)
    names = ("psi_rev", "psi_rev_shoup", "psi_inv_rev", "psi_inv_rev_shoup")
    for name in names:
        setattr(plan, name, np.empty((count, n), dtype=np.uint64))
    plan.n_inv = np.array([pow(n, -1, q) for q in moduli], dtype=np.uint64)
    plan.n_inv_shoup = np.array([(pow(n, -1, q) << 64) // q for q in moduli], dtype=np.uint64)
    for row, q in enumerate(moduli):
        psi = next(r for r in (pow(x, (q - 1) // (2 * n), q) for x in range(2, q))
                   if pow(r, n, q) == q - 1)
        for table, root in ((plan.psi_rev, psi), (plan.psi_inv_rev, pow(psi, -1, q))):
            powers, x = [], 1
            for _ in range(n):
                powers.append(x)
                x = x * root % q
            table[row] = np.array(powers, dtype=np.uint64)[perm]
        for src, dst in ((plan.psi_rev, plan.psi_rev_shoup),
                         (plan.psi_inv_rev, plan.psi_inv_rev_shoup)):
            dst[row] = [(int(w) << 64) // q for w in src[row]]
    return plan, "tables built in Python (accel.ntt needs Numba, absent here)"


def ntt_benchmark(out: dict[str, Any], cuda: Any, rng: np.random.Generator) -> None:
    n, limbs = 65536, 64
    t0 = time.perf_counter()
    plan, source = _ntt_plan_tables(n, limbs)
    out["plan"] = source
    out["plan_build_s"] = round(time.perf_counter() - t0, 2)
    a = (rng.integers(0, 2**63, size=(1, limbs, n), dtype=np.uint64)
         % plan.moduli[None, :, None]).astype(np.uint64)
    # correctness on the full size: the round trip must give the input back
    if not np.array_equal(cuda.ntt_inverse(plan, cuda.ntt_forward(plan, a)), a):
        raise AssertionError("NTT round trip on the GPU did not return the input")
    if source == "accel.ntt.Plan":
        from accel.ntt import cpu

        out["matches_cpu_path"] = bool(np.array_equal(cuda.ntt_forward(plan, a),
                                                      cpu.forward(plan, a)))
        if not out["matches_cpu_path"]:
            raise AssertionError("GPU forward NTT differs from the Numba CPU path")
    data = cuda._upload(a, writable=True)
    for direction in ("forward", "inverse"):
        run = getattr(cuda, f"ntt_{direction}_resident")
        run(plan, data, 1)
        cuda.synchronize()
        best = float("inf")
        for _ in range(10):
            t0 = time.perf_counter()
            run(plan, data, 1)
            cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[f"{direction}_s"] = best
        out[f"{direction}_us_per_limb"] = round(best * 1e6 / limbs, 3)
        out[f"{direction}_ns_per_butterfly"] = round(best * 1e9 / (limbs * n // 2 * 16), 4)
    t0 = time.perf_counter()
    cuda.ntt_forward(plan, a)
    out["forward_with_transfers_us_per_limb"] = round(
        (time.perf_counter() - t0) * 1e6 / limbs, 3)
    REPORT["measurements"]["ntt_65536_x64_us_per_limb"] = out["forward_us_per_limb"]


def lwe_benchmark(out: dict[str, Any], cuda: Any, rng: np.random.Generator) -> None:
    """The private-query pass (accel.lwe) at the shape of 10^6 records with 32-byte labels:
    bit-identical to exact integers on a slice, then one query and a batch of 100 against the
    resident matrix."""
    from accel import lwe

    rows, cols = 8480, 6325
    m = lwe.Matrix(rng.integers(0, 256, size=(rows, cols), dtype=np.uint8))
    q = rng.integers(0, 1 << 32, size=(100, cols), dtype=np.uint64).astype(np.uint32)
    got = cuda.lwe_matmul(m, q[:3])
    want = ((q[:3].astype(object) @ m.entries[:40].T.astype(object)) % (1 << 32)).astype(
        np.uint32)
    if not np.array_equal(got[:, :40], want):
        raise AssertionError("the GPU LWE pass differs from exact integer arithmetic")
    for batch in (1, 100):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            cuda.lwe_matmul(m, q[:batch])
            best = min(best, time.perf_counter() - t0)
        out[f"batch_{batch}_ms"] = round(best * 1e3, 3)
        out[f"batch_{batch}_gb_per_s"] = round(m.entries.nbytes * 1e-9 / best, 2)
    REPORT["measurements"]["lwe_1e6_batch100_ms"] = out["batch_100_ms"]


def cuda_tests(out: dict[str, Any]) -> None:
    limit = max(30, min(170, remaining() - 10))
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests/accel").glob(
            f"test_{BACKEND}*.py"))
        out["files"] = tests
        cmd = [sys.executable, "-m", "pytest", *tests, "-q",
               "-p", "no:cacheprovider", "--continue-on-collection-errors",
               f"--junitxml={junit}"]
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  timeout=limit)
        except subprocess.TimeoutExpired:
            out["status"] = "error"
            out["error"] = f"pytest did not finish within {limit:.0f}s"
            return
        out["returncode"] = done.returncode
        out["summary"] = (done.stdout.strip().splitlines() or [""])[-1]
        if junit.exists():
            suites = ET.parse(junit).getroot()
            counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
            failed = []
            for suite in suites.iter("testsuite"):
                for key in counts:
                    counts[key] += int(suite.get(key, 0))
            for case in suites.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
            counts["passed"] = (counts["tests"] - counts["failures"] - counts["errors"]
                                - counts["skipped"])
            out["counts"] = counts
            out["failed"] = failed[:30]
            REPORT["tests"] = counts
        if done.returncode not in (0, 5):
            out["status"] = "error"
            out["output_tail"] = done.stdout.strip().splitlines()[-25:]


def paillier_bench(out: dict[str, Any], name: str, share: int) -> None:
    """``python -m accel.bench paillier`` on one backend, in its own process and time slot
    (``share``: how many benchmark runs the remaining budget is split between)."""
    try:
        import accel.paillier  # noqa: F401
    except Exception as exc:
        raise Skip(f"accel.paillier does not import here: {type(exc).__name__}: {exc}") from exc
    slot = max(20.0, min(120.0, (remaining() - 40) / share))
    quick = slot < 60
    cmd = [sys.executable, "-m", "accel.bench", "paillier", "--bits", str(KEY_BITS),
           "--backend", name, "--json", *(["--quick"] if quick else [])]
    out.update(command=" ".join(cmd[1:]), quick=quick, limit_s=round(slot))
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=slot)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the benchmark did not finish within {slot:.0f}s") from exc
    if done.returncode != 0:
        out["output_tail"] = (done.stderr or done.stdout).strip().splitlines()[-10:]
        raise RuntimeError(f"the benchmark exited with {done.returncode}")
    result = json.loads(done.stdout)
    out["machine"] = result.get("machine")
    out["skipped"] = result.get("skipped")
    out["ops"] = {
        op: {"accel_ops_s": round(row["accel_ops_s"], 1), "phe_ops_s": round(row["phe_ops_s"], 1),
             "ratio": round(row["ratio"], 2), "target": row["target"]}
        for op, row in result.get("backends", {}).get(name, {}).items()
    }
    if not out["ops"]:
        raise RuntimeError(f"the benchmark measured nothing on {name}: {result.get('skipped')}")


def calibration(out: dict[str, Any]) -> None:
    """What the router's calibration would say here (not saved: a suggestion to review)."""
    from accel import backends

    try:
        backends.get("cpu")
    except Exception as exc:
        raise Skip(f"no CPU backend to calibrate against: {exc}") from exc
    # quick: one run per point, so that all the routed ops fit the section's time
    measured = backends.calibrate(backends=[BACKEND], bits=KEY_BITS,
                                  sizes=(64, 256, 1024, 4096), quick=True,
                                  max_seconds_per_point=0.5)
    out["thresholds"] = measured.thresholds
    out["skipped"] = measured.skipped


def verdicts() -> dict[str, Any]:
    out = {}
    for key, (how, target) in TARGETS.items():
        got = REPORT["measurements"].get(key)
        met = None if got is None else (got >= target if how == ">=" else got <= target)
        out[key] = {"measured": got, "target": f"{how} {target}", "met": met}
    return out


def main() -> int:
    REPORT["measurements"] = {}
    rng = np.random.default_rng()
    section("environment", 1, environment, always=True)
    # before anything imports accel: the CPU backend is looked up once per process
    section("wheels", 5, install_wheels, always=True)
    section("cpu_extension", 20, build_cpu_extension, always=True)
    cuda = section("cuda_backend", 1, backend_section, always=True)
    if cuda is not None:
        section("paillier_kernels", 40, paillier_kernels, cuda, rng)
        section("ntt", 30, ntt_benchmark, cuda, rng)
        section("lwe", 20, lwe_benchmark, cuda, rng)
    section("cuda_tests", 40, cuda_tests)
    section("paillier_bench_cpu", 30, paillier_bench, "cpu", 2)
    section(f"paillier_bench_{BACKEND}", 30, paillier_bench, BACKEND, 1)
    section("paillier_layer", 40, paillier_layer, rng)
    section("calibration", 30, calibration)
    REPORT["targets"] = verdicts()
    REPORT["total_s"] = round(time.monotonic() - _START, 1)
    failed = [k for k, v in REPORT["sections"].items() if v.get("status") == "error"]
    REPORT["ok"] = not failed
    print(json.dumps(REPORT, indent=2, default=str))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
