"""LWE arithmetic over Z_{2^32}: the products a SimplePIR-style private query is made of
(docs/pir.md).

    from accel import lwe
    db = lwe.Matrix(entries)               # (rows, cols) uint8: the encoded database
    answers = db.mul(queries)              # (batch, cols) uint32 -> (batch, rows) uint32
    c = lwe.matmul_u32(a, b)               # (m, k) @ (k, n) uint32, exact mod 2^32

``Matrix.mul`` is the server's pass over the database, one of the router's ops (``"lwe"``): a
C kernel on the CPU (AVX-512 or AVX2 where present, all cores), an OpenCL or CUDA kernel where
a device is. A device keeps its copy of the matrix between calls, so only queries and answers
cross the bus. ``matmul_u32`` is the client's side (its secret times the public matrix and the
hint): small products that BLAS runs exactly in float64 on 16-bit halves.
"""

from __future__ import annotations

import numpy as np

from accel import backends
from accel.lwe import cpu

BackendChoice = str | backends.Backend | None

#: float64 holds integers exactly below 2^53; a sum of k products of 32-bit values needs
#: 32 + log2(k) bits, so inner dimensions up to 2^20 stay exact (with a bit of margin)
MAX_INNER = 1 << 20
_MASK16 = np.uint32(0xFFFF)


class Matrix:
    """An ``(rows, cols)`` matrix of bytes over Z_{2^32}, to be multiplied by many queries.

    ``entries`` may be a read-only memory map: the matrix is never copied on the CPU.
    """

    def __init__(self, entries: np.ndarray) -> None:
        if not isinstance(entries, np.ndarray) or entries.dtype != np.uint8 or entries.ndim != 2:
            raise ValueError("an LWE matrix is a 2-D uint8 ndarray, got "
                             f"{getattr(entries, 'dtype', type(entries).__name__)} "
                             f"{getattr(entries, 'shape', '')}")
        if entries.shape[0] < 1 or entries.shape[1] < 1:
            raise ValueError(f"an LWE matrix needs at least one row and column, got "
                             f"{entries.shape}")
        self.entries = np.ascontiguousarray(entries)
        self.rows, self.cols = (int(x) for x in entries.shape)

    def __repr__(self) -> str:
        return f"lwe.Matrix({self.rows} x {self.cols})"

    def mul(self, queries: np.ndarray, *, backend: BackendChoice = None) -> np.ndarray:
        """``queries @ entries.T mod 2^32``: one row of answers (``rows`` words) per query
        (``cols`` words); a batch reads the matrix once."""
        q = np.asarray(queries)
        if q.dtype != np.uint32 or q.ndim != 2 or q.shape[1] != self.cols:
            raise ValueError(f"queries must be a (batch, {self.cols}) uint32 array, got "
                             f"{q.dtype} {q.shape}")
        q = np.ascontiguousarray(q)
        if q.shape[0] == 0:
            return np.empty((0, self.rows), dtype=np.uint32)
        be = backends.resolve(backend, op="lwe", size=self.entries.size * q.shape[0])
        run = getattr(be, "lwe_matmul", None)
        return run(self, q) if run is not None else cpu.matmul(self, q)


def matmul_u32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b mod 2^32`` for uint32 ``a`` (m, k) and ``b`` (k, n), exact.

    With a = a0 + 2^16 a1 and b = b0 + 2^16 b1 (16-bit halves), a @ b = a0 b0 +
    2^16 (a0 b1 + a1 b0) mod 2^32 (the 2^32 a1 b1 term vanishes): two float64 products whose
    every sum stays below 2^53.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.uint32 or b.dtype != np.uint32 or a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul_u32 takes 2-D uint32 arrays, got {a.dtype} {a.shape} and "
                         f"{b.dtype} {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"shape mismatch: {a.shape} @ {b.shape}")
    if a.shape[1] > MAX_INNER:
        raise ValueError(f"inner dimension {a.shape[1]} is over {MAX_INNER}: the float64 "
                         "products would not be exact")
    a0, a1 = (a & _MASK16).astype(np.float64), (a >> 16).astype(np.float64)
    b0, b1 = (b & _MASK16).astype(np.float64), (b >> 16).astype(np.float64)
    low = (a0 @ b0).astype(np.uint64)
    mid = (np.concatenate([a0, a1], axis=1) @ np.concatenate([b1, b0], axis=0)).astype(np.uint64)
    return ((low + (mid << np.uint64(16))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


__all__ = ["MAX_INNER", "Matrix", "cpu", "matmul_u32"]
