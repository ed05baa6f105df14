"""The appliance's benchmarks: `python -m appliance.bench NAME [options]`.

Each runs the field's reference on the same machine in the same run and prints ratios, with
CPU time and load beside wall time (the machines are shared). Names:

- `psi`: private set intersection, SecretFlow's PSI (spu, in its own venv: `make
  reference-venv`) and the native ECDH engine on the same generated ids.
- `channel`: the federation's mTLS channel between two processes (loopback, and a 100 Mbit/s,
  10 ms WAN link: netem where the kernel has it, else a labelled userspace link emulator)
  against one core's AES-GCM.
- `homo`: horizontal FedAvg, Flower's simulation engine (its own venv: `make flower-venv`)
  and ours between three daemons, plain, masked and Paillier aggregation.
- `fl`: one epoch of vertical logistic regression (hetero_lr), the same protocol on
  python-paillier (phe) as the baseline, FATE's benchmark shape (guest 30 features, host 300).
- `pir`: private query (LWE PIR behind an OPRF): set-up, server and client time per key and
  per batch, and communication, against one pass over the encoded database at memory speed.
- `stats`: joint statistics (per-column sum, mean, variance), SecretFlow SPU's simulator
  (SEMI2K/ABY3, same reference venv) and the native secret-sharing operator on the same data.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

BENCHES: dict[str, tuple[str, str]] = {
    "channel": ("appliance.federation.channel.bench", "the federation channel's throughput "
                "and round trip"),
    "psi": ("appliance.bench.psi", "private set intersection: SecretFlow (spu) and the native "
            "engine on the same ids"),
    "homo": ("appliance.bench.homo", "horizontal FedAvg: Flower's simulation and ours "
             "between daemons"),
    "fl": ("appliance.bench.fl", "vertical logistic regression: one epoch, ours and the same "
           "protocol on python-paillier"),
    "pir": ("appliance.bench.pir", "private query: set-up, per-key server and client time "
            "and bytes, against the memory floor"),
    "stats": ("appliance.bench.stats", "joint statistics: SPU (SEMI2K/ABY3) and the native "
              "secret-sharing operator"),
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in BENCHES:
        print("usage: python -m appliance.bench NAME [options]\n\nbenchmarks:")
        for name, (_, text) in BENCHES.items():
            print(f"  {name:<10} {text}")
        return 0 if args and args[0] in ("-h", "--help") else 2
    import importlib

    bench_main: Callable[[list[str]], int] = importlib.import_module(BENCHES[args[0]][0]).main
    return bench_main(args[1:])
