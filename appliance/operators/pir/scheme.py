"""The LWE private-information-retrieval scheme (SimplePIR, Henzinger et al., USENIX Security
2023) over ``accel.lwe``: parameters, the public matrix, the hint, queries and their decoding.

The database is a matrix D of ``rows x cols`` bytes (plaintext modulus p = 256). With A a
public ``cols x n`` matrix over Z_q (q = 2^32, expanded from a seed), the server publishes the
hint H = D A once. To read column j the client draws a fresh secret s (uniform in Z_q^n) and
error e (discrete Gaussian, sigma 6.4) and sends

    qu = A s + e + Delta * u_j            (Delta = q / p = 2^24, u_j the j-th unit vector)

which is an LWE sample plus a message: indistinguishable from uniform without s, so the server
learns nothing about j. The server answers D qu (one pass over D) and the client computes

    D qu - H s = D e + Delta * D[:, j]

and rounds each entry to the nearest multiple of Delta: the noise |D e| stays below Delta / 2
with overwhelming probability (``noise_bound``), so it reads column j exactly. docs/pir.md has
the security argument and the parameters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from accel import lwe
from appliance.errors import ApplianceError
from appliance.operators.base import OperatorError

#: LWE secret dimension, modulus and error width (SimplePIR's 128-bit parameter set)
N = 1024
LOG_Q = 32
SIGMA = 6.4
#: plaintext modulus: one database byte per matrix entry
P = 256
DELTA = (1 << LOG_Q) // P
#: what a service's description states and a client requires, verbatim
PARAMS = {"n": N, "log_q": LOG_Q, "p": P, "sigma": SIGMA}
#: most columns (LWE samples the client's query gives away) the noise analysis admits: at this
#: width the noise is below Delta / 2 by more than 14 standard deviations (see noise_bound)
MAX_COLS = 1 << 17
SEED_BYTES = 16
#: error values beyond 10 sigma have probability below 2^-70 and are cut from the table
_TAIL = math.ceil(10 * SIGMA)


class PirError(OperatorError, ApplianceError):
    """A private query that cannot go on: bad parameters, a malformed query or answer.
    ``status`` is the code the local API and the wire answer it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class Shape:
    """The database matrix: ``rows`` entries per column, ``cols`` columns."""

    rows: int
    cols: int

    def check(self) -> None:
        if not (1 <= self.cols <= MAX_COLS and self.rows >= 1):
            raise PirError(f"pir: a {self.rows} x {self.cols} database is outside 1..{MAX_COLS} "
                           "columns")

    @property
    def query_bytes(self) -> int:
        return 4 * self.cols

    @property
    def answer_bytes(self) -> int:
        return 4 * self.rows

    @property
    def hint_bytes(self) -> int:
        return 4 * N * self.rows


def noise_bound(cols: int) -> float:
    """How many standard deviations of the decoding noise fit below Delta / 2: the noise of
    one entry is a sum of ``cols`` errors times bytes below 256, so its deviation is at most
    sqrt(cols) * 255 * sigma."""
    return (DELTA / 2) / (math.sqrt(cols) * 255 * SIGMA)


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def public_matrix(seed: bytes, cols: int) -> np.ndarray:
    """A^T as ``(N, cols)`` uint32: AES-128-CTR keyed by the seed, counter from zero, read as
    little-endian words. Uniform to anyone who cannot tell AES from a random function; the
    server and every client expand the same matrix from the published seed."""
    if len(seed) != SEED_BYTES:
        raise PirError(f"pir: a public-matrix seed is {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    words = np.frombuffer(stream.update(bytes(4 * N * cols)), dtype="<u4")
    return words.reshape(N, cols).astype(np.uint32, copy=False)


def hint(matrix: lwe.Matrix, a_t: np.ndarray) -> np.ndarray:
    """H^T = (D A)^T as ``(N, rows)`` uint32: the client's one-time download. It is the LWE
    pass with the N columns of A as queries, so it runs on the same kernel (and device)."""
    return matrix.mul(a_t)


# -- the error distribution ------------------------------------------------------------------

def _gaussian_table() -> tuple[np.ndarray, np.ndarray]:
    values = np.arange(-_TAIL, _TAIL + 1)
    weights = np.exp(-(values.astype(np.float64) ** 2) / (2 * SIGMA * SIGMA))
    cdf = np.cumsum(weights / weights.sum())
    # thresholds on 64-bit uniforms; the last is 2^64 - 1 so every draw lands somewhere
    bounds = np.minimum(cdf * 2.0**64, 2.0**64 - 1).astype(np.uint64)
    bounds[-1] = np.uint64(2**64 - 1)
    return values, bounds


_VALUES, _BOUNDS = _gaussian_table()


def gaussian(shape: tuple[int, ...]) -> np.ndarray:
    """Discrete Gaussian errors (sigma 6.4, |e| <= 64) as uint32 (two's complement), drawn by
    inversion from the operating system's random bytes."""
    count = int(np.prod(shape))
    draws = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    picks = np.searchsorted(_BOUNDS, draws, side="left")
    return _VALUES[picks].astype(np.int64).astype(np.uint32).reshape(shape)


def secrets(batch: int) -> np.ndarray:
    """``(batch, N)`` uniform secrets in Z_q, one per query."""
    return np.frombuffer(os.urandom(4 * N * batch), dtype="<u4").astype(
        np.uint32, copy=False).reshape(batch, N)


# -- the client ------------------------------------------------------------------------------

def make_queries(a_t: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Queries for ``columns`` (one per entry): ``(secrets, queries)``, queries ``(batch,
    cols)`` uint32 to send, secrets kept to decode the answers."""
    cols = a_t.shape[1]
    columns = np.asarray(columns, dtype=np.int64)
    if columns.ndim != 1 or (columns.size and (columns.min() < 0 or columns.max() >= cols)):
        raise PirError(f"pir: query columns must lie in 0..{cols - 1}")
    s = secrets(len(columns))
    q = lwe.matmul_u32(s, a_t)
    q += gaussian(q.shape)
    q[np.arange(len(columns)), columns] += np.uint32(DELTA)
    return s, q


def decode(answers: np.ndarray, s: np.ndarray, hint_t: np.ndarray) -> np.ndarray:
    """The columns asked for, ``(batch, rows)`` uint8, from the server's answers."""
    if answers.shape != (s.shape[0], hint_t.shape[1]):
        raise PirError(f"pir: the answers are shaped {answers.shape}, expected "
                       f"{(s.shape[0], hint_t.shape[1])}")
    noisy = answers - lwe.matmul_u32(s, hint_t)  # uint32: wraps mod q
    return ((noisy + np.uint32(DELTA // 2)) >> np.uint32(LOG_Q - 8)).astype(np.uint8)
