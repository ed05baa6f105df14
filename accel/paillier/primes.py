"""Random primes for key generation, drawn from the operating system's CSPRNG."""

from __future__ import annotations

import secrets

import gmpy2

# Rounds of Miller-Rabin on top of GMP's own test: the error bound 4**-40 is far below the
# chance of a hardware fault, at a cost that is small beside the prime search itself.
_EXTRA_ROUNDS = 40


def random_prime(bits: int) -> int:
    """A uniformly placed random prime of exactly ``bits`` bits whose two top bits are set, so
    that the product of two such primes has exactly the sum of their sizes."""
    if bits < 16:
        raise ValueError("primes must have at least 16 bits")
    while True:
        start = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        p = gmpy2.next_prime(start)
        if p.bit_length() == bits and gmpy2.is_prime(p, _EXTRA_ROUNDS):
            return int(p)
