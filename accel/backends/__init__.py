"""Backend registry and router.

Callers never pick a backend class themselves: they ask ``resolve()`` for the backend that
should run a call, given an explicit ``backend=`` argument, the innermost ``accel.use(...)``
block, or the node's policy and calibration (see ``accel.backends.router``).
"""

from __future__ import annotations

from accel.backends.base import Backend, BackendError, FixedBaseTable
from accel.backends.router import (
    RoutedBackend,
    available,
    calibrate,
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
    "Backend",
    "BackendError",
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
