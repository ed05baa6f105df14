"""One party of the joint order statistics on SecretFlow's SPU: the engine of the stats
operator's comparison-based statistics (min, max, median, quantiles).

    ENGINE_PYTHON appliance/operators/stats/spu_engine.py --rank R --addresses A0,A1[,A2] \
        --input X.npy --receivers 0[,1...] --quantiles Q1,Q2,... --link-id ID --wait-for-go

Run by the engine venv's interpreter (spu 0.9.5, numpy<2), never the appliance's, so it
imports only the standard library, numpy, jax and spu. ``X.npy`` is this party's rows of the
job's columns (float64, rows x columns). Every party secret-shares its matrix with SPU's own
``Io`` (the shares go to their parties over the link); SPU then concatenates the parties'
rows, sorts each column obliviously, and opens, to the receivers only, each column's minimum,
maximum and the requested quantiles (NumPy's default linear interpolation between the two
neighbouring order statistics). Protocols: CHEETAH for two parties (semi-honest 2PC, OT and
HE based, no dealer), ABY3 for three (replicated sharing, honest majority). The ring is
FM128 with 40 fractional bits. The last stdout line is one JSON object: ``results`` (at a
receiver), the row counts, and timings.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any

# the engine scripts share their link set-up (a plain module beside the operator packages)
sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: never shadows
from spu_link import brpc_link

FRACTION_BITS = 40


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one party of SPU order statistics")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--addresses", required=True,
                   help="HOST:PORT of every party in rank order (this party's: where it listens)")
    p.add_argument("--input", required=True, help="this party's rows, float64 .npy")
    p.add_argument("--receivers", required=True, help="ranks that learn the results")
    p.add_argument("--quantiles", default="", help="Q1,Q2,... in [0, 1]")
    p.add_argument("--link-id", default="stats")
    p.add_argument("--link-timeout-s", type=float, default=120.0)
    p.add_argument("--wait-for-go", action="store_true")
    return p.parse_args(argv)


def _pack(share: Any) -> bytes:
    parts = [share.meta, *share.share_chunks]
    return struct.pack(f"<I{len(parts)}I", len(parts), *map(len, parts)) + b"".join(parts)


def _unpack(data: bytes, libspu: Any) -> Any:
    (count,) = struct.unpack_from("<I", data)
    sizes = struct.unpack_from(f"<{count}I", data, 4)
    at, parts = 4 + 4 * count, []
    for size in sizes:
        parts.append(data[at:at + size])
        at += size
    share = libspu.Share()
    share.meta, share.share_chunks = parts[0], parts[1:]
    return share


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_import = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 end to end, as the inputs
    import jax.numpy as jnp
    import numpy as np
    import spu
    import spu.libspu as libspu
    import spu.utils.frontend as fe
    import_s = time.perf_counter() - t_import

    addresses = args.addresses.split(",")
    k = len(addresses)
    lctx = brpc_link([f"p{i}" for i in range(k)], addresses, args.rank, args.link_id,
                     args.link_timeout_s)
    lctx.barrier()
    if args.wait_for_go:
        line = sys.stdin.readline().strip()
        if line != "go":
            raise SystemExit(f"stopped before the input was ready ({line or 'stdin closed'})")
    lctx.barrier()
    cpu0, t0 = _cpu_s(), time.perf_counter()

    x = np.load(args.input).astype(np.float64)
    if x.ndim != 2:
        raise SystemExit(f"the input is not a rows x columns matrix (shape {x.shape})")
    shapes = [json.loads(s) for s in lctx.all_gather(json.dumps(list(x.shape)))]
    cols = {s[1] for s in shapes}
    if len(cols) != 1:
        raise SystemExit(f"the parties hold different numbers of columns: {sorted(cols)}")
    rows = [s[0] for s in shapes]
    total = sum(rows)
    receivers = [int(r) for r in args.receivers.split(",")]
    quantiles = [float(q) for q in args.quantiles.split(",") if q.strip()]

    if k not in (2, 3):
        raise SystemExit(f"order statistics run among 2 or 3 parties, not {k}")
    protocol = libspu.ProtocolKind.CHEETAH if k == 2 else libspu.ProtocolKind.ABY3
    names = ["min", "max"] + [f"q{i}" for i in range(len(quantiles))]
    if total == 0:  # nothing to order: every statistic is undefined
        empty = {n: [None] * x.shape[1] for n in names} if args.rank in receivers else None
        return {"rank": args.rank, "protocol": protocol.name, "rows": rows, "results": empty,
                "quantiles": quantiles, "import_s": round(import_s, 4), "run_s": 0.0,
                "cpu_s": 0.0, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    cfg = libspu.RuntimeConfig(protocol=protocol, field=libspu.FieldType.FM128,
                               fxp_fraction_bits=FRACTION_BITS)
    io = spu.Io(k, cfg)
    # a party without rows gives no input (SPU shares no empty matrix); it still computes
    present = [j for j in range(k) if rows[j] > 0]
    held: dict[int, Any] = {}
    if rows[args.rank] > 0:
        mine = io.make_shares(x, libspu.Visibility.VIS_SECRET)
        held[args.rank] = mine[args.rank]
        for j in range(k):
            if j != args.rank:
                lctx.send(j, _pack(mine[j]))
    for j in present:
        if j != args.rank:
            held[j] = _unpack(lctx.recv(j), libspu)
    rt = spu.Runtime(lctx, cfg)
    for j in present:
        rt.set_var(f"in{j}", held[j])

    # the public positions of each requested order statistic (NumPy's "linear" method)
    picks = []
    for q in quantiles:
        pos = q * (total - 1)
        lo = math.floor(pos)
        picks.append((lo, min(lo + 1, total - 1), pos - lo))

    def order_stats(*parts: Any) -> Any:
        # columns x rows: SPU's reductions and sort work along the last axis
        v = jnp.concatenate(parts, axis=0).T
        if not picks:
            return jnp.min(v, axis=1), jnp.max(v, axis=1)
        s = jnp.sort(v, axis=1)  # sorted anyway: its ends are the minimum and the maximum
        out = [s[:, 0], s[:, -1]]
        out += [s[:, lo] + frac * (s[:, hi] - s[:, lo]) for lo, hi, frac in picks]
        return tuple(out)

    examples = [np.zeros((rows[j], x.shape[1])) for j in present]
    executable, _ = fe.compile(
        fe.Kind.JAX, order_stats, examples, {}, [f"in{j}" for j in present],
        [libspu.Visibility.VIS_SECRET] * len(present),
        lambda outs: [f"out{i}" for i in range(len(outs))])
    rt.run(executable)
    results: dict[str, list[float]] | None = {} if args.rank in receivers else None
    for i, name in enumerate(names):
        share = rt.get_var(f"out{i}")
        for r in receivers:  # only the receivers get the output's shares
            if r != args.rank:
                lctx.send(r, _pack(share))
        if results is not None:
            parts = [share if j == args.rank else _unpack(lctx.recv(j), libspu)
                     for j in range(k)]
            results[name] = [float(v) for v in np.asarray(io.reconstruct(parts)).reshape(-1)]
    lctx.barrier()
    return {"rank": args.rank, "protocol": protocol.name, "rows": rows,
            "results": results, "quantiles": quantiles, "import_s": round(import_s, 4),
            "run_s": round(time.perf_counter() - t0, 4), "cpu_s": round(_cpu_s() - cpu0, 4),
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # without spu's teardown: the node needs only the report


if __name__ == "__main__":
    sys.exit(main())
