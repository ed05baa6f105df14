"""One party of the joint statistics that run on SecretFlow's SPU: the order statistics of
the rows layout and every statistic of the columns layout (``spu_programs.py``).

    ENGINE_PYTHON appliance/operators/stats/spu_engine.py --rank R --addresses A0,A1[,A2] \
        --layout rows|columns --sources S0,S1,... --request JSON --receivers 0[,1...] \
        --link-id ID --wait-for-go
    ENGINE_PYTHON appliance/operators/stats/spu_engine.py --share-only --world 3 \
        --input X.npz --out PREFIX

Run by the engine venv's interpreter (spu 0.9.5, numpy<2), never the appliance's, so it
imports only the standard library, numpy, jax, spu and its sibling ``spu_programs``.

The SPU computing parties (2 with CHEETAH: semi-honest two-party computation, OT and HE
based, no dealer; 3 with ABY3: replicated sharing, honest majority) run this with a link
among them. The job's parties are the program's sources, in order; ``--sources`` says where
each one's input comes from: ``rank:R`` (computing party R's own ``--input``, which it
secret-shares with SPU's ``Io`` and sends over the link) or ``file:PATH`` (shares that a
providing party made with ``--share-only`` and its node sent over the job session: with four
or five parties, the ones past the computing three provide, they do not compute). An input
is an ``.npz`` of ``values`` (float64 rows x columns) and, in the
columns layout, ``keys`` (int64 rows x 2) and, with differential privacy, ``noise`` (this
party's part of the noise of every released output, float64). The outputs are opened to the
receivers only. The last stdout line is one JSON object: ``results`` (at a receiver), the
shapes and timings.
"""

from __future__ import annotations

import argparse
import io as bytes_io
import json
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any

# the engine scripts share their link set-up and the programs (plain modules beside them)
sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: never shadows
sys.path.append(str(Path(__file__).resolve().parent))
from spu_link import brpc_link
from spu_programs import Request, columns_program, rows_order_program

FRACTION_BITS = 40
ARRAYS = ("keys", "values", "noise")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one party of the SPU joint statistics")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--addresses", default="",
                   help="HOST:PORT of every computing party in rank order")
    p.add_argument("--layout", choices=("rows", "columns"), default="rows")
    p.add_argument("--input", help="this party's rows, .npz of values [and keys]")
    p.add_argument("--sources", default="", help="per party of the job: rank:R, file:PATH "
                   "or none")
    p.add_argument("--request", default="{}", help="JSON: the Request's fields")
    p.add_argument("--receivers", default="", help="computing ranks that learn the results")
    p.add_argument("--link-id", default="stats")
    p.add_argument("--link-timeout-s", type=float, default=120.0)
    p.add_argument("--wait-for-go", action="store_true")
    p.add_argument("--share-only", action="store_true",
                   help="a providing party: write one share file per computing party")
    p.add_argument("--world", type=int, default=0, help="with --share-only: computing parties")
    p.add_argument("--out", help="with --share-only: the share files' prefix")
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


def _config(libspu: Any, world: int) -> Any:
    protocol = libspu.ProtocolKind.CHEETAH if world == 2 else libspu.ProtocolKind.ABY3
    return libspu.RuntimeConfig(protocol=protocol, field=libspu.FieldType.FM128,
                                fxp_fraction_bits=FRACTION_BITS)


def _load_input(path: str, layout: str) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        got = {name: z[name] for name in ARRAYS if name in z.files}
    if "values" not in got or got["values"].ndim != 2:
        raise SystemExit("the input has no rows x columns matrix of values")
    got["values"] = got["values"].astype(np.float64)
    if layout == "columns":
        keys = got.get("keys")
        if keys is None or keys.dtype != np.int64 or keys.shape != (len(got["values"]), 2):
            raise SystemExit("the input has no int64 rows x 2 matrix of keys")
    if "noise" in got:
        got["noise"] = got["noise"].astype(np.float64).reshape(-1)
    return got


