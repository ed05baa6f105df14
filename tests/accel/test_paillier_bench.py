"""The Paillier benchmark runs end to end and reports what the daemon's job expects."""

from __future__ import annotations

import json
import sys

import pytest

from accel.bench import __main__ as bench_cli
from accel.bench import paillier as bench


def test_quick_run_reports_every_operation_with_progress():
    seen = []
    result = bench.run(bits=512, backend="cpu", quick=True,
                       progress=lambda pct, msg: seen.append((pct, msg)))
    ops = result["backends"]["cpu"]
    assert set(ops) == set(bench.TARGETS)
    for row in ops.values():
        assert row["accel_ops_s"] > 0 and row["phe_ops_s"] > 0
        assert abs(row["ratio"] - row["accel_ops_s"] / row["phe_ops_s"]) < 1e-6 * row["ratio"]
    percents = [p for p, _ in seen]
    assert percents == sorted(percents) and percents[-1] == 100
    assert "logical CPUs" in result["machine"]
    assert "encrypt (private key holder)" in bench.format_table(result)


def test_without_python_paillier_the_run_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "phe", None)  # makes `import phe` fail
    with pytest.raises(RuntimeError, match="python-paillier, which is not installed"):
        bench.run(bits=512, backend="cpu", quick=True)


def test_cli_prints_json(capsys):
    assert bench_cli.main(["paillier", "--bits", "512", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bits"] == 512 and "cpu" in out["backends"]


def test_demo_runs_and_checks_itself(capsys):
    from accel import demo

    assert demo.main(bits=512) == 0
    out = capsys.readouterr().out
    assert "all results match NumPy" in out and "MISMATCH" not in out
