"""Backend registry and router.

Callers never pick a backend class themselves: they ask ``resolve()`` for the backend that
should run a call, given an explicit ``backend=`` argument, the innermost ``accel.use(...)``
block, or the node's policy and calibration (see ``accel.backends.router``). The calibration
(``calibrate`` measures it, ``set_calibration`` installs it) and the survey of this host's
backends (``available``) live here and nowhere else.
"""

from __future__ import annotations

from accel.backends.base import Backend, BackendError, FixedBaseTable
from accel.backends.calibration import ROUTED_OPS, Calibration
from accel.backends.calibrator import calibrate
from accel.backends.router import (
    BackendStatus,
    RoutedBackend,
    available,
    calibration,
    calibration_path,
    get,
    inject_fault,
    names,
    policy,
    probe,
    register,
    reload_calibration,
    resolve,
    set_calibration,
    set_policy,
    set_probe_interval,
    unregister,
    use,
)

__all__ = [
    "ROUTED_OPS",
    "Backend",
    "BackendError",
    "BackendStatus",
    "Calibration",
    "FixedBaseTable",
    "RoutedBackend",
    "available",
    "calibrate",
    "calibration",
    "calibration_path",
    "get",
    "inject_fault",
    "names",
    "policy",
    "probe",
    "register",
    "reload_calibration",
    "resolve",
    "set_calibration",
    "set_policy",
    "set_probe_interval",
    "unregister",
    "use",
]
