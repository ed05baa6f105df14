"""The conformance oracle: the backend protocol computed with Python's own integers.

It is slow and obviously correct, which is all a reference needs to be.
"""

from __future__ import annotations

import numpy as np

from accel.backends.base import (
    Backend,
    FixedBaseTable,
    ints_to_limbs,
    limbs_for,
    limbs_to_ints,
)


class ReferenceBackend(Backend):
    name = "reference"

    def devices(self) -> list[str]:
        return ["python integers"]

    @staticmethod
    def _rows(a: np.ndarray, n: int) -> list[int]:
        vals = limbs_to_ints(a)
        return vals * n if len(vals) == 1 and n != 1 else vals

    def mulmod(self, a, b, modulus):
        xs = limbs_to_ints(a)
        ys = self._rows(b, len(xs))
        products = [x * y % modulus for x, y in zip(xs, ys, strict=True)]
        return ints_to_limbs(products, limbs_for(modulus))

    def powmod(self, base, exp, modulus):
        xs = limbs_to_ints(base)
        es = self._rows(exp, len(xs))
        powers = [pow(x, e, modulus) for x, e in zip(xs, es, strict=True)]
        return ints_to_limbs(powers, limbs_for(modulus))

    def fixed_base_table(self, base, modulus, exp_bits):
        return FixedBaseTable(base, modulus, exp_bits, 1, self.name, None)

    def powmod_fixed(self, table, exp):
        return ints_to_limbs(
            [pow(table.base, e, table.modulus) for e in limbs_to_ints(exp)],
            limbs_for(table.modulus),
        )

    def multiexp(self, bases, exps, modulus):
        P, K, L = bases.shape
        _, M, _ = exps.shape
        bs = np.array(limbs_to_ints(bases.reshape(P * K, L)), dtype=object).reshape(P, K)
        es = np.array(limbs_to_ints(exps.reshape(K * M, -1)), dtype=object).reshape(K, M)
        out = []
        for p in range(P):
            for j in range(M):
                acc = 1
                for k in range(K):
                    acc = acc * pow(int(bs[p, k]), int(es[k, j]), modulus) % modulus
                out.append(acc)
        return ints_to_limbs(out, limbs_for(modulus)).reshape(P, M, -1)

    def invmod(self, a, modulus):
        out = []
        for i, x in enumerate(limbs_to_ints(a)):
            try:
                out.append(pow(x, -1, modulus))
            except ValueError:
                raise ValueError(f"element {i} has no inverse modulo the modulus") from None
        return ints_to_limbs(out, limbs_for(modulus))
