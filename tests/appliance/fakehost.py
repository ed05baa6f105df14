"""Fake host trees (/proc, /sys, /dev) for the inventory and profile tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30
TB = 10**12


@dataclass
class FakeHost:
    cores: int = 16
    threads_per_core: int = 2
    model: str = "Hygon C86 7285 32-core Processor"
    flags: tuple[str, ...] = ("fpu", "sse2", "avx2")
    memory_bytes: int = int(15.5 * GIB)
    # name -> size in bytes
    disks: dict[str, int] = field(default_factory=lambda: {"nvme0n1": 4 * TB})
    # name -> (speed in Mb/s, or None for "-1", or "unreadable"; operstate)
    nics: dict[str, tuple[int | str | None, str]] = field(
        default_factory=lambda: {"eno1": (1000, "up"), "eno2": (1000, "up")}
    )
    # address -> (vendor, device, class)
    pci: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    devices: tuple[str, ...] = ()

    def build(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        self._cpuinfo(root)
        _write(root / "proc/meminfo",
               f"MemTotal:       {self.memory_bytes // 1024} kB\nMemFree:        1024 kB\n")
        for name, size in self.disks.items():
            _write(root / f"sys/block/{name}/size", f"{size // 512}\n")
            _write(root / f"sys/block/{name}/removable", "0\n")
            _write(root / f"sys/block/{name}/queue/rotational", "0\n")
        # block devices that are not disks of their own, and a USB stick
        for name in ("loop0", "ram0", "dm-0", "zram0"):
            _write(root / f"sys/block/{name}/size", f"{100 * TB // 512}\n")
        _write(root / "sys/block/sda/size", f"{64 * GIB // 512}\n")
        _write(root / "sys/block/sda/removable", "1\n")
        for name, (speed, state) in self.nics.items():
            base = root / f"sys/class/net/{name}"
            (base / "device").mkdir(parents=True, exist_ok=True)
            _write(base / "operstate", f"{state}\n")
            _write(base / "carrier", "1\n" if state == "up" else "0\n")
            if speed == "unreadable":
                # sysfs answers EINVAL for a down link; a directory read fails the same way
                (base / "speed").mkdir()
            else:
                _write(base / "speed", f"{-1 if speed is None else speed}\n")
        # virtual interfaces: no device link, never counted
        for name in ("lo", "docker0"):
            _write(root / f"sys/class/net/{name}/operstate", "unknown\n")
            _write(root / f"sys/class/net/{name}/speed", "10000\n")
        (root / "sys/bus/pci/devices").mkdir(parents=True, exist_ok=True)
        for address, (vendor, device, klass) in self.pci.items():
            base = root / f"sys/bus/pci/devices/{address}"
            _write(base / "vendor", f"0x{vendor:04x}\n")
            _write(base / "device", f"0x{device:04x}\n")
            _write(base / "class", f"0x{klass:06x}\n")
        (root / "dev").mkdir(exist_ok=True)
        for dev in self.devices:
            _write(root / dev.lstrip("/"), "")
        return root

    def _cpuinfo(self, root: Path) -> None:
        blocks = []
        n = 0
        for core in range(self.cores):
            for _ in range(self.threads_per_core):
                blocks.append(
                    f"processor\t: {n}\nvendor_id\t: HygonGenuine\nmodel name\t: {self.model}\n"
                    f"physical id\t: {core // 64}\ncore id\t\t: {core % 64}\n"
                    f"flags\t\t: {' '.join(self.flags)}\n"
                )
                n += 1
        _write(root / "proc/cpuinfo", "\n".join(blocks) + "\n")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# PCI functions seen on real boxes
HYGON_HOST_BRIDGE = (0x1D94, 0x1450, 0x060000)
HYGON_SMBUS = (0x1D94, 0x790B, 0x0C0500)
HYGON_CRYPTO = (0x1D94, 0x1486, 0x108000)
HYGON_DCU = (0x1D94, 0x55B7, 0x120000)
NVIDIA_H100 = (0x10DE, 0x2330, 0x030200)
NVIDIA_AUDIO = (0x10DE, 0x10F0, 0x040300)
XILINX_ALVEO = (0x10EE, 0x5004, 0x120000)
AMD_CHIPSET = (0x1022, 0x1480, 0x060000)


def mini() -> FakeHost:
    return FakeHost(pci={"0000:00:00.0": HYGON_HOST_BRIDGE, "0000:00:14.0": HYGON_SMBUS})


def standard() -> FakeHost:
    return FakeHost(cores=24, memory_bytes=int(46.8 * GIB), disks={"nvme0n1": 8 * TB},
                    pci={"0000:00:00.0": HYGON_HOST_BRIDGE})


def jumbo(**changes) -> FakeHost:
    host = FakeHost(
        cores=32,
        memory_bytes=int(93.5 * GIB),
        disks={"nvme0n1": 8 * TB, "nvme1n1": 8 * TB},
        nics={"ens1f0": (10000, "up"), "ens1f1": (10000, "up"), "eno1": (1000, "up")},
        pci={"0000:00:00.0": HYGON_HOST_BRIDGE, "0000:41:00.0": HYGON_DCU},
        flags=("fpu", "avx2", "sev", "sev_es", "sev_snp"),
        devices=("/dev/tpmrm0", "/dev/tpm0", "/dev/sev-guest"),
    )
    for key, value in changes.items():
        setattr(host, key, value)
    return host


def small() -> FakeHost:
    return FakeHost(cores=4, memory_bytes=8 * GIB, disks={"vda": 256 * GIB},
                    nics={"eth0": (None, "up")})
