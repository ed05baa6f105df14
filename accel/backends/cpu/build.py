"""cffi builder of the CPU backend's C kernels (``accel.backends.cpu._cpu``).

setuptools runs it at install time through ``cffi_modules`` in setup.py; the kernels link
against the system GMP, whose fat build picks the assembly for the CPU it runs on, so the C
around it is compiled for plain x86-64 and the wheel runs on any machine of that family; the
AVX-512 IFMA kernels carry their own target attribute and run only where the CPU has them.
"""

from __future__ import annotations

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [
    "batch_ops.c",
    "fixed_base.c",
    "ifma.c",
    "ifma_batch.c",
    "ifma_multiexp.c",
    "ifma_pow.c",
    "lwe.c",
    "multiexp.c",
    "thread_pool.c",
]
HEADERS = [
    "ifma.h", "ifma_arith.h", "montgomery.h", "multiexp_windows.h", "pec_cpu.h", "thread_pool.h",
]


def _relative(name: str) -> str:
    # setuptools wants source paths relative to the project root it runs in.
    return os.path.relpath(os.path.join(HERE, name))


def _declarations() -> str:
    """The public header without preprocessor lines, which cffi's parser does not take."""
    with open(os.path.join(HERE, "pec_cpu.h"), encoding="utf-8") as f:
        header = f.read()
    header = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    kept = []
    for line in header.splitlines():
        if re.fullmatch(r"#define PEC_\w+ \d+", line.strip()):
            kept.append(line.strip())
        elif not line.startswith("#"):
            kept.append(line)
    return "\n".join(kept)


ffibuilder = FFI()
ffibuilder.cdef(_declarations())
ffibuilder.set_source(
    "accel.backends.cpu._cpu",
    '#include "pec_cpu.h"',
    sources=[_relative(s) for s in SOURCES],
    include_dirs=[_relative(".")],
    libraries=["gmp", "pthread"],
    # -fwrapv: the LWE kernel's 32-bit accumulators wrap mod 2^32 by design (lwe.c)
    extra_compile_args=["-O3", "-fwrapv", "-std=gnu11", "-Wall", "-Wextra",
                        "-Wno-unused-parameter"],
    depends=[_relative(n) for n in HEADERS],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
