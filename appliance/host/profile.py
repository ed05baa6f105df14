"""Mini, Standard and Jumbo: which profile a box meets, and what it may do.

Each profile is a TOML file (package data of ``appliance.profiles``, linked from ``profiles/``
in the source tree) with its minimums and capabilities. Matching picks the largest profile
whose every minimum the box meets, explaining each criterion; a box below the smallest profile is
``unclassified`` and carries no privacy-computing capability.

An administrator may override the hardware's choice with any profile, ``unclassified``, or
``development``: a built-in profile for a developer's machine that carries every capability
the hardware can (a laptop meets no profile, yet must run keygen and jobs to be of any use).
"""

from __future__ import annotations

import importlib.resources
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.host.inventory import Inventory
from appliance.state.tomlfile import TomlDocument, TomlFileError

CAPABILITIES = ("mpc", "fl", "ledger", "tee")
ROUTER_POLICIES = ("cpu-only", "fastest-healthy")
ACCELERATOR_KINDS = ("dcu", "gpu", "fpga")
UNCLASSIFIED = "unclassified"
DEVELOPMENT = "development"
GIB = 1 << 30
TB = 10**12


class ProfileError(ApplianceError, ValueError):
    """A profile cannot be loaded or chosen."""


@dataclass(frozen=True)
class Profile:
    name: str
    rank: int
    description: str
    router_policy: str
    cores: int
    memory_gb: float
    disk_tb: float
    nic_ports: int
    nic_speed_mbps: int
    accelerators: int
    accelerator_kinds: tuple[str, ...]
    memory_tolerance: float
    disk_tolerance: float
    always: tuple[str, ...]
    choose_one: tuple[str, ...] = ()
    default_choice: str | None = None
    source: str = ""

    def capabilities(self, choice: str | None = None) -> list[str]:
        """The capabilities this profile carries; ``choice`` picks one of ``choose_one``."""
        caps = list(self.always)
        if self.choose_one:
            picked = choice or self.default_choice
            if picked not in self.choose_one:
                raise ProfileError(
                    f"profile {self.name!r} carries one of {', '.join(self.choose_one)}; "
                    f"{picked!r} is not one of them"
                )
            caps.append(picked)
        return caps


UNCLASSIFIED_PROFILE = Profile(
    name=UNCLASSIFIED,
    rank=0,
    description="below the smallest profile: no privacy-computing capability",
    router_policy="cpu-only",
    cores=0,
    memory_gb=0,
    disk_tb=0,
    nic_ports=0,
    nic_speed_mbps=0,
    accelerators=0,
    accelerator_kinds=ACCELERATOR_KINDS,
    memory_tolerance=0,
    disk_tolerance=0,
    always=(),
)

# Never matched from hardware (rank 0, like unclassified): only an override chooses it.
DEVELOPMENT_PROFILE = replace(
    UNCLASSIFIED_PROFILE,
    name=DEVELOPMENT,
    description="development machine: every capability the hardware can carry, whatever its "
                "size; not for production",
    router_policy="fastest-healthy",
    always=CAPABILITIES,
)


@dataclass(frozen=True)
class Criterion:
    name: str
    required: str
    found: str
    met: bool


@dataclass
class ProfileMatch:
    profile: str
    capabilities: list[str]
    router_policy: str
    criteria: list[Criterion]
    considered: list[dict[str, Any]] = field(default_factory=list)
    override: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: what the hardware alone gives, whatever the override says
    hardware_profile: str = UNCLASSIFIED
    #: why a stored override was ignored (unreadable or naming no profile), else None
    override_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "hardware_profile": self.hardware_profile,
            "override_error": self.override_error,
            "capabilities": self.capabilities,
            "router_policy": self.router_policy,
            "criteria": [asdict(c) for c in self.criteria],
            "considered": self.considered,
            "override": self.override,
            "notes": self.notes,
        }


