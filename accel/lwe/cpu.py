"""The CPU's LWE pass: ``pec_lwe_matmul_u8`` in the CPU backend's C extension (lwe.c)."""

from __future__ import annotations

from typing import Any

import numpy as np

from accel.backends.cpu._cpu import ffi, lib
from accel.backends.cpu.backend import _threads_from


def matmul(matrix: Any, queries: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``queries @ matrix.entries.T mod 2^32`` for a validated ``accel.lwe.Matrix`` and a
    ``(batch, cols)`` C-contiguous uint32 batch."""
    batch = queries.shape[0]
    out = np.empty((batch, matrix.rows), dtype=np.uint32)
    if batch == 0:
        return out
    status = lib.pec_lwe_matmul_u8(
        ffi.from_buffer("uint8_t[]", matrix.entries), matrix.rows, matrix.cols,
        ffi.from_buffer("uint32_t[]", queries), batch,
        ffi.from_buffer("uint32_t[]", out, require_writable=True), _threads_from(threads))
    if status != 0:
        raise MemoryError(f"the LWE kernel could not allocate its {batch} x {matrix.cols} "
                          "split of the queries")
    return out
