"""Masked decryption: the key holder decrypts for another party and sees only masked
mantissas; the owner gets exactly what ``decrypt`` would have given."""

import numpy as np
import pytest

from accel import paillier
from accel.paillier import masking


@pytest.fixture(scope="module")
def keys():
    return paillier.keygen(1024)


def test_unmasked_equals_decrypt(keys):
    pk, sk = keys
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)) * 1e-3
    w = rng.normal(size=(3, 5))
    ea = pk.encrypt(x) @ w  # a product: a large scale, small values
    masked, m = masking.mask(ea)
    opened = sk.decrypt_mantissas(masked)
    np.testing.assert_array_equal(masking.unmask(opened, m), sk.decrypt(ea))
    # what the key holder saw is not the values: the mask dominates every mantissa
    plain = sk.decrypt_mantissas(ea)
    assert all(abs(o) > abs(p) << 30 for o, p in zip(opened, plain, strict=True))


def test_integers_and_negative_values(keys):
    pk, sk = keys
    v = np.array([-5, 0, 7, -(2**40)])
    masked, m = masking.mask(pk.encrypt(v))
    out = masking.unmask(sk.decrypt_mantissas(masked), m)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, v)


def test_wire_round_trip_and_bad_input(keys):
    pk, sk = keys
    masked, m = masking.mask(pk.encrypt(np.array([1.5, -2.25])))
    wire = masking.mantissas_to_wire(sk.decrypt_mantissas(masked))
    back = masking.mantissas_from_wire(wire, 2)
    np.testing.assert_array_equal(masking.unmask(back, m), [1.5, -2.25])
    with pytest.raises(ValueError, match="expected 2"):
        masking.mantissas_from_wire(wire[:1], 2)
    with pytest.raises(ValueError):
        masking.mantissas_from_wire(["zz", "1"], 2)
    with pytest.raises(ValueError, match="1 decrypted values for 2"):
        masking.unmask(back[:1], m)
    with pytest.raises(ValueError, match="masked size"):
        masking.unmask([1 << 4000, 1], m)


def test_mask_refused_when_the_band_is_full(keys):
    pk, _ = keys
    big = pk.encrypt(np.array([2 ** 1000], dtype=object))  # near the band of a 1024-bit key
    with pytest.raises(OverflowError, match="plaintext band"):
        masking.mask(big)