def _positive(doc: TomlDocument, table: dict, key: str, kind: type, prefix: str) -> Any:
    value = doc.get(table, key, kind if kind is int else (int, float), prefix,
                    what="an integer" if kind is int else "a number")
    if value < 0:
        raise doc.error(f"{prefix}{key}", f"must not be negative, got {value!r}")
    return value


def _string_list(doc: TomlDocument, table: dict, key: str, prefix: str, allowed: tuple[str, ...],
                 default: Any = ...) -> tuple[str, ...]:
    values = doc.get(table, key, list, prefix, default=default, what="a list of strings")
    for value in values:
        if value not in allowed:
            raise doc.error(
                f"{prefix}{key}", f"{value!r} is not one of {', '.join(allowed)}"
            )
    return tuple(values)


def load_profile(path: str | Path) -> Profile:
    """One profile file, checked; errors name the file, the line and the key."""
    doc = TomlDocument.load(path)
    data = doc.data
    doc.check_keys(data, {"profile", "minimum", "tolerance", "capabilities"})
    head = doc.get(data, "profile", dict, what="a table [profile]")
    minimum = doc.get(data, "minimum", dict, what="a table [minimum]")
    tolerance = doc.get(data, "tolerance", dict, default={}, what="a table [tolerance]")
    caps = doc.get(data, "capabilities", dict, what="a table [capabilities]")
    doc.check_keys(head, {"name", "rank", "description", "router_policy"}, "profile.")
    doc.check_keys(
        minimum,
        {"cores", "memory_gb", "disk_tb", "nic_ports", "nic_speed_mbps", "accelerators",
         "accelerator_kinds"},
        "minimum.",
    )
    doc.check_keys(tolerance, {"memory", "disk"}, "tolerance.")
    doc.check_keys(caps, {"always", "choose_one", "default_choice"}, "capabilities.")

    name = doc.get(head, "name", str, "profile.")
    if name in (UNCLASSIFIED, DEVELOPMENT) or not name.isidentifier():
        raise doc.error("profile.name", f"{name!r} is not a usable profile name")
    policy = doc.get(head, "router_policy", str, "profile.")
    if policy not in ROUTER_POLICIES:
        raise doc.error("profile.router_policy",
                        f"{policy!r} is not one of {', '.join(ROUTER_POLICIES)}")
    for key in ("memory", "disk"):
        value = doc.get(tolerance, key, (int, float), "tolerance.", default=0, what="a number")
        if not 0 <= value < 0.5:
            raise doc.error(f"tolerance.{key}", f"must be a fraction in [0, 0.5), got {value!r}")
    choose_one = _string_list(doc, caps, "choose_one", "capabilities.", CAPABILITIES, ())
    default_choice = doc.get(caps, "default_choice", str, "capabilities.", default=None)
    if choose_one and default_choice not in choose_one:
        raise doc.error("capabilities.default_choice",
                        f"must be one of choose_one ({', '.join(choose_one)})")
    rank = _positive(doc, head, "rank", int, "profile.")
    if rank == 0:
        raise doc.error("profile.rank", "must be at least 1 (0 is the unclassified box)")
    return Profile(
        name=name,
        rank=rank,
        description=doc.get(head, "description", str, "profile.", default=""),
        router_policy=policy,
        cores=_positive(doc, minimum, "cores", int, "minimum."),
        memory_gb=_positive(doc, minimum, "memory_gb", float, "minimum."),
        disk_tb=_positive(doc, minimum, "disk_tb", float, "minimum."),
        nic_ports=_positive(doc, minimum, "nic_ports", int, "minimum."),
        nic_speed_mbps=_positive(doc, minimum, "nic_speed_mbps", int, "minimum."),
        accelerators=_positive(doc, minimum, "accelerators", int, "minimum."),
        accelerator_kinds=_string_list(doc, minimum, "accelerator_kinds", "minimum.",
                                       ACCELERATOR_KINDS, ACCELERATOR_KINDS),
        memory_tolerance=float(tolerance.get("memory", 0)),
        disk_tolerance=float(tolerance.get("disk", 0)),
        always=_string_list(doc, caps, "always", "capabilities.", CAPABILITIES),
        choose_one=choose_one,
        default_choice=default_choice,
        source=str(doc.path),
    )


