"""cffi builder of the ECDH-PSI engine (``appliance.operators.psi._ecdh``).

setuptools runs it through ``cffi_modules`` in setup.py; for development compile it in place
with ``.venv/bin/python appliance/operators/psi/build.py`` from the project root (run as a
file: importing it through the package would import the engine it is about to build). It links
the system libsodium (Debian ``libsodium-dev``); crypto_mb, where used, is loaded at run time.
"""

from __future__ import annotations

import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _relative(name: str) -> str:
    # setuptools wants source paths relative to the project root it runs in.
    return os.path.relpath(os.path.join(HERE, name))


def _declarations() -> str:
    """The header without comments and preprocessor lines, which cffi's parser does not take."""
    with open(os.path.join(HERE, "ecdh_batch.h"), encoding="utf-8") as f:
        header = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    return "\n".join(line for line in header.splitlines() if not line.startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(_declarations())
ffibuilder.set_source(
    "appliance.operators.psi._ecdh",
    '#include "ecdh_batch.h"',
    sources=[_relative("ecdh_batch.c")],
    include_dirs=[_relative(".")],
    libraries=["sodium", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
    depends=[_relative("ecdh_batch.h")],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
    # cffi leaves its generated C and objects beside the sources; only the module is kept
    for leftover in ("_ecdh.c", "_ecdh.o", "ecdh_batch.o"):
        if os.path.exists(os.path.join(HERE, leftover)):
            os.remove(os.path.join(HERE, leftover))
