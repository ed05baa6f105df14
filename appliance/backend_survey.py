"""What the ``accel`` router sees: each backend, its devices and whether it computes right."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import accel.backends


@dataclass
class BackendReport:
    name: str
    healthy: bool
    devices: list[str] = field(default_factory=list)
    reason: str | None = None
    #: False when the backend's runtime or driver is absent on this host
    loaded: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def survey_backends() -> list[BackendReport]:
    """One report per registered backend; a backend that fails to load is unhealthy with the
    reason, never an exception."""
    reports = []
    for name in accel.backends.names():
        try:
            backend = accel.backends.get(name)
            devices = list(backend.devices())
        except Exception as exc:  # any import or driver failure only marks it unhealthy
            reports.append(
                BackendReport(name, False, [], f"cannot load: {describe_error(exc)}", False)
            )
            continue
        try:
            healthy = bool(backend.health_probe())
            reason = None if healthy else "health probe computed a wrong result"
        except Exception as exc:
            healthy, reason = False, f"health probe failed: {describe_error(exc)}"
        reports.append(BackendReport(name, healthy, devices, reason))
    return reports
