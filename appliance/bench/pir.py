"""`python -m appliance.bench pir`: private query on this machine, against the memory floor.

    python -m appliance.bench pir [--records 1000000] [--label-bytes 32] [--batch 100]
                                  [--repeats 5] [--backend cpu|opencl|cuda] [--json]

Full privacy means the server reads its whole encoded database for every query (or batch):
the floor of any such scheme is one pass over it at memory bandwidth. This run measures that
floor here (all cores reading the encoded matrix), then the service's set-up (OPRF over every
key, encoding, the hint), and per query: the server's time (OPRF answer and the LWE pass), the
client's (blinding, the query vector, decoding) and the bytes each way, for one key and for a
batch. Ratios are to the floor. Server and client run in this process, one after the other,
so their times do not mix; the multi-daemon path is exercised by the end-to-end tests. Each
figure is the median of ``--repeats`` runs, with CPU time and the load average beside it.
No reference engine runs here: APSI's published figures are quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from accel import lwe
from appliance.bench import machine
from appliance.operators.pir import layout as lay
from appliance.operators.pir import scheme
from appliance.operators.pir.service import ServiceStore
from appliance.operators.psi.ecdh_engine import id_bytes
from appliance.operators.psi.unbalanced import evaluate_blinded

TARGETS = {"single": 3.0, "batch": 30.0, "query_bytes": 1 << 20, "setup_s": 60.0}


class _Secrets(dict):
    def store_secret(self, name: str, data: bytes) -> None:
        self[name] = data

    def load_secret(self, name: str) -> bytes | None:
        return self.get(name)


def floor_seconds(entries: np.ndarray, repeats: int) -> float:
    """One pass over ``entries`` with every core reading its share (XOR of 64-bit words;
    numpy releases the GIL inside the reduction): the best of ``repeats``."""
    flat = entries.reshape(-1)
    words = flat[: flat.size // 8 * 8].view(np.uint64)
    threads = len(os.sched_getaffinity(0))
    parts = np.array_split(words, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(np.bitwise_xor.reduce, parts))
            best = min(best, time.perf_counter() - t)
    return best


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run(records: int, label_bytes: int, batch: int, repeats: int,
        backend: str | None) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    keys = pa.array(13_000_000_000 + rng.choice(7_000_000_000, size=records, replace=False),
                     pa.int64())
    alphabet = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    # a label of label_bytes - 2 characters encodes to exactly label_bytes (2-byte length)
    text = alphabet[rng.integers(0, 16, size=(records, max(0, label_bytes - 2)))]
    labels = pa.array([row.tobytes().decode() for row in text])
    out: dict[str, Any] = {"records": records, "label_bytes": label_bytes, "batch": batch,
                           "backend": backend or "router"}
    with tempfile.TemporaryDirectory(prefix="pec-pir-bench-") as tmp:
        store = ServiceStore(tmp, _Secrets())
        info, wall, cpu = _timed(lambda: store.publish("bench", keys, {"label": labels},
                                                       source={}))
        out["setup"] = {"wall_s": wall, "cpu_s": cpu, "rows": info["rows"], "cols": info["cols"],
                        "database_bytes": info["cost"]["database_bytes"],
                        "raw_bytes": records * (lay.TAG_BYTES + label_bytes),
                        "hint_bytes": info["cost"]["hint_bytes"]}
        loaded = store.loaded("bench")
        entries = np.asarray(loaded.matrix.entries)
        resident = lwe.Matrix(np.array(entries))  # in memory, as a server that has warmed up
        floor = floor_seconds(resident.entries, max(repeats, 5))
        out["floor"] = {"wall_s": floor, "gb_per_s": resident.entries.nbytes / floor / 1e9}
        a_t = scheme.public_matrix(bytes.fromhex(info["seed"]), info["cols"])
        hint_t = np.fromfile(store.root / "bench" / "v1" / "hint.u32", dtype="<u4").reshape(
            scheme.N, info["rows"]).astype(np.uint32)
        lay_ = lay.Layout.from_dict(info["layout"])
        all_keys = keys.to_pylist()
        resident.mul(np.zeros((1, info["cols"]), np.uint32), backend=backend)  # warm up
        for size in (1, batch):
            # three phases, each over every repeat: the client's queries, the server's passes,
            # the client's decoding. Interleaved, the client's BLAS threads (which spin for a
            # while after each call) would steal the server's cores: on two machines they
            # would not meet.
            runs = []
            for r in range(repeats):
                asked = [str(k) for k in all_keys[r * size:(r + 1) * size]]
                asked[-1] = "1"  # one absent key in every batch
                ids = id_bytes(pa.array(asked))
                run_: dict[str, Any] = {"server_s": 0.0, "server_cpu_s": 0.0}

                def oprf(blinded: bytes, run_: dict[str, Any] = run_) -> bytes:
                    answer, w, c = _timed(lambda: loaded.oprf.answer(blinded))
                    run_["server_s"] += w
                    run_["server_cpu_s"] += c
                    return answer

                def prepare(ids: pa.Array = ids, oprf: Any = oprf) -> tuple[Any, ...]:
                    f = evaluate_blinded(ids, oprf, lay.F_BYTES)
                    return (f, *scheme.make_queries(a_t, lay.buckets(f, info["cols"])))

                (run_["f"], run_["s"], run_["q"]), w, c = _timed(prepare)
                run_["client_s"] = w - run_["server_s"]
                run_["client_cpu_s"] = c - run_["server_cpu_s"]
                runs.append(run_)
            time.sleep(0.5)
            for run_ in runs:
                run_["answers"], w, c = _timed(
                    lambda q=run_["q"]: resident.mul(q, backend=backend))
                run_["server_s"] += w
                run_["server_cpu_s"] += c
            for run_ in runs:
                def finish(run_: dict[str, Any] = run_) -> list[Any]:
                    read = scheme.decode(run_["answers"], run_["s"], hint_t)
                    return [lay.find(read[i], lay_, run_["f"][i]) for i in range(len(read))]

                found, w, c = _timed(finish)
                run_["client_s"] += w
                run_["client_cpu_s"] += c
                if any(x is None for x in found[:-1]) or found[-1] is not None:
                    raise RuntimeError("a present key was not found or an absent one was")
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("server_s", "server_cpu_s", "client_s", "client_cpu_s")}
            out["single" if size == 1 else "batched"] = {
                "keys": size, **med,
                "sent_bytes": size * info["cost"]["query_bytes"],
                "received_bytes": size * info["cost"]["answer_bytes"],
                "ratio_to_floor": med["server_s"] / floor}
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m appliance.bench pir", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--label-bytes", type=int, default=32)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backend", default=None, help="run the LWE pass here (default: router)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.records < 2 or args.label_bytes < 2 or not 1 <= args.batch <= 1024:
        p.error("--records >= 2, --label-bytes >= 2, --batch 1..1024")
    return args


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    host = machine.describe()
    load0 = machine.load()
    print(f"pir bench: {host['nproc']} CPUs ({host['cpu_model']}), Python "
          f"{host['python']}, Linux {host['kernel']}; load {machine.fmt_load(load0)} "
          "(1/5/15 min) before")
    r = run(args.records, args.label_bytes, args.batch, args.repeats, args.backend)
    load1 = machine.load()
    r["machine"], r["load_before"], r["load_after"] = host, load0, load1
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    st, fl = r["setup"], r["floor"]
    print(f"N = {args.records:,} records, {args.label_bytes}-byte labels; LWE pass on "
          f"{r['backend']}")
    print(f"encoded database {st['rows']:,} x {st['cols']:,} = {_mib(st['database_bytes'])} "
          f"({st['database_bytes'] / st['raw_bytes']:.2f}x the {_mib(st['raw_bytes'])} of "
          f"tags and labels); hint {_mib(st['hint_bytes'])} (once per client and version)")
    print(f"set-up: {st['wall_s']:.1f} s wall, {st['cpu_s']:.1f} s CPU  "
          f"(target <= {TARGETS['setup_s']:.0f} s: "
          f"{'met' if st['wall_s'] <= TARGETS['setup_s'] else 'MISSED'})")
    print(f"floor: one pass over the encoded database {fl['wall_s'] * 1e3:.2f} ms "
          f"({fl['gb_per_s']:.1f} GB/s, all cores)")
    print(f"{'':<12}{'keys':>6}{'server ms':>11}{'server CPU':>12}{'client ms':>11}"
          f"{'client CPU':>12}{'sent':>12}{'received':>12}{'x floor':>9}{'target':>9}")
    for name, target in (("single", TARGETS["single"]), ("batched", TARGETS["batch"])):
        row = r[name]
        ok = "met" if row["ratio_to_floor"] <= target else "MISSED"
        print(f"{name:<12}{row['keys']:>6}{row['server_s'] * 1e3:>11.2f}"
              f"{row['server_cpu_s'] * 1e3:>12.2f}{row['client_s'] * 1e3:>11.2f}"
              f"{row['client_cpu_s'] * 1e3:>12.2f}{_mib(row['sent_bytes']):>12}"
              f"{_mib(row['received_bytes']):>12}{row['ratio_to_floor']:>9.1f}"
              f"{'<= ' + str(int(target)) + ' ' + ok:>13}")
    per_key = r["single"]["sent_bytes"] + r["single"]["received_bytes"]
    print(f"communication per key {_mib(per_key)} (target <= 1 MiB: "
          f"{'met' if per_key <= TARGETS['query_bytes'] else 'MISSED'})")
    print(f"load {machine.fmt_load(load1)} (1/5/15 min) after")
    return 0
