"""The reference side of `python -m appliance.bench stats`: SecretFlow SPU's simulator.

Run with the reference venv's python (spu 0.9.5, numpy<2), not the appliance's:

    build/reference-venv/bin/python appliance/bench/stats_reference.py K P0.npy [P1.npy ...] \
        [--order]

Each file is one party's rows (float64, rows x columns). All K parties run in this one process
(``spu.utils.simulation``: one thread per party over in-memory links), SEMI2K for 2 parties
and ABY3 for 3, on FM128. The inputs are secret-shared, then SPU computes per-column sum,
mean and population variance of the concatenated rows and reveals them. With ``--order``:
per-column min, max and median, with the stats operator's own settings (CHEETAH for 2
parties, ABY3 for 3, FM128, 40 fractional bits, float64). With ``--columns REQUEST``: each
file is an .npz of one party's ``keys`` and ``values`` and the program is the columns
layout's own (``appliance/operators/stats/spu_programs.py``: the join inside SPU and the
statistics of ``REQUEST``, a JSON of its fields), CHEETAH for 2 parties, ABY3 among 3 for
3 to 5. Prints one JSON line: wall_s (share + compile + run + reveal), cpu_s (this process),
and the results.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    if "--columns" in argv:
        at = argv.index("--columns")
        request = argv[at + 1]
        return columns_layout(argv[:at] + argv[at + 2:], request)
    order = "--order" in argv
    argv = [a for a in argv if a != "--order"]
    k, paths = int(argv[0]), argv[1:]
    if order:
        import jax

        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import spu
    import spu.utils.simulation as spsim

    parts = [np.load(p) for p in paths]
    if k not in (2, 3) or len(parts) != k:
        print(json.dumps({"error": f"need 2 or 3 parties' files, got k={k}, {len(parts)}"}))
        return 2
    if order:
        prot = spu.ProtocolKind.CHEETAH if k == 2 else spu.ProtocolKind.ABY3
        config = spu.RuntimeConfig(protocol=prot, field=spu.FieldType.FM128,
                                   fxp_fraction_bits=40)
        sim = spsim.Simulator(k, config)

        def order_stats(*xs):
            v = jnp.concatenate(xs, axis=0).T
            s = jnp.sort(v, axis=1)
            n = v.shape[1]
            mid = s[:, (n - 1) // 2] if n % 2 else (s[:, n // 2 - 1] + s[:, n // 2]) / 2
            return s[:, 0], s[:, -1], mid

        return _run(spsim.sim_jax(sim, order_stats), parts, prot, ("min", "max", "median"))
    prot = spu.ProtocolKind.SEMI2K if k == 2 else spu.ProtocolKind.ABY3
    sim = spsim.Simulator.simple(k, prot, spu.FieldType.FM128)

    def stats(*xs):
        x = jnp.concatenate(xs, axis=0)
        s = jnp.sum(x, axis=0)
        m = s / x.shape[0]
        v = jnp.mean((x - m) ** 2, axis=0)
        return s, m, v

    return _run(spsim.sim_jax(sim, stats), parts, prot, ("sum", "mean", "var"))


def columns_layout(argv: list[str], request: str) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import spu
    import spu.utils.simulation as spsim

    sys.path.append(str(Path(__file__).resolve().parents[1] / "operators" / "stats"))
    from spu_programs import Request, columns_program

    k, paths = int(argv[0]), argv[1:]
    flat, widths = [], []
    for path in paths:
        with np.load(path) as z:
            flat.append(z["keys"])
            widths.append(int(z["values"].shape[1]))
            if widths[-1]:
                flat.append(z["values"])
    req = Request.of(json.loads(request))
    world = 2 if k == 2 else 3
    prot = spu.ProtocolKind.CHEETAH if world == 2 else spu.ProtocolKind.ABY3
    sim = spsim.Simulator(world, spu.RuntimeConfig(protocol=prot, field=spu.FieldType.FM128,
                                                   fxp_fraction_bits=40))
    program = columns_program(k, widths, req)
    names: list[str] = []

    def flat_program(*args):
        out = program(*args)
        names.extend(out)
        return tuple(out.values())

    return _run(spsim.sim_jax(sim, flat_program), flat, prot, names)


def _run(fn, parts, prot, names) -> int:
    """One timed simulator run (share, compile, run, reveal); its JSON line."""
    import numpy as np
    import spu

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    outs = fn(*parts)
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    # names may fill in while the program is traced (the columns layout's)
    print(json.dumps({"engine": f"spu {spu.__version__} {prot.name} FM128 (simulator)",
                      "wall_s": wall, "cpu_s": cpu,
                      **{n: np.asarray(o, dtype=float).tolist()
                         for n, o in zip(names, outs, strict=True)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
