"""Which CPU trusted execution environments the host offers, read through a root prefix."""

from __future__ import annotations

import os
from pathlib import Path

# A TEE counts as offered when the CPU advertises it or the kernel exposes its device node
# (guests see the device node; hosts see the flag).
_TEES = {
    "sgx": ({"sgx"}, ("dev/sgx_enclave", "dev/sgx/enclave")),
    "sev_snp": ({"sev_snp"}, ("dev/sev-guest",)),
    "tdx": ({"tdx_guest", "tdx_host_platform"}, ("dev/tdx_guest", "dev/tdx-guest")),
}


def features(root: str | os.PathLike[str] = "/") -> dict[str, bool]:
    """{"sgx": bool, "sev_snp": bool, "tdx": bool} for the host whose filesystem is at `root`."""
    base = Path(root)
    flags = cpu_flags(base)
    return {
        name: bool(flags & wanted) or any((base / node).exists() for node in nodes)
        for name, (wanted, nodes) in _TEES.items()
    }


def cpu_flags(root: Path) -> set[str]:
    try:
        text = (root / "proc" / "cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags
