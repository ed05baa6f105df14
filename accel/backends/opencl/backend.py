"""The OpenCL runtime for the Montgomery kernels, through pyopencl."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyopencl as cl

from accel.backends.opencl.kernel_backend import KERNEL_DIR, KernelBackend

# Work-items per launch are rounded up to this so that the runtime can pick a sensible
# work-group size; the kernels ignore the padding through their element count.
_LAUNCH_GRANULE = 64

# CPU runtimes (PoCL) run a work-group as a loop over its work-items on one worker thread and
# keep the private arrays of all of them side by side on that thread's stack (8 MiB by
# default, less on some systems). A runtime-chosen group of 1024 or 4096 work-items at
# 64 limbs needs 10-40 MiB there and kills the process with SIGSEGV, so on CPU devices the
# group size is fixed so that one group's private arrays stay within this budget.
CPU_PRIVATE_BUDGET = 1 << 20

# Upper bound of the private words per limb of the modulus that one work-item of
# montgomery.cl holds at once (powmod: 16-entry window table, accumulator, the product's
# L + 2 scratch words and from_mont's constant one).
PRIVATE_WORDS_PER_LIMB = 20

DEVICE_ENV = "PEC_OPENCL_DEVICE"


def _pick_device() -> cl.Device:
    """An accelerator if there is one (GPU, FPGA, DCU), else the first device.

    ``$PEC_OPENCL_DEVICE`` picks by a substring of the device name instead.
    """
    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    if not devices:
        raise RuntimeError("no OpenCL device found (is an ICD such as PoCL installed?)")
    wanted = os.environ.get(DEVICE_ENV)
    if wanted:
        for d in devices:
            if wanted.lower() in d.name.lower():
                return d
        raise RuntimeError(f"no OpenCL device name contains {wanted!r}")
    accelerators = [d for d in devices if not d.type & cl.device_type.CPU]
    return (accelerators or devices)[0]


class OpenCLBackend(KernelBackend):
    name = "opencl"
    device_errors = (cl.Error,)

    def __init__(self) -> None:
        super().__init__()
        self.device = _pick_device()
        self.tables_on_device = not self.device.type & cl.device_type.CPU
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context)
        if self.device.type & cl.device_type.CPU:
            self.parallel_items = 32 * int(self.device.max_compute_units)

    def devices(self) -> list[str]:
        return [f"{self.device.name.strip()} ({self.device.platform.name.strip()})"]

    def _build(self, source: str, defines: dict[str, int]) -> Any:
        options = [f"-D{k}={v}" for k, v in defines.items()]
        if self.device.type & cl.device_type.CPU:
            options.append("-DMONT_NOINLINE")
        program = cl.Program(self.context, source).build(options=options)
        kernels = {k.function_name: k for k in program.all_kernels()}
        return kernels, self._group_for(defines.get("NLIMBS", 1))

    def _group_for(self, limbs: int) -> int | None:
        """Work-group size of launches that do not fix one: the runtime's choice on GPUs, a
        power of two whose private arrays fit :data:`CPU_PRIVATE_BUDGET` on CPU devices."""
        if not self.device.type & cl.device_type.CPU:
            return None
        fits = CPU_PRIVATE_BUDGET // (PRIVATE_WORDS_PER_LIMB * 8 * max(1, limbs))
        group = 1 << (max(1, min(fits, self.max_group_size())).bit_length() - 1)
        return group

    def kernel_path(self, name: str) -> Path:
        return KERNEL_DIR / f"{name}.cl"

    def max_group_size(self) -> int:
        return int(self.device.max_work_group_size)

    def _upload(self, host: np.ndarray, writable: bool = False) -> Any:
        access = cl.mem_flags.READ_WRITE if writable else cl.mem_flags.READ_ONLY
        flags = access | cl.mem_flags.COPY_HOST_PTR
        return cl.Buffer(self.context, flags, hostbuf=np.ascontiguousarray(host))

    def _alloc(self, words: int) -> Any:
        return cl.Buffer(self.context, cl.mem_flags.READ_WRITE, size=max(1, words) * 8)

    def _launch(self, program: Any, kernel: str, threads: int, args: list[Any],
                group: int | None = None) -> None:
        kernels, default_group = program
        if group is None:
            granule = default_group or _LAUNCH_GRANULE
            padded = -(-threads // granule) * granule
            local = None if default_group is None else (default_group,)
            kernels[kernel](self.queue, (padded,), local, *args)
        else:
            kernels[kernel](self.queue, (threads,), (group,), *args)

    def _download(self, buffer: Any, shape: tuple[int, ...]) -> np.ndarray:
        host = np.empty(shape, dtype=np.uint64)
        cl.enqueue_copy(self.queue, host, buffer)
        return host

    def synchronize(self) -> None:
        self.queue.finish()
