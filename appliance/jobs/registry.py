"""The registry of job kinds: each kind registers itself where it is defined.

``appliance.jobs.kinds`` registers the node's own kinds when imported; an operator family
registers its kinds the same way (``register`` or the ``job_kind`` decorator), so no single
literal table needs editing when a kind is added. ``all_kinds()`` is the table the node's
runner uses: the built-in kinds are imported first, so it is never found empty.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from appliance.jobs.runner import JobContext, JobKind

KINDS: dict[str, JobKind] = {}

# modules whose import registers kinds every node has
BUILTIN_KIND_MODULES = ("appliance.jobs.kinds", "appliance.federation.kinds",
                        "appliance.federation.predict")

RunFn = Callable[[JobContext, dict[str, Any]], dict[str, Any]]


def register(kind: JobKind) -> JobKind:
    """Add ``kind``; a second kind of the same name is refused (two modules claiming one name
    is a bug: which one a job ran would depend on import order)."""
    existing = KINDS.get(kind.name)
    if existing is not None and existing is not kind:
        raise ValueError(f"job kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def job_kind(name: str, *, validate: Callable[[dict[str, Any]], dict[str, Any]],
             requires: str | None = None, description: str = "",
             exclusive: bool = False) -> Callable[[RunFn], RunFn]:
    """Decorate a job's run function to register it as kind ``name``."""
    def decorate(run: RunFn) -> RunFn:
        register(JobKind(name, run, validate, requires, description, exclusive))
        return run
    return decorate


def all_kinds() -> dict[str, JobKind]:
    """Every registered kind (the live table: kinds registered later show up in it too)."""
    for module in BUILTIN_KIND_MODULES:
        importlib.import_module(module)
    return KINDS