def default_profiles_dir() -> Path:
    """Where the shipped profiles are: the package data of ``appliance.profiles`` (the
    repository's ``profiles/`` links there)."""
    try:
        return Path(str(importlib.resources.files("appliance.profiles").joinpath("mini.toml"))
                    ).parent
    except (ModuleNotFoundError, FileNotFoundError):
        raise ProfileError("the shipped profiles (appliance.profiles) are missing") from None


def load_profiles(directory: str | Path | None = None) -> list[Profile]:
    """Every ``*.toml`` profile in ``directory``, smallest first."""
    directory = Path(directory) if directory is not None else default_profiles_dir()
    if not directory.is_dir():
        raise ProfileError(f"profiles directory {str(directory)!r} does not exist")
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ProfileError(f"no profile files (*.toml) in {str(directory)!r}")
    profiles = [load_profile(f) for f in files]
    seen: dict[str, str] = {}
    ranks: dict[int, str] = {}
    for p in profiles:
        if p.name in seen:
            raise ProfileError(
                f"profile {p.name!r} is defined twice: {seen[p.name]} and {p.source}"
            )
        if p.rank in ranks:
            raise ProfileError(f"profiles {ranks[p.rank]!r} and {p.name!r} share rank {p.rank}")
        seen[p.name], ranks[p.rank] = p.source, p.name
    return sorted(profiles, key=lambda p: p.rank)


def _fmt_gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _fmt_tb(n: float) -> str:
    return f"{n / TB:.2f} TB ({n / (1 << 40):.2f} TiB)"


def evaluate(profile: Profile, inv: Inventory) -> list[Criterion]:
    """Each of ``profile``'s minimums against ``inv``, met or missed, with what was found."""
    out = [
        Criterion("cores", f">= {profile.cores} cores", f"{inv.cpu.cores} cores",
                  inv.cpu.cores >= profile.cores),
    ]
    mem_needed = profile.memory_gb * GIB * (1 - profile.memory_tolerance)
    out.append(Criterion(
        "memory",
        f"{profile.memory_gb:g} GB (>= {_fmt_gib(mem_needed)} reported)",
        _fmt_gib(inv.memory_bytes),
        inv.memory_bytes >= mem_needed,
    ))
    disk_needed = profile.disk_tb * TB * (1 - profile.disk_tolerance)
    out.append(Criterion(
        "disk",
        f"{profile.disk_tb:g} TB (>= {_fmt_tb(disk_needed)} in all disks)",
        f"{_fmt_tb(inv.disk_bytes)} in {len(inv.disks)} disk(s)",
        inv.disk_bytes >= disk_needed,
    ))
    out.append(_network(profile, inv))
    accels = [a for a in inv.accelerators if a.kind in profile.accelerator_kinds]
    if profile.accelerators:
        out.append(Criterion(
            "accelerator",
            f">= {profile.accelerators} of {'/'.join(profile.accelerator_kinds)}",
            ", ".join(f"{a.kind} {a.vendor} {a.pci}" for a in accels) or "none",
            len(accels) >= profile.accelerators,
        ))
    return out


