"""The NumPy limb arithmetic around the backends, against Python integers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from accel.backends.base import ints_to_limbs, limbs_for, limbs_to_ints
from accel.paillier import encoding
from accel.paillier import limbs as lm
from accel.paillier.keys import PublicKey
from accel.paillier.residues import g_power, random_limbs, random_units

MODULUS = (1 << 521) - 1
L = limbs_for(MODULUS)
residues = st.lists(st.integers(0, MODULUS - 1), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(residues, residues)
def test_add_mod_and_less_than(xs, ys):
    ys = (ys * len(xs))[: len(xs)]
    a, b = ints_to_limbs(xs, L), ints_to_limbs(ys, L)
    want = [(x + y) % MODULUS for x, y in zip(xs, ys, strict=True)]
    assert limbs_to_ints(lm.add_mod(a, b, MODULUS)) == want
    bound = ys[0]
    assert lm.less_than(a, bound).tolist() == [x < bound for x in xs]
    assert lm.is_zero(a).tolist() == [x == 0 for x in xs]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**130), min_size=1, max_size=6), st.integers(0, 300))
def test_mul_const_and_shift(xs, bits):
    mags = ints_to_limbs(xs, 3)
    digits = lm.mul_const(mags, MODULUS, 2 * (L + 3))
    assert limbs_to_ints(lm.from_digits(digits, L + 3)) == [x * MODULUS for x in xs]
    assert limbs_to_ints(lm.shift_left(mags, bits)) == [x << bits for x in xs]
    assert lm.bit_length(mags) == max(x.bit_length() for x in xs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=8))
def test_g_power_is_one_plus_m_n(ms):
    pk = PublicKey(MODULUS * ((1 << 127) - 1))
    got = limbs_to_ints(g_power(pk, encoding.encode(np.array(ms, dtype=np.int64))))
    assert got == [pow(pk.g, m % pk.n, pk.nsquare) for m in ms]


def test_random_values_respect_their_bounds():
    x = random_limbs(2000, 130)
    assert max(v.bit_length() for v in limbs_to_ints(x)) == 130  # top bits are reachable
    pk = PublicKey(MODULUS * ((1 << 127) - 1))
    units = limbs_to_ints(random_units(pk, 500))
    assert all(0 < u < pk.n for u in units) and len(set(units)) == 500
