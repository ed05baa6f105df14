"""Secure aggregation of the parties' update vectors (docs/fl.md): the aggregator learns the
sum of the vectors, and no party's own.

Three ways, chosen per job (``secure_aggregation``):

- ``mask`` (Bonawitz et al., CCS 2017, with the self-masks, without the secret sharing):
  every pair of parties agrees a seed by X25519; party u sends
  y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)   (mod 2^64, fixed point)
  where b_u is its own fresh self-mask seed. In the sum the pairwise masks cancel. The
  aggregator then asks every party whose y arrived (the survivors) for its b, and for the
  seeds it shares with each party whose y did not arrive (the dropped), and removes them: a
  party that drops out after masking does not stop the round. A dropped party's x stays
  hidden behind its b, which nobody reveals; a survivor's x behind the seeds it shares with
  the other survivors, which nobody reveals either.
- ``paillier``: every party encrypts its vector under the key of one party that does not
  aggregate (the first host), through ``accel``; the aggregator adds the ciphertexts and the
  key holder decrypts only the sum. Holds unless the aggregator and the key holder collude.
- ``none``: plain vectors to the aggregator, for comparison; the grade policy can forbid it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from appliance.operators.base import OperatorError

MODES = ("mask", "paillier", "none")
#: fixed point in Z_2^64: 2^-24 resolution; a party's value must stay below 2^39 / parties
FRAC_BITS = 24
PAILLIER_BITS = 2048
DOMAIN = b"pec-fl/secagg/v1\x00"


def encode(x: np.ndarray, parties: int) -> np.ndarray:
    """x (float64) as uint64 fixed point; OperatorError when a value is too big to add up."""
    limit = 2.0 ** (63 - FRAC_BITS) / parties
    if not np.all(np.isfinite(x)):
        raise OperatorError("fl: an update has NaN or infinite values")
    if np.any(np.abs(x) >= limit):
        raise OperatorError(f"fl: an update value reaches {np.abs(x).max():.3g}, past the "
                            f"{limit:.3g} that {parties} parties may add in fixed point")
    return np.round(x * 2.0**FRAC_BITS).astype(np.int64).view(np.uint64)


def decode(x: np.ndarray) -> np.ndarray:
    return x.view(np.int64).astype(np.float64) / 2.0**FRAC_BITS


def prg(seed: bytes, tag: bytes, length: int) -> np.ndarray:
    """``length`` pseudorandom uint64 from SHAKE-256(DOMAIN || seed || tag)."""
    raw = hashlib.shake_256(DOMAIN + seed + tag).digest(8 * length)
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


class MaskKeys:
    """One party's X25519 key for the job, and the seeds it agrees with each other party."""

    def __init__(self, node_id: str, job_id: str) -> None:
        self.node_id, self.job_id = node_id, job_id
        self._key = X25519PrivateKey.generate()
        self.public = self._key.public_key().public_bytes_raw()
        self.seeds: dict[str, bytes] = {}

    def agree(self, peer: str, public: Any) -> None:
        try:
            raw = bytes.fromhex(public) if isinstance(public, str) else b""
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise OperatorError(f"fl: party {peer} sent a malformed masking key") from None
        pair = "|".join(sorted((self.node_id, peer))).encode()
        self.seeds[peer] = hashlib.sha256(DOMAIN + shared + self.job_id.encode() + b"|" +
                                          pair).digest()

    def masked(self, x: np.ndarray, round_tag: bytes, self_seed: bytes) -> np.ndarray:
        """y = x + PRG(b) + sum_{v > me} PRG(s_v) - sum_{v < me} PRG(s_v), mod 2^64."""
        y = x + prg(self_seed, round_tag, len(x))
        for peer, seed in self.seeds.items():
            m = prg(seed, round_tag, len(x))
            y = y + m if self.node_id < peer else y - m
        return y


def unmask(total: np.ndarray, survivors: dict[str, bytes], dropped_seeds: list[
        tuple[str, str, bytes]], round_tag: bytes) -> np.ndarray:
    """The sum of the survivors' x from the sum of their y: remove each survivor's self-mask
    and, for each (survivor, dropped, seed), the pairwise mask the survivor added for a party
    whose y never came."""
    n = len(total)
    for seed in survivors.values():
        total = total - prg(seed, round_tag, n)
    for survivor, dropped, seed in dropped_seeds:
        m = prg(seed, round_tag, n)
        # the survivor added +m if it sorts before the dropped party, -m otherwise
        total = total - m if survivor < dropped else total + m
    return total


def parse_vector(msg: Any, tag: str, length: int, peer: str) -> np.ndarray:
    """A uint64 vector sent as a list of decimal strings (JSON has no 64-bit integers)."""
    if not (isinstance(msg, dict) and msg.get("t") == tag and isinstance(msg.get("v"), list)
            and len(msg["v"]) == length):
        raise OperatorError(f"fl: party {peer} sent a malformed {tag} (expected {length} "
                            "values)")
    try:
        values = [int(v) for v in msg["v"]]
    except (TypeError, ValueError):
        raise OperatorError(f"fl: party {peer} sent a malformed {tag}") from None
    if any(not 0 <= v < 2**64 for v in values):
        raise OperatorError(f"fl: party {peer} sent a {tag} value outside Z_2^64")
    return np.array(values, dtype=np.uint64)


def wire(x: np.ndarray) -> list[str]:
    return [str(int(v)) for v in x]


def check_seed(value: Any, peer: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise OperatorError(f"fl: party {peer} sent a malformed {what}")
    return raw


Recv = Callable[[str, str], Any]