def _network(profile: Profile, inv: Inventory) -> Criterion:
    """Ports at the profile's speed.

    sysfs gives no speed for a port without a link, so a down port counts as a twin of the
    verified fast ports when at least one port of the box is verified at that speed: a server
    with one cable in is still the box it was bought as.
    """
    need = profile.nic_speed_mbps
    fast = [n for n in inv.nics if n.speed_mbps is not None and n.speed_mbps >= need]
    unknown = [n for n in inv.nics if n.speed_mbps is None]
    counted = len(fast) + (len(unknown) if fast else 0)
    found = ", ".join(
        f"{n.name} {n.speed_mbps} Mb/s" if n.speed_mbps is not None
        else f"{n.name} {'up' if n.up else 'down'}, speed unknown"
        for n in inv.nics
    ) or "no physical port"
    return Criterion(
        "network",
        f"{profile.nic_ports} x >= {need} Mb/s",
        found,
        profile.nic_ports == 0 or (counted >= profile.nic_ports and bool(fast)),
    )


def match(
    inv: Inventory,
    profiles: list[Profile] | None = None,
    *,
    choice: str | None = None,
    override: dict[str, Any] | None = None,
) -> ProfileMatch:
    """The largest profile ``inv`` meets (or the administrator's ``override``), explained."""
    profiles = load_profiles() if profiles is None else profiles
    if not profiles:
        raise ProfileError("no profiles loaded")
    by_name = {p.name: p for p in profiles}
    evaluated = [(p, evaluate(p, inv)) for p in profiles]
    considered = [
        {"profile": p.name, "met": all(c.met for c in crit), "criteria": [asdict(c) for c in crit]}
        for p, crit in evaluated
    ]
    chosen, criteria = UNCLASSIFIED_PROFILE, evaluated[0][1]
    for p, crit in evaluated:
        if all(c.met for c in crit):
            chosen, criteria = p, crit
    hardware = chosen.name
    if override is not None:
        name = override.get("profile")
        if name == UNCLASSIFIED:
            chosen = UNCLASSIFIED_PROFILE
        elif name == DEVELOPMENT:
            chosen = DEVELOPMENT_PROFILE  # the hardware's criteria stay shown
        elif name in by_name:
            chosen = by_name[name]
            criteria = next(crit for p, crit in evaluated if p.name == name)
        else:
            raise ProfileError(f"override names unknown profile {name!r}")
    notes = []
    caps = chosen.capabilities(choice)
    if "tee" in caps and not any(inv.tee.values()):
        caps.remove("tee")
        # a development machine without a TEE is expected, not a fault worth a note
        if chosen is not DEVELOPMENT_PROFILE:
            notes.append("capability tee is off: the CPU offers no SGX, SEV-SNP or TDX")
    return ProfileMatch(
        profile=chosen.name,
        capabilities=caps,
        router_policy=chosen.router_policy,
        criteria=criteria,
        considered=considered,
        override=override,
        notes=notes,
        hardware_profile=hardware,
    )


def profile_names(profiles: list[Profile]) -> list[str]:
    """Every name an override may give: the loaded profiles, unclassified and development."""
    return [p.name for p in profiles] + [UNCLASSIFIED, DEVELOPMENT]


def parse_override(raw: str | None, names: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The stored ``settings.profile_override`` text as (override, None), or (None, why) when
    it cannot be used.

    The row is written by the daemon, but a restored backup or a hand edit can leave anything
    there; a bad row must never keep the daemon from starting, so it is ignored with a reason.
    """
    if raw is None:
        return None, None
    try:
        value = json.loads(raw)
    except ValueError:
        return None, f"settings.profile_override is not valid JSON ({raw[:40]!r})"
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, (f"settings.profile_override must be an object with a 'profile' name, "
                      f"got {type(value).__name__} {raw[:40]!r}")
    name = value.get("profile")
    if not isinstance(name, str) or name not in names:
        return None, (f"settings.profile_override names {name!r}, not a profile: must be one "
                      f"of {', '.join(names)}")
    return value, None


__all__ = [
    "CAPABILITIES",
    "DEVELOPMENT",
    "UNCLASSIFIED",
    "Criterion",
    "Profile",
    "ProfileError",
    "ProfileMatch",
    "TomlFileError",
    "evaluate",
    "load_profile",
    "load_profiles",
    "match",
    "parse_override",
    "profile_names",
]
