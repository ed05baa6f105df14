"""Geometry of the benchmark result chart, drawn as SVG by a template (no script needed).

The result is the dict of ``accel.bench.paillier.run``: ``{"bits", "machine", "phe",
"backends": {backend: {operation: {"accel_ops_s", "phe_ops_s", "ratio", "target"}}}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHART_WIDTH = 680
LABEL_WIDTH = 230
VALUE_WIDTH = 130
BAR_HEIGHT = 13
BAR_GAP = 2
ROW_GAP = 12
BACKEND_STYLES = 3  # bar colours for backends in the stylesheet; more backends reuse them


@dataclass(frozen=True)
class Bar:
    series: str
    css: str
    y: int
    width: float
    ops_s: float


@dataclass(frozen=True)
class Measure:
    backend: str
    accel_ops_s: float
    ratio: float
    target: float | None

    @property
    def meets_target(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


@dataclass(frozen=True)
class Row:
    operation: str
    label_y: int
    bars: list[Bar]
    baseline_ops_s: float
    measures: list[Measure]


@dataclass(frozen=True)
class BenchmarkChart:
    rows: list[Row]
    width: int
    height: int
    bar_x: int
    value_x: int
    series: list[tuple[str, str]]  # (name, css class) in the order of the bars
    baseline: str
    bits: Any
    machine: str


def _positive(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _measured(result: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, float, Any]]]:
    """operation -> backend -> (accel ops/s, phe ops/s, target), valid entries only."""
    table: dict[str, dict[str, tuple[float, float, Any]]] = {}
    backends = result.get("backends")
    if not isinstance(backends, Mapping):
        return table
    for backend, operations in backends.items():
        if not isinstance(operations, Mapping):
            continue
        for operation, row in operations.items():
            if not isinstance(row, Mapping):
                continue
            accel, phe = _positive(row.get("accel_ops_s")), _positive(row.get("phe_ops_s"))
            if accel is not None and phe is not None:
                target = _positive(row.get("target"))
                table.setdefault(str(operation), {})[str(backend)] = (accel, phe, target)
    return table


def benchmark_chart(result: Mapping[str, Any] | None) -> BenchmarkChart | None:
    """Bars of ops/s per operation, one per backend and one for the baseline, on a log scale.

    A log scale because the gains run to tens or thousands of times: on a linear one the
    baseline bars would be invisible. None when the result holds no measured operation.
    """
    if not isinstance(result, Mapping):
        return None
    table = _measured(result)
    if not table:
        return None
    backends = list(dict.fromkeys(b for per_backend in table.values() for b in per_backend))
    series = [(b, f"bar-{i % BACKEND_STYLES}") for i, b in enumerate(backends)]
    baseline = str(result.get("phe") or "python-paillier")
    series.append((baseline, "bar-base"))

    values = [v for per_backend in table.values() for a, p, _ in per_backend.values()
              for v in (a, p)]
    low = math.floor(math.log10(min(values)))
    if math.log10(min(values)) - low < 0.3:
        low -= 1  # so that the smallest bar is never a bare sliver at the axis
    high = max(math.ceil(math.log10(max(values))), low + 1)
    span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH

    def width(ops_s: float) -> float:
        return round(max(2.0, span * (math.log10(ops_s) - low) / (high - low)), 1)

    rows = []
    y = ROW_GAP
    for operation, per_backend in table.items():
        bars, measures = [], []
        for name, css in series[:-1]:
            if name not in per_backend:
                continue
            accel, phe, target = per_backend[name]
            bars.append(Bar(name, css, y + len(bars) * (BAR_HEIGHT + BAR_GAP), width(accel),
                            accel))
            measures.append(Measure(name, accel, round(accel / phe, 1), target))
        phe = next(iter(per_backend.values()))[1]
        bars.append(Bar(baseline, "bar-base", y + len(bars) * (BAR_HEIGHT + BAR_GAP),
                        width(phe), phe))
        rows.append(Row(operation, y + BAR_HEIGHT, bars, phe, measures))
        y += len(bars) * (BAR_HEIGHT + BAR_GAP) + ROW_GAP
    return BenchmarkChart(
        rows=rows,
        width=CHART_WIDTH,
        height=y,
        bar_x=LABEL_WIDTH,
        value_x=CHART_WIDTH - VALUE_WIDTH + 6,
        series=series,
        baseline=baseline,
        bits=result.get("bits"),
        machine=str(result.get("machine") or ""),
    )


# -- a training job's rounds ------------------------------------------------------------------

TRAIN_WIDTH, TRAIN_HEIGHT, TRAIN_PAD = 600, 180, 30


@dataclass(frozen=True)
class Series:
    name: str
    css: str
    points: str  # SVG polyline points
    first: float
    last: float


@dataclass(frozen=True)
class TrainingChart:
    width: int
    height: int
    rounds: int
    series: list[Series]
    table: list[dict[str, Any]]


def training_chart(result: Mapping[str, Any] | None) -> TrainingChart | None:
    """Validation loss and accuracy (k-means inertia; a vertical model's loss and AUC) per
    round or epoch of a train job's outputs,
    each series scaled to the chart's height on its own range."""
    outputs = (result or {}).get("outputs") if isinstance(result, Mapping) else None
    history = outputs.get("history") if isinstance(outputs, Mapping) else None
    if not isinstance(history, list) or not history:
        return None
    local = outputs.get("local_history")
    names = [("val_loss", "loss", history, "pooled "), ("val_accuracy", "accuracy", history,
                                                        "pooled "),
             ("inertia", "inertia", history, ""),
             # vertical training: the guest's validation figures per epoch
             ("loss", "loss", history, "validation "), ("auc", "accuracy", history,
                                                         "validation ")]
    if isinstance(local, list) and local:
        # this party's own validation figures, which never left it, beside the pooled ones
        names += [("val_loss", "local-loss", local, "this party's "),
                  ("val_accuracy", "local-accuracy", local, "this party's ")]
    series = []
    for key, css, rows, who in names:
        values = [h.get(key) for h in rows if isinstance(h, Mapping)]
        if not values or not all(isinstance(v, int | float) for v in values):
            continue
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        step = (TRAIN_WIDTH - 2 * TRAIN_PAD) / max(1, len(values) - 1)
        points = " ".join(
            f"{TRAIN_PAD + i * step:.1f},"
            f"{TRAIN_HEIGHT - TRAIN_PAD - (v - low) / span * (TRAIN_HEIGHT - 2 * TRAIN_PAD):.1f}"
            for i, v in enumerate(values))
        series.append(Series(who + key.replace("val_", "validation "), css, points,
                             float(values[0]), float(values[-1])))
    if not series:
        return None
    return TrainingChart(TRAIN_WIDTH, TRAIN_HEIGHT, len(history), series,
                         [dict(h) for h in history if isinstance(h, Mapping)])
