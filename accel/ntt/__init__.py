"""Negacyclic number-theoretic transforms over RNS limbs (docs/ntt.md).

    from accel import ntt
    plan = ntt.Plan(n=16384, moduli=ntt.primes(bits=60, count=8, n=16384))
    A = plan.forward(a); a2 = plan.inverse(A); c = plan.polymul(a, b)
"""

from accel.ntt.plan import Plan
from accel.ntt.primes import is_prime, primes

__all__ = ["Plan", "is_prime", "primes"]
