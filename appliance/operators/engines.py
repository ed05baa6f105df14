"""Where this node's plugged-in engines live (the "X" of the product's "1+X").

An engine from the field runs in its own Python environment, never the appliance's: SecretFlow's
``spu`` 0.9.5 pins numpy<2 and jax 0.4.34, the appliance runs numpy 2. The environment is found,
in this order, at:

1. ``$PEC_ENGINE_SECRETFLOW_PYTHON``: an interpreter the administrator names;
2. ``/opt/pec/engines/secretflow/bin/python``: where an installed appliance keeps it;
3. ``build/reference-venv/bin/python`` in a source tree (``make reference-venv``, which
   ``make test`` and ``make run`` build).

The engine's version is read from its installed package metadata, not by importing it (jax's
import costs a second), and both parties state it before a job starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.operators.base import OperatorError

ROOT = Path(__file__).resolve().parents[2]
SECRETFLOW_ENV = "PEC_ENGINE_SECRETFLOW_PYTHON"
SECRETFLOW_INSTALLED = Path("/opt/pec/engines/secretflow/bin/python")
SECRETFLOW_SOURCE_TREE = ROOT / "build" / "reference-venv" / "bin" / "python"
SECRETFLOW_VERSION = "0.9.5"  # the spu release the engine script and docs/psi.md describe


@dataclass(frozen=True)
class Engine:
    name: str
    python: Path
    version: str


def secretflow(node: str) -> Engine:
    """SecretFlow's engine at this node, or an OperatorError that says how to install it."""
    named = os.environ.get(SECRETFLOW_ENV)
    candidates = [Path(named)] if named else [SECRETFLOW_INSTALLED, SECRETFLOW_SOURCE_TREE]
    for python in candidates:
        if python.is_file() and os.access(python, os.X_OK):
            version = _installed_version(python, "spu")
            if version is None:
                raise OperatorError(f"node {node}: the secretflow engine's Python {python} has "
                                    "no spu package installed")
            if version != SECRETFLOW_VERSION:
                raise OperatorError(f"node {node}: the secretflow engine is spu {version}; this "
                                    f"appliance drives spu {SECRETFLOW_VERSION}")
            return Engine("secretflow", python, version)
    where = f"${SECRETFLOW_ENV}={named}" if named else " or ".join(map(str, candidates))
    raise OperatorError(f"node {node} has no secretflow engine (looked at {where}): install "
                        f"spu {SECRETFLOW_VERSION} in its own venv (make reference-venv) or "
                        f"set {SECRETFLOW_ENV}")


def _installed_version(python: Path, package: str) -> str | None:
    """The version of ``package`` in the environment of ``python`` (its dist-info name)."""
    env = python.parent.parent
    for site in sorted(env.glob("lib/python3*/site-packages")):
        for info in site.glob(f"{package}-*.dist-info"):
            return info.name[len(package) + 1:-len(".dist-info")]
    return None
