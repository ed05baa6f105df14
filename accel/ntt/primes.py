"""NTT-friendly primes: ``q = 1 (mod 2n)``, so that ``Z_q`` holds a primitive ``2n``-th root."""

from __future__ import annotations

# Miller-Rabin with these bases is deterministic for every n < 3.3 * 10^24, which covers all
# 64-bit moduli (Sorenson and Webster, 2015).
_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)

MAX_MODULUS_BITS = 62


def is_prime(value: int) -> bool:
    """Deterministic primality for ``value < 3.3 * 10^24`` (all 64-bit integers)."""
    if value < 2:
        return False
    for p in _WITNESSES:
        if value % p == 0:
            return value == p
    d, s = value - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _WITNESSES:
        x = pow(a, d, value)
        if x in (1, value - 1):
            continue
        for _ in range(s - 1):
            x = x * x % value
            if x == value - 1:
                break
        else:
            return False
    return True


def primes(bits: int, count: int, n: int) -> list[int]:
    """The ``count`` largest primes of exactly ``bits`` bits with ``q = 1 (mod 2n)``, descending.

    ``bits`` is at most 62 (the butterflies keep values below ``4q`` in a 64-bit word) and ``n``
    is the transform size, a power of two.
    """
    if not isinstance(n, int) or n < 2 or n & (n - 1):
        raise ValueError(f"n must be a power of two >= 2, got {n!r}")
    if not isinstance(bits, int) or not 2 <= bits <= MAX_MODULUS_BITS:
        raise ValueError(f"bits must be between 2 and {MAX_MODULUS_BITS}, got {bits!r}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    step = 2 * n
    if step.bit_length() >= bits:
        raise ValueError(f"no {bits}-bit prime can be 1 mod 2n = {step}: use more bits")
    low = 1 << (bits - 1)
    # the largest candidate below 2^bits that is 1 mod 2n
    candidate = ((1 << bits) - 2) // step * step + 1
    found: list[int] = []
    while candidate >= low and len(found) < count:
        if is_prime(candidate):
            found.append(candidate)
        candidate -= step
    if len(found) < count:
        raise ValueError(f"only {len(found)} primes of {bits} bits are 1 mod {step}, not {count}")
    return found
