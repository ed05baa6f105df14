"""The negacyclic NTT and product computed from their definitions with Python integers."""

from __future__ import annotations

import numpy as np


def bitrev(j: int, log_n: int) -> int:
    return int(format(j, f"0{log_n}b")[::-1], 2) if log_n else 0


def negacyclic_product(a: list[int], b: list[int], q: int) -> list[int]:
    """Schoolbook ``a * b mod (x^n + 1, q)``: x^n wraps to -1."""
    n = len(a)
    out = [0] * n
    for i, ai in enumerate(a):
        if ai == 0:
            continue
        for j, bj in enumerate(b):
            k = i + j
            if k < n:
                out[k] += ai * bj
            else:
                out[k - n] -= ai * bj
    return [v % q for v in out]


def evaluate(a: list[int], q: int, point: int) -> int:
    """``a(point) mod q`` by Horner's rule."""
    acc = 0
    for coefficient in reversed(a):
        acc = (acc * point + coefficient) % q
    return acc


def forward_by_definition(a: list[int], q: int, psi: int) -> list[int]:
    """The documented output: ``A[j] = a(psi^(2 bitrev(j) + 1))``."""
    n = len(a)
    log_n = n.bit_length() - 1
    return [evaluate(a, q, pow(psi, 2 * bitrev(j, log_n) + 1, q)) for j in range(n)]


def random_reduced(rng: np.random.Generator, moduli, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Uniform coefficients ``< q_l`` shaped ``(*shape, L, n)``."""
    limbs = [
        rng.integers(0, int(q), size=(*shape, n), dtype=np.uint64, endpoint=False) for q in moduli
    ]
    return np.ascontiguousarray(np.stack(limbs, axis=-2))
