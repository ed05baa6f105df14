"""Group sums of ciphertexts and packing several values into one ciphertext."""

import numpy as np
import pytest

from accel import paillier
from accel.paillier import grouping


@pytest.fixture(scope="module")
def keys():
    return paillier.keygen(1024)


def test_group_sums_equal_numpy(keys):
    pk, sk = keys
    rng = np.random.default_rng(2)
    v = rng.integers(-1000, 1000, 200)
    groups = rng.integers(0, 7, 200)
    groups[groups == 5] = 4  # group 5 stays empty
    sums = grouping.group_sums(pk.encrypt(v), groups, 7)
    np.testing.assert_array_equal(sk.decrypt(sums), np.bincount(groups, weights=v,
                                                                minlength=7).astype(int))
    with pytest.raises(ValueError, match=r"in \[0, 7\)"):
        grouping.group_sums(pk.encrypt(v), groups + 1, 7)


def test_pack_and_unpack_round_trip(keys):
    pk, sk = keys
    values = [int(x) for x in np.random.default_rng(3).integers(0, 2**62, 45)] + [2**99, 0]
    ea = pk.encrypt(np.array(values, dtype=object))
    packed, layout = grouping.pack(ea, 100)
    assert layout.per == 10 and packed.size == 5
    assert grouping.unpack(sk.decrypt_mantissas(packed), layout) == values
    with pytest.raises(OverflowError, match="do not fit"):
        grouping.pack(ea, 64)
    with pytest.raises(ValueError, match="packed values for"):
        grouping.unpack([1], layout)