Shares = dict[str, tuple[tuple[int, ...], Any]]  # name -> (shape, share; None if empty)


def _shares_of(spu: Any, libspu: Any, world: int, arrays: dict[str, Any]) -> list[Shares]:
    """The arrays' shares for each computing party."""
    io = spu.Io(world, _config(libspu, world))
    per: list[Shares] = [{} for _ in range(world)]
    for name, arr in arrays.items():
        if arr.size == 0:  # SPU shares no empty matrix: its shape alone says it
            for j in range(world):
                per[j][name] = (arr.shape, None)
            continue
        for j, share in enumerate(io.make_shares(arr, libspu.Visibility.VIS_SECRET)):
            per[j][name] = (arr.shape, share)
    return per


def _blob(shares: Shares) -> bytes:
    """One computing party's shares as an .npz (what goes over the link or a session)."""
    import numpy as np

    out: dict[str, Any] = {}
    for name, (shape, share) in shares.items():
        out[f"{name}_shape"] = np.asarray(shape, dtype=np.int64)
        if share is not None:
            out[name] = np.frombuffer(_pack(share), dtype=np.uint8)
    buf = bytes_io.BytesIO()
    np.savez(buf, **out)
    return buf.getvalue()


def _read_shares(data: bytes, libspu: Any) -> Shares:
    """The shares of one share file (``_blob``)."""
    import numpy as np

    got: Shares = {}
    with np.load(bytes_io.BytesIO(data), allow_pickle=False) as z:
        for name in ARRAYS:
            if f"{name}_shape" not in z.files:
                continue
            shape = tuple(int(d) for d in z[f"{name}_shape"])
            share = _unpack(z[name].tobytes(), libspu) if name in z.files else None
            got[name] = (shape, share)
    return got


def share_only(args: argparse.Namespace) -> dict[str, Any]:
    import spu
    import spu.libspu as libspu

    t0, cpu0 = time.perf_counter(), _cpu_s()
    if args.world not in (2, 3) or not args.out or not args.input:
        raise SystemExit("--share-only needs --world 2|3, --input and --out")
    arrays = _load_input(args.input, args.layout)
    files = []
    for j, shares in enumerate(_shares_of(spu, libspu, args.world, arrays)):
        path = Path(f"{args.out}{j}.npz")
        path.write_bytes(_blob(shares))
        files.append(str(path))
    return {"files": files, "rows": len(arrays["values"]),
            "run_s": round(time.perf_counter() - t0, 4), "cpu_s": round(_cpu_s() - cpu0, 4)}


