"""``python -m accel.bench paillier``: accel's Paillier arrays against python-paillier (phe).

Both sides run in the same process on the same machine with the same key. phe (with gmpy2) is
timed on a sample and reported per operation, which is exact for it: phe works one number at
a time. Sizes keep a full 2048-bit run near one minute on two cores.

phe ct+ct is timed on ciphertexts already brought to one exponent, so phe pays no exponent
alignment: the ratio is the conservative one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from accel import backends
from accel.paillier import EncryptedArray, PrivateKey, PublicKey, keygen

# operation -> target speed-up over phe on a 2-core machine
TARGETS = {
    "encrypt": 40.0,
    "encrypt (private key holder)": 80.0,
    "decrypt": 1.8,
    "ct + ct": 10.0,
    "ct x float (random signs)": 10.0,
    "vector(1000) @ matrix(1000x10)": 20.0,
    "sum of 10k": None,
}

Progress = Callable[[int, str], None]


def _timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"encrypt": 64, "decrypt": 32, "add": 2000, "mul": 256, "vec": 100, "sum": 2000,
                "phe": 6, "phe_mul": 40, "phe_add": 400}
    return {"encrypt": 1000, "decrypt": 400, "add": 20000, "mul": 4000, "vec": 1000,
            "sum": 10000, "phe": 24, "phe_mul": 200, "phe_add": 4000}


def _measure_phe(pk: PublicKey, sk: PrivateKey, sz: dict[str, int], rng: np.random.Generator
                 ) -> dict[str, float]:
    """phe seconds per operation."""
    import phe

    pub = phe.PaillierPublicKey(pk.n)
    priv = phe.PaillierPrivateKey(pub, sk.p, sk.q)
    xs = rng.standard_normal(sz["phe"]).tolist()
    t, enc = _timed(lambda: [pub.encrypt(x) for x in xs])
    per = {"encrypt": t / len(xs)}
    per["encrypt (private key holder)"] = per["encrypt"]  # phe has no faster key-holder path
    t, _ = _timed(lambda: [priv.decrypt(e) for e in enc])
    per["decrypt"] = t / len(enc)
    exponent = min(e.exponent for e in enc)
    aligned = [e.decrease_exponent_to(exponent) for e in enc]
    pairs = [(aligned[i % len(aligned)], aligned[(i + 1) % len(aligned)])
             for i in range(sz["phe_add"])]
    t, _ = _timed(lambda: [a + b for a, b in pairs])
    per["ct + ct"] = t / len(pairs)
    ws = (rng.standard_normal(sz["phe_mul"]) * 10).tolist()
    t, _ = _timed(lambda: [aligned[i % len(aligned)] * w for i, w in enumerate(ws)])
    per["ct x float (random signs)"] = t / len(ws)
    # one output column of vector @ matrix: K products and K-1 additions; 10 columns per op
    column = (rng.standard_normal(sz["phe_mul"]) * 10).tolist()

    def dot_column():
        acc = aligned[0] * column[0]
        for i, w in enumerate(column[1:], 1):
            acc = acc + aligned[i % len(aligned)] * w
        return acc

    t, _ = _timed(dot_column)
    per["vector(1000) @ matrix(1000x10)"] = t / len(column) * 1000 * 10
    sum_terms = [aligned[i % len(aligned)] for i in range(sz["phe_add"])]
    t, _ = _timed(lambda: sum(sum_terms[1:], sum_terms[0]))
    per["sum of 10k"] = t / len(sum_terms) * 10000
    return per


def _measure_accel(pk: PublicKey, sk: PrivateKey, backend: str, sz: dict[str, int],
                   rng: np.random.Generator, step: Callable[[str], None]) -> dict[str, float]:
    """accel seconds per operation on ``backend``."""
    per: dict[str, float] = {}
    with backends.use(backend):
        pk.encrypt(np.ones(4))  # builds the fixed-base tables outside the timings
        sk.encrypt(np.ones(4))
        x = rng.standard_normal(sz["encrypt"])
        t, ea = _timed(lambda: pk.encrypt(x))
        per["encrypt"] = t / x.size
        step("encrypt")
        t, _ = _timed(lambda: sk.encrypt(x))
        per["encrypt (private key holder)"] = t / x.size
        step("encrypt (private key holder)")
        part = ea[: sz["decrypt"]]
        t, _ = _timed(lambda: sk.decrypt(part))
        per["decrypt"] = t / part.size
        step("decrypt")
        big = _tiled(ea, sz["add"])
        big2 = _tiled(ea[::-1], sz["add"])
        t, _ = _timed(lambda: big + big2, repeat=2)
        per["ct + ct"] = t / big.size
        step("ct + ct")
        w = rng.standard_normal(sz["mul"]) * 10
        factors = _tiled(ea, sz["mul"])
        t, _ = _timed(lambda: factors * w)
        per["ct x float (random signs)"] = t / w.size
        step("ct x float")
        vec = _tiled(ea, sz["vec"])
        mat = rng.standard_normal((sz["vec"], 10)) * 10
        t, _ = _timed(lambda: vec @ mat)
        per["vector(1000) @ matrix(1000x10)"] = t * (1000 / sz["vec"])
        step("vector @ matrix")
        terms = _tiled(ea, sz["sum"])
        t, _ = _timed(lambda: terms.sum(), repeat=2)
        per["sum of 10k"] = t * (10000 / sz["sum"])
        step("sum")
    return per


def _tiled(ea: EncryptedArray, size: int) -> EncryptedArray:
    """``size`` ciphertexts reusing ``ea``'s (the cost of these operations does not depend on
    which ciphertexts they combine)."""
    reps = -(-size // ea.size)
    return EncryptedArray(ea.public_key, np.tile(ea.data, (reps, 1))[:size].copy(), ea.scale,
                          ea.dtype)


def _available(names: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, skipped = [], {}
    for name in names:
        try:
            be = backends.get(name)
            if not be.health_probe():
                raise RuntimeError("health probe failed")
            ok.append(name)
        except Exception as exc:  # a backend without its runtime is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return ok, skipped


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", load average {:.1f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}{load}"


def run(bits: int = 2048, backend: str | None = None, quick: bool = False,
        progress: Progress | None = None) -> dict:
    """Measure and return ``{"bits", "machine", "phe", "backends": {name: {op: {...}}}}``.

    ``backend`` is one name, ``"all"`` for every registered backend that works here, or None
    for the router's default. ``progress(percent, message)`` is called along the way.
    """
    report = progress or (lambda pct, msg: None)
    names = backends.names() if backend == "all" else [backend or backends.resolve().name]
    names, skipped = _available(names)
    sz = _sizes(quick)
    rng = np.random.default_rng()
    report(1, f"generating a {bits}-bit key")
    pk, sk = keygen(bits)
    report(5, "timing python-paillier")
    phe_per = _measure_phe(pk, sk, sz, rng)
    total_steps = 7 * max(1, len(names))
    done = [0]

    def step(msg: str) -> None:
        done[0] += 1
        report(10 + int(89 * done[0] / total_steps), msg)

    results: dict[str, dict] = {}
    for name in names:
        per = _measure_accel(pk, sk, name, sz, rng, step)
        results[name] = {
            op: {"accel_ops_s": 1.0 / per[op], "phe_ops_s": 1.0 / phe_per[op],
                 "ratio": phe_per[op] / per[op], "target": TARGETS[op]}
            for op in TARGETS
        }
    report(100, "done")
    return {"bits": bits, "quick": quick, "machine": machine(), "phe": "phe 1.5 + gmpy2",
            "backends": results, "skipped": skipped}


def format_table(result: dict) -> str:
    lines = [f"Paillier {result['bits']}-bit, {result['machine']}"]
    for name, ops in result["backends"].items():
        lines.append("")
        lines.append(f"backend {name}")
        lines.append(f"{'operation':34} {'accel ops/s':>12} {'phe ops/s':>11} {'ratio':>8} "
                     f"{'target':>7}")
        for op, row in ops.items():
            target = f"{row['target']:g}x" if row["target"] else "-"
            mark = "" if not row["target"] or row["ratio"] >= row["target"] else "  (below)"
            lines.append(f"{op:34} {row['accel_ops_s']:12.1f} {row['phe_ops_s']:11.1f} "
                         f"{row['ratio']:7.1f}x {target:>7}{mark}")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"skipped backend {name}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accel.bench paillier",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2048, help="key size (default 2048)")
    parser.add_argument("--backend", default=None, help="backend name, or 'all'")
    parser.add_argument("--quick", action="store_true", help="small batches (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    def show(pct: int, msg: str) -> None:
        print(f"[{pct:3d}%] {msg}", file=sys.stderr, flush=True)

    result = run(bits=args.bits, backend=args.backend, quick=args.quick, progress=show)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if result["backends"] else 1
