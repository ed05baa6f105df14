"""What hardware this node has: CPU, memory, disks, NICs, accelerators, TPM, TEE.

All reads go through a root prefix (``HostFS``). Accelerator devices that the ``accel`` router
drives come from the router's own survey (``accel.backends.available``) and are optional: a
detector run on a fake root passes ``survey=False``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import accel.backends
import tee
from accel.backends import BackendStatus
from appliance.host.hostfs import HostFS
from appliance.host.pci import VENDORS, PciFunction, accelerator_kind, parse_hex

# cpuinfo flags that say the CPU offers a trusted execution environment
TEE_FLAGS = ("sgx", "sgx_lc", "sev", "sev_es", "sev_snp", "tdx_guest", "tdx_host_platform")
# block devices that are not disks of their own
_VIRTUAL_BLOCK = re.compile(r"^(loop|ram|dm-|zram|md|sr|fd|nbd)")
# sysfs reports an unknown link speed as -1 (or as its unsigned 32-bit form)
_UNKNOWN_SPEEDS = {-1, 0, 0xFFFFFFFF}


@dataclass(frozen=True)
class Cpu:
    model: str
    cores: int
    threads: int
    flags_tee: list[str]


@dataclass(frozen=True)
class Disk:
    name: str
    size_bytes: int
    rotational: bool | None


@dataclass(frozen=True)
class Nic:
    name: str
    speed_mbps: int | None
    up: bool


@dataclass(frozen=True)
class Accelerator:
    kind: str
    vendor: str
    pci: str
    device_id: str
    class_code: str


@dataclass
class Inventory:
    cpu: Cpu
    memory_bytes: int
    disks: list[Disk]
    nics: list[Nic]
    accelerators: list[Accelerator]
    tpm: dict[str, Any]
    tee: dict[str, bool]
    accel_devices: list[dict[str, Any]] = field(default_factory=list)
    backends: list[BackendStatus] = field(default_factory=list)

    @property
    def disk_bytes(self) -> int:
        return sum(d.size_bytes for d in self.disks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("backends")
        return out


def read_cpu(fs: HostFS) -> Cpu:
    text = fs.read_text("/proc/cpuinfo")
    if text is None:
        raise FileNotFoundError(f"cannot read {fs.path('/proc/cpuinfo')}")
    model = ""
    threads = 0
    flags: set[str] = set()
    physical: set[tuple[str, str]] = set()
    current_pkg = current_core = None
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not key:
            # a blank line ends one logical CPU's block
            if current_core is not None:
                physical.add((current_pkg or "0", current_core))
            current_pkg = current_core = None
            continue
        if key == "processor":
            threads += 1
        elif key in ("model name", "Model", "cpu model") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
        elif key == "physical id":
            current_pkg = value
        elif key == "core id":
            current_core = value
    # physical cores when the kernel says which thread sits on which core, else threads
    cores = len(physical) or threads
    return Cpu(
        model=model or "unknown",
        cores=cores,
        threads=threads,
        flags_tee=sorted(f for f in flags if f in TEE_FLAGS),
    )


def read_memory_bytes(fs: HostFS) -> int:
    text = fs.read_text("/proc/meminfo")
    if text is None:
        raise FileNotFoundError(f"cannot read {fs.path('/proc/meminfo')}")
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024
    raise ValueError(f"{fs.path('/proc/meminfo')} has no MemTotal line")


def read_disks(fs: HostFS) -> list[Disk]:
    disks = []
    for name in fs.listdir("/sys/block"):
        if _VIRTUAL_BLOCK.match(name):
            continue
        if fs.read_value(f"/sys/block/{name}/removable") == "1":
            continue
        sectors = fs.read_value(f"/sys/block/{name}/size")
        if sectors is None or not sectors.isdigit() or int(sectors) == 0:
            continue
        rotational = fs.read_value(f"/sys/block/{name}/queue/rotational")
        disks.append(
            Disk(
                name=name,
                # sysfs counts 512-byte sectors whatever the device's own sector size
                size_bytes=int(sectors) * 512,
                rotational=None if rotational is None else rotational == "1",
            )
        )
    return disks


def read_nics(fs: HostFS) -> list[Nic]:
    """Physical network ports: those with a ``device`` link (no lo, bridges, veth, tun)."""
    nics = []
    for name in fs.listdir("/sys/class/net"):
        base = f"/sys/class/net/{name}"
        if not fs.exists(f"{base}/device"):
            continue
        operstate = fs.read_value(f"{base}/operstate")
        carrier = fs.read_value(f"{base}/carrier")
        up = operstate == "up" or (operstate == "unknown" and carrier == "1")
        speed: int | None = None
        raw = fs.read_value(f"{base}/speed")
        if raw is not None:
            try:
                speed = int(raw)
            except ValueError:
                speed = None
        if speed is not None and (speed in _UNKNOWN_SPEEDS or speed < 0):
            speed = None
        nics.append(Nic(name=name, speed_mbps=speed if up else None, up=up))
    return nics


def read_accelerators(fs: HostFS) -> list[Accelerator]:
    found = []
    for address in fs.listdir("/sys/bus/pci/devices"):
        base = f"/sys/bus/pci/devices/{address}"
        vendor = parse_hex(fs.read_value(f"{base}/vendor"))
        device = parse_hex(fs.read_value(f"{base}/device"))
        klass = parse_hex(fs.read_value(f"{base}/class"))
        if vendor is None or klass is None:
            continue
        fn = PciFunction(address, vendor, device or 0, klass)
        kind = accelerator_kind(fn)
        if kind is None:
            continue
        found.append(
            Accelerator(
                kind=kind,
                vendor=VENDORS[vendor],
                pci=address,
                device_id=f"{vendor:04x}:{device or 0:04x}",
                class_code=f"0x{klass:06x}",
            )
        )
    return found


def read_tpm(fs: HostFS) -> dict[str, Any]:
    # the resource manager node is what a multi-client user (the daemon) should open
    for path in ("/dev/tpmrm0", "/dev/tpm0"):
        if fs.exists(path):
            return {"present": True, "path": path}
    return {"present": False, "path": None}


def detect(root: str = "/", *, survey: bool = True) -> Inventory:
    """The inventory of the host seen from ``root``.

    ``survey`` also asks the ``accel`` backends which devices they drive (that is the live
    host, not ``root``).
    """
    fs = HostFS(root)
    cpu = read_cpu(fs)
    # refresh: each backend's health probe runs, and the router routes by what it finds
    backends = accel.backends.available(refresh=True) if survey else []
    return Inventory(
        cpu=cpu,
        memory_bytes=read_memory_bytes(fs),
        disks=read_disks(fs),
        nics=read_nics(fs),
        accelerators=read_accelerators(fs),
        tpm=read_tpm(fs),
        tee=tee.features(fs.root),
        accel_devices=[
            {"backend": b["name"], "device": d} for b in backends for d in b["devices"]
        ],
        backends=backends,
    )
