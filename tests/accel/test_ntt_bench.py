"""The NTT benchmark runs end to end and reports what it measured."""

from __future__ import annotations

import json
import math

import pytest

from accel.bench import ntt as bench


def test_benchmark_json_document(capsys) -> None:
    assert bench.main(["--sizes", "1024", "--no-galois", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["benchmark"] == "ntt"
    assert len(doc["load_before"]) == len(doc["load_after"]) == 3
    thread_counts = {1, doc["threads_all"]}
    rows = doc["results"]
    assert len(rows) == len(bench.BITS) * len(bench.LIMBS) * len(thread_counts)
    assert {(r["bits"], r["limbs"], r["threads"]) for r in rows} == {
        (b, limbs, t) for b in bench.BITS for limbs in bench.LIMBS for t in thread_counts
    }
    for row in rows:
        assert row["n"] == 1024 and row["backend"] == "cpu"
        for key in ("forward_ns", "inverse_ns"):
            # a 1024-point transform: more than 0.01 and less than 10 000 ns per butterfly
            assert math.isfinite(row[key]) and 0.01 < row[key] < 1e4, row
        assert row["galois_ns"] is None
    for bits, moduli in doc["moduli"].items():
        assert all(q.bit_length() == int(bits) and q % (2 * 65536) == 1 for q in moduli)
    assert doc["targets"] == []  # the targets are stated for n = 16384


def test_targets_are_checked_against_the_rows() -> None:
    def row(bits, limbs, threads, ns):
        return {"backend": "cpu", "n": 16384, "bits": bits, "limbs": limbs, "threads": threads,
                "forward_ns": ns}  # fmt: skip

    rows = [row(60, 1, 1, 1.5), row(60, 8, 1, 1.6), row(60, 8, 2, 1.0), row(30, 1, 1, 1.2)]
    checks = {c["target"]: c for c in bench._targets(rows, all_threads=2)}
    assert checks["n=16384 60-bit one core <= 2.0 ns/butterfly"]["met"]
    assert not checks["n=16384 30-bit one core <= 1.0 ns/butterfly"]["met"]
    scaling = checks["n=16384 60-bit 8 limbs: 2 threads >= 1.7x one"]
    assert scaling["measured"] == pytest.approx(1.6) and not scaling["met"]


def test_bad_sizes_are_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "1000"])
    assert "1000 is not a power of two" in capsys.readouterr().err
