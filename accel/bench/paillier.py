"""``python -m accel.bench paillier``: accel's Paillier arrays against python-paillier (phe).

Both sides run in the same process on the same machine with the same key. phe (with gmpy2) is
timed on a sample and reported per operation, which is exact for it: phe works one number at
a time. Each operation alternates between the two sides and keeps each side's best time, so
that a busy machine slows both alike. Sizes keep a 2048-bit run on the cpu backend near one
minute on two cores (``--backend all`` adds a run per working backend).

phe ct+ct is timed on ciphertexts already brought to one exponent, so phe pays no exponent
alignment: the ratio is the conservative one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from accel import backends
from accel.bench import machine
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


@dataclass
class Case:
    """One operation measured on both sides: each ``run`` does ``ops`` operations' worth."""

    op: str
    phe_run: Callable[[], Any]
    phe_ops: float
    accel_run: Callable[[], Any]
    accel_ops: float


def _elapsed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"encrypt": 64, "decrypt": 32, "add": 2000, "mul": 256, "vec": 100, "sum": 2000,
                "phe": 6, "phe_mul": 40, "phe_add": 400}
    return {"encrypt": 1000, "decrypt": 400, "add": 20000, "mul": 4000, "vec": 1000,
            "sum": 10000, "phe": 24, "phe_mul": 200, "phe_add": 5000}


def _cases(pk: PublicKey, sk: PrivateKey, sz: dict[str, int], rng: np.random.Generator
           ) -> list[Case]:
    try:
        import phe
    except ImportError:
        raise RuntimeError(
            "the Paillier benchmark measures against python-paillier, which is not installed "
            "(pip install phe==1.5.0)"
        ) from None

    pub = phe.PaillierPublicKey(pk.n)
    priv = phe.PaillierPrivateKey(pub, sk.p, sk.q)
    xs = rng.standard_normal(sz["phe"]).tolist()
    enc = [pub.encrypt(x) for x in xs]
    # phe ct+ct is timed on ciphertexts of one exponent: phe pays no alignment
    exponent = min(e.exponent for e in enc)
    aligned = [e.decrease_exponent_to(exponent) for e in enc]
    pairs = [(aligned[i % len(aligned)], aligned[(i + 1) % len(aligned)])
             for i in range(sz["phe_add"])]
    ws = (rng.standard_normal(sz["phe_mul"]) * 10).tolist()
    sum_terms = [aligned[i % len(aligned)] for i in range(sz["phe_add"])]

    def phe_column():  # one output column of v @ M: K products, K-1 additions
        acc = aligned[0] * ws[0]
        for i, w in enumerate(ws[1:], 1):
            acc = acc + aligned[i % len(aligned)] * w
        return acc

    x = rng.standard_normal(sz["encrypt"])
    pk.encrypt(np.ones(2))  # build the fixed-base tables outside the timings
    sk.encrypt(np.ones(2))
    ea = pk.encrypt(x)
    part = ea[: sz["decrypt"]]
    big, big2 = _tiled(ea, sz["add"]), _tiled(ea[::-1], sz["add"])
    w = rng.standard_normal(sz["mul"]) * 10
    factors = _tiled(ea, sz["mul"])
    vec = _tiled(ea, sz["vec"])
    mat = rng.standard_normal((sz["vec"], 10)) * 10
    terms = _tiled(ea, sz["sum"])
    return [
        Case("encrypt", lambda: [pub.encrypt(v) for v in xs], len(xs),
             lambda: pk.encrypt(x), x.size),
        # phe has no faster path for the key holder: compare with its only encryption
        Case("encrypt (private key holder)", lambda: [pub.encrypt(v) for v in xs], len(xs),
             lambda: sk.encrypt(x), x.size),
        Case("decrypt", lambda: [priv.decrypt(e) for e in enc], len(enc),
             lambda: sk.decrypt(part), part.size),
        Case("ct + ct", lambda: [a + b for a, b in pairs], len(pairs),
             lambda: big + big2, big.size),
        Case("ct x float (random signs)",
             lambda: [aligned[i % len(aligned)] * v for i, v in enumerate(ws)], len(ws),
             lambda: factors * w, w.size),
        Case("vector(1000) @ matrix(1000x10)", phe_column, len(ws) / 10000,
             lambda: vec @ mat, sz["vec"] / 1000),
        Case("sum of 10k", lambda: sum(sum_terms[1:], sum_terms[0]), len(sum_terms) / 10000,
             lambda: terms.sum(), sz["sum"] / 10000),
    ]


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


def run(bits: int = 2048, backend: str | None = None, quick: bool = False,
        progress: Progress | None = None, rounds: int | None = None) -> dict:
    """Measure and return ``{"bits", "machine", "backends": {name: {op: {...}}}, ...}``.

    ``backend`` is one name, ``"all"`` for every registered backend that works here, or None
    for the router's default. ``progress(percent, message)`` is called along the way. Each
    operation runs ``rounds`` times on each side, alternating, and the best time counts: on a
    shared machine that keeps both sides under the same conditions.
    """
    report = progress or (lambda pct, msg: None)
    names = backends.names() if backend == "all" else [backend or backends.resolve().name]
    names, skipped = _available(names)
    rounds = rounds or (1 if quick else 5)
    sz = _sizes(quick)
    rng = np.random.default_rng()
    report(1, f"generating a {bits}-bit key")
    pk, sk = keygen(bits)
    results: dict[str, dict] = {}
    total = len(TARGETS) * max(1, len(names))
    done = 0
    for name in names:
        rows = {}
        with backends.use(name):
            for case in _cases(pk, sk, sz, rng):
                phe_t = accel_t = float("inf")
                for _ in range(rounds):
                    phe_t = min(phe_t, _elapsed(case.phe_run))
                    accel_t = min(accel_t, _elapsed(case.accel_run))
                phe_ops, accel_ops = case.phe_ops / phe_t, case.accel_ops / accel_t
                rows[case.op] = {"accel_ops_s": accel_ops, "phe_ops_s": phe_ops,
                                 "ratio": accel_ops / phe_ops, "target": TARGETS[case.op]}
                done += 1
                report(2 + int(97 * done / total), f"{name}: {case.op}")
        results[name] = rows
    report(100, "done")
    return {"bits": bits, "quick": quick, "rounds": rounds, "machine": machine(),
            "phe": "phe 1.5 + gmpy2", "backends": results, "skipped": skipped}


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
