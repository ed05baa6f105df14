"""Which PCI functions are compute accelerators, by vendor and class code.

The class code in sysfs is 24 bits: base class, subclass, programming interface. The rules:

- NVIDIA (0x10de) and AMD (0x1002): a display controller (base class 0x03, e.g. 0x0300 VGA,
  0x0302 3D controller) or a processing accelerator (0x12) is a GPU. Their audio functions
  (0x0403) and bridges are not.
- Hygon (0x1d94): a DCU shows as a processing accelerator (0x12xx) or as "other display
  controller" (0x0380). Hygon also makes the CPU's own chipset functions (host bridges 0x0600,
  system peripherals 0x08xx, serial bus controllers 0x0cxx, crypto 0x1080 ...); those are not
  accelerators, whatever their vendor id.
- Xilinx (0x10ee) and Intel/Altera (0x1172): an FPGA card shows as a processing accelerator
  (0x12xx), a signal processing controller (0x1180) or a co-processor (0x0b40).

Anything else (including AMD's CPU chipset vendor id 0x1022) is not an accelerator.
"""

from __future__ import annotations

from dataclasses import dataclass

VENDORS = {
    0x10DE: "nvidia",
    0x1002: "amd",
    0x1D94: "hygon",
    0x10EE: "xilinx",
    0x1172: "intel-altera",
}

# vendor -> (kind, class prefixes that make it that kind); a prefix is the class code's top
# 8 bits (base class) or top 16 bits (base class + subclass).
_RULES: dict[int, tuple[str, tuple[tuple[int, int], ...]]] = {
    0x10DE: ("gpu", ((0x03, 8), (0x12, 8))),
    0x1002: ("gpu", ((0x03, 8), (0x12, 8))),
    0x1D94: ("dcu", ((0x12, 8), (0x0380, 16))),
    0x10EE: ("fpga", ((0x12, 8), (0x1180, 16), (0x0B40, 16))),
    0x1172: ("fpga", ((0x12, 8), (0x1180, 16), (0x0B40, 16))),
}


@dataclass(frozen=True)
class PciFunction:
    address: str
    vendor_id: int
    device_id: int
    class_code: int


def accelerator_kind(fn: PciFunction) -> str | None:
    """"gpu", "dcu" or "fpga" when ``fn`` is a compute accelerator, else None."""
    rule = _RULES.get(fn.vendor_id)
    if rule is None:
        return None
    kind, prefixes = rule
    for prefix, bits in prefixes:
        if fn.class_code >> (24 - bits) == prefix:
            return kind
    return None


def parse_hex(text: str | None) -> int | None:
    """A sysfs hex value such as ``0x030200``; None when absent or malformed."""
    if text is None:
        return None
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None
