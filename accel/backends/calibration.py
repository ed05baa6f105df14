"""The router's calibration: per accelerator and routed op, the batch size from which that
accelerator beats the CPU, with the timings it was derived from.

One document serves every consumer: the router routes by ``thresholds``, the node daemon
keeps the document in its state directory and shows ``timings``, and the JSON file is what a
new process reads back. Measuring it is ``accel.backends.calibrate`` (``calibrator.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 2

# Every op name the accel code passes to ``resolve(op=...)``, and the workload timed for it.
# A routed op without an entry here could never leave the CPU under "fastest-healthy"
# (tests/accel/test_router.py checks that encryption, decryption, the arithmetic and the NTT
# route only ops listed here).
ROUTED_OPS: dict[str, str] = {
    # DJN encryption: a fixed-base exponentiation with a half-size exponent, then one product
    # with g^m; re-randomisation (routed as ``powmod_fixed``) is the same two kernels
    "encrypt": "encrypt",
    "powmod_fixed": "encrypt",
    # CRT decryption: two exponentiations modulo p^2 and q^2 with one broadcast exponent
    "decrypt": "decrypt",
    # ciphertext times plaintext: per-element exponents of a plaintext's width
    "powmod": "powmod",
    "mulmod": "mulmod",
    # encrypted-by-plaintext matrix products; the router's size is P * K * M
    "multiexp": "multiexp",
    # encrypted sums; the router's size is K * R
    "prodmod": "prodmod",
    # negative plaintext factors; on the host everywhere, measured so the table is complete
    "invmod": "invmod",
    # the router's size is the number of coefficients of the batch
    "ntt": "ntt",
    # the private-query pass; the router's size is matrix entries times queries
    "lwe": "lwe",
}

Thresholds = dict[str, dict[str, int | None]]


def checked_thresholds(table: Any) -> Thresholds:
    """``table`` as ``{backend: {op: batch size or None}}``, or ``ValueError`` saying what is
    wrong. ``None`` records that the backend was measured and never beat the CPU."""
    if not isinstance(table, Mapping):
        raise ValueError("calibration must map backend name -> {op: batch size}")
    out: Thresholds = {}
    for backend, ops in table.items():
        if not isinstance(backend, str) or not isinstance(ops, Mapping):
            raise ValueError(f"calibration entry for {backend!r} must map op -> batch size")
        for op, threshold in ops.items():
            if not isinstance(op, str) or not op:
                raise ValueError(f"calibration op names must be non-empty strings, got {op!r}")
            if threshold is None:
                continue
            if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
                raise ValueError(
                    f"calibration threshold for {backend}/{op} must be an int >= 0 or null, "
                    f"got {threshold!r}"
                )
        out[backend] = dict(ops)
    return out


@dataclass
class Calibration:
    """A measured (or hand-set) routing table.

    ``thresholds[backend][op]``: the batch size, in the router's units for ``op``, from which
    ``backend`` is faster than the CPU at every larger measured size; ``None`` when it never
    was. ``timings[backend][workload][size]``: best seconds of one batch (the CPU included).
    ``skipped``: backends that were not measured, and why.
    """

    thresholds: Thresholds = field(default_factory=dict)
    timings: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    bits: int | None = None
    quick: bool = False
    measured_at: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.thresholds = checked_thresholds(self.thresholds)

    def ops(self, backend: str) -> set[str]:
        """The ops the table has an entry for (a threshold or "never") for ``backend``."""
        return set(self.thresholds.get(backend, {}))

    def ops_per_s(self, backend: str) -> dict[str, dict[str, float]]:
        """Per workload and batch size, elements (router units) per second on ``backend``."""
        return {
            workload: {str(size): size / max(seconds, 1e-9) for size, seconds in points.items()}
            for workload, points in self.timings.get(backend, {}).items()
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (batch sizes as string keys)."""
        return {
            "version": VERSION,
            "thresholds": self.thresholds,
            "timings": {
                backend: {w: {str(s): t for s, t in points.items()} for w, points in per.items()}
                for backend, per in self.timings.items()
            },
            "bits": self.bits,
            "quick": self.quick,
            "measured_at": self.measured_at,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> Calibration:
        """The inverse of :meth:`to_dict`; also reads version 1 files (thresholds only)."""
        if not isinstance(doc, Mapping):
            raise ValueError("a calibration document must be a JSON object")
        version = doc.get("version", 1)
        if version not in (1, VERSION):
            raise ValueError(f"unknown calibration version {version!r}")
        timings = doc.get("timings") or {}
        try:
            parsed = {
                str(backend): {
                    str(w): {int(s): float(t) for s, t in points.items()}
                    for w, points in per.items()
                }
                for backend, per in timings.items()
            }
        except (AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"calibration timings are malformed: {exc}") from None
        bits = doc.get("bits")
        return cls(
            thresholds=checked_thresholds(doc.get("thresholds", {})),
            timings=parsed,
            bits=bits if isinstance(bits, int) and not isinstance(bits, bool) else None,
            quick=bool(doc.get("quick", False)),
            measured_at=doc.get("measured_at") if isinstance(doc.get("measured_at"), str)
            else None,
            skipped={str(k): str(v) for k, v in (doc.get("skipped") or {}).items()},
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the document atomically (a reader never sees half a file); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a file written by :meth:`save`; ``FileNotFoundError`` when there is none,
        ``ValueError`` when it is not a calibration."""
        try:
            doc = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        return cls.from_dict(doc)