def _finish(lctx: Any) -> None:
    """The link's end at every party before the process exits (without spu's teardown).
    A barrier returns once this party has the others' messages, while its own may still sit
    in brpc's send queue: exiting then lost a party's last message now and then, and its
    peer waited at that barrier until the link timed out (seen in CI and a test). stop_link
    waits for every send to be delivered and for each peer to finish likewise."""
    lctx.barrier()
    lctx.stop_link()


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_import = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 and int64 end to end, as the inputs
    import numpy as np
    import spu
    import spu.libspu as libspu
    import spu.utils.frontend as fe
    import_s = time.perf_counter() - t_import

    addresses = args.addresses.split(",")
    world = len(addresses)
    if world not in (2, 3):
        raise SystemExit(f"SPU computes among 2 or 3 parties here, not {world}")
    lctx = brpc_link([f"p{i}" for i in range(world)], addresses, args.rank, args.link_id,
                     args.link_timeout_s)
    lctx.barrier()
    if args.wait_for_go:
        line = sys.stdin.readline().strip()
        if line != "go":
            raise SystemExit(f"stopped before the input was ready ({line or 'stdin closed'})")
    lctx.barrier()
    cpu0, t0 = _cpu_s(), time.perf_counter()
    cfg = _config(libspu, world)
    sources = args.sources.split(",")
    receivers = [int(r) for r in args.receivers.split(",") if r.strip()]
    req = Request.of(json.loads(args.request))

    # every source's arrays at this party: (shape, share); own shares go out over the link
    held: list[Shares] = [{} for _ in sources]
    own = _load_input(args.input, args.layout) if args.input else None
    mine = _shares_of(spu, libspu, world, own) if own is not None else None
    for g, src in enumerate(sources):
        kind, _, what = src.partition(":")
        if kind == "rank" and int(what) == args.rank:
            if mine is None:
                raise SystemExit(f"source {g} is this party's, but it has no --input")
            for j in range(world):
                if j != args.rank:
                    lctx.send(j, _blob(mine[j]))
            held[g] = mine[args.rank]
        elif kind == "rank":
            held[g] = _read_shares(lctx.recv(int(what)), libspu)
        elif kind == "file":
            held[g] = _read_shares(Path(what).read_bytes(), libspu)
        else:
            raise SystemExit(f"source {g}: {src!r} is neither rank:R nor file:PATH")
    rows = [held[g]["values"][0][0] if "values" in held[g] else 0 for g in range(len(sources))]
    widths = [held[g]["values"][0][1] if "values" in held[g] else 0
              for g in range(len(sources))]

    if args.layout == "rows" and sum(rows) == 0:  # nothing to order: all undefined
        _finish(lctx)
        return {"rank": args.rank, "protocol": cfg.protocol.name, "rows": rows,
                "widths": widths, "results": {} if args.rank in receivers else None,
                "import_s": round(import_s, 4), "run_s": 0.0, "cpu_s": 0.0}
    rt = spu.Runtime(lctx, cfg)
    names, examples = [], []

    def give(g: int, name: str, dtype: Any) -> None:
        shape, share = held[g][name]
        rt.set_var(f"s{g}_{name}", share)
        names.append(f"s{g}_{name}")
        examples.append(np.zeros(shape, dtype=dtype))

    if args.layout == "rows":
        present = [g for g in range(len(sources)) if rows[g] > 0]
        for g in present:
            give(g, "values", np.float64)
        program = rows_order_program(req.levels, sum(rows))
    else:
        for g in range(len(sources)):
            give(g, "keys", np.int64)
            if widths[g]:
                give(g, "values", np.float64)
            if req.dp:
                give(g, "noise", np.float64)
        program = columns_program(len(sources), widths, req)
    outputs: list[str] = []

    def flat_program(*args_: Any) -> Any:
        found = program(*args_)
        outputs.extend(found)
        return tuple(found.values())

    executable, _ = fe.compile(
        fe.Kind.JAX, flat_program, examples, {}, names,
        [libspu.Visibility.VIS_SECRET] * len(names),
        lambda outs: [f"out{i}" for i in range(len(outs))])
    rt.run(executable)
    io = spu.Io(world, cfg)
    results: dict[str, Any] | None = {} if args.rank in receivers else None
    for i, name in enumerate(outputs):
        share = rt.get_var(f"out{i}")
        for r in receivers:  # only the receivers get the output's shares
            if r != args.rank:
                lctx.send(r, _pack(share))
        if results is not None:
            parts = [share if j == args.rank else _unpack(lctx.recv(j), libspu)
                     for j in range(world)]
            results[name] = np.asarray(io.reconstruct(parts)).tolist()
    _finish(lctx)
    return {"rank": args.rank, "protocol": cfg.protocol.name, "rows": rows, "widths": widths,
            "results": results, "import_s": round(import_s, 4),
            "run_s": round(time.perf_counter() - t0, 4), "cpu_s": round(_cpu_s() - cpu0, 4),
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = share_only(args) if args.share_only else run(args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # without spu's teardown: the node needs only the report


if __name__ == "__main__":
    sys.exit(main())
