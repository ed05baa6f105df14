"""accel never returns a wrong number: magnitude bounds, precision control and refresh.

Every result either decrypts to the right value or an ``OverflowError`` is raised before any
ciphertext work. Iterative algorithms keep going with a lower operand precision and
``PrivateKey.refresh``.
"""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel import paillier
from accel.paillier import serialization

PK, SK = paillier.keygen(512)
PK_1024, SK_1024 = paillier.keygen(1024)
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- the reported bug: e = e * 1.1 repeated ---------------------------------------------------

def test_repeated_float_products_refuse_before_wrapping():
    # Before bounds were tracked, step 20 (1024-bit key) raised at decryption and some later
    # steps silently decrypted to numbers like 2e-46 instead of ~18.
    e = PK_1024.encrypt([1.0, 2.0])
    want = np.array([1.0, 2.0])
    steps = 0
    for _ in range(40):
        try:
            e = e * 1.1
        except OverflowError as err:
            message = str(err)
            break
        want = want * 1.1
        steps += 1
        np.testing.assert_allclose(SK_1024.decrypt(e), want, rtol=1e-13)
    else:
        pytest.fail("the products never ran out of plaintext band")
    assert 15 <= steps < 20
    assert "plaintext band" in message and "refresh" in message and "precision" in message
    # the refused operation left the array usable
    np.testing.assert_allclose(SK_1024.decrypt(e), want, rtol=1e-13)


def test_precision_control_and_refresh_keep_the_product_chain_going():
    e = PK_1024.encrypt([1.0, 2.0])
    want = np.array([1.0, 2.0])
    refreshes = 0
    for _ in range(200):
        if e.headroom < 64:
            e = SK_1024.refresh(e)
            refreshes += 1
        e = e.mul(1.1, precision=24)
        want = want * 1.1
    assert refreshes >= 2
    # 1.1 on 24 bits is off by at most 2**-24 relative: 200 products drift by <= 200 * 2**-24
    np.testing.assert_allclose(SK_1024.decrypt(e), want, rtol=200 * 2.0**-24)


# -- bounds are sound: a result is right or refused ------------------------------------------

@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["mul", "add", "sum", "matmul", "sub", "cumsum"]),
                          st.integers(-(2**62), 2**62)), min_size=1, max_size=14),
       st.lists(st.integers(-(2**62), 2**62), min_size=3, max_size=3))
def test_integer_chains_are_exact_or_refused(ops, start):
    # exact integers (Python ints as the oracle) make any wrap-around visible
    e = PK.encrypt(np.array(start, dtype=object))
    want = [int(v) for v in start]
    for op, k in ops:
        try:
            if op == "mul":
                e, want = e * k, [v * k for v in want]
            elif op == "add":
                e, want = e + e, [2 * v for v in want]
            elif op == "sub":
                e, want = e - k * np.ones(3, dtype=np.int64), [v - k for v in want]
            elif op == "sum":
                e = e.sum() * np.ones(3, dtype=np.int64)
                want = [sum(want)] * 3
            elif op == "cumsum":
                e = np.cumsum(e)
                want = [sum(want[: i + 1]) for i in range(3)]
            else:
                w = np.array([[1, -2, 3], [k % 1000, 5, -6], [7, 8, -(k % 999)]])
                e = e @ w
                want = [sum(want[i] * int(w[i, j]) for i in range(3)) for j in range(3)]
        except OverflowError as err:
            assert "plaintext band" in str(err)
            assert max(abs(v) for v in [*want, 1]).bit_length() > 300  # only near the band
            break
        assert max(abs(v) for v in want) <= e.bound <= PK.max_int
        assert SK.decrypt(e).tolist() == want


@SETTINGS
@given(st.lists(st.floats(-4, 4).filter(lambda v: abs(v) > 1e-3), min_size=12, max_size=20))
def test_float_chains_are_right_or_refused(factors):
    e = PK.encrypt(np.array([0.5, -1.25, 3.0]))
    want = np.array([0.5, -1.25, 3.0])
    for f in factors:
        try:
            e = e * f + 0.5
        except OverflowError:
            break
        want = want * f + 0.5
    np.testing.assert_allclose(SK.decrypt(e), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("op", [
    lambda big: big + big,
    lambda big: big - big,
    lambda big: big * 3,
    lambda big: big.sum(),
    lambda big: big.mean(),
    lambda big: np.cumsum(big),
    lambda big: np.diff(big, 2),
    lambda big: big @ np.array([[1, 1], [1, 1]]),
    lambda big: np.einsum("i,ij->j", big, np.ones((2, 2), dtype=np.int64)),
    lambda big: np.tensordot(big, np.ones((2, 2), dtype=np.int64), 1),
    lambda big: np.outer(big, [2, 2]),
    lambda big: np.average(big, weights=[3, 1]),
    lambda big: big + np.array([PK.max_int // 2 + 1], dtype=object),
])
def test_operations_that_could_leave_the_band_refuse(op):
    big = PK.encrypt(np.array([PK.max_int // 2 + 1, 1], dtype=object))
    with pytest.raises(OverflowError, match="plaintext band"):
        op(big)


def test_bound_follows_values_through_structure_and_scales():
    a = PK.encrypt(np.array([1, -7]))
    b = PK.encrypt(np.array([0.25, 100.5]))
    assert a.bound == 7
    assert np.concatenate([a, b]).bound == max(7 << b.scale, b.bound)
    s = a * np.array([3, -5])
    assert s.bound == 7 * 5
    # the largest column L1 norm (6), not rows x peak (8)
    assert (a @ np.array([[1, 2], [-3, 4]])).bound == 7 * 6
    assert a.sum().bound == 14
    assert SK.refresh(a * 1000).bound == 7000


def test_decryption_refuses_values_beyond_the_bound():
    # a wrapped value can land inside the band; a value past the array's bound is caught
    ea = PK.encrypt(np.array([5, 1 << 200], dtype=object))
    forged = paillier.EncryptedArray(PK, ea.data.copy(), 0, np.int64, bound=5)
    with pytest.raises(OverflowError, match="bound"):
        SK.decrypt(forged)
    assert SK.decrypt(forged[:1]).tolist() == [5]


def test_constructor_checks_the_bound():
    ea = PK.encrypt(np.array([1, 2]))
    with pytest.raises(ValueError, match="plaintext band"):
        paillier.EncryptedArray(PK, ea.data.copy(), 0, np.int64, bound=PK.max_int + 1)
    with pytest.raises(TypeError, match="bound"):
        paillier.EncryptedArray(PK, ea.data.copy(), 0, np.int64, bound=-1)


# -- imports: bounds travel with the data, unknown ones are the whole band --------------------

def test_bound_survives_bytes_and_pickle():
    ea = PK.encrypt(np.array([1.5, -2.0])) * 3.0
    for back in (paillier.EncryptedArray.from_bytes(ea.to_bytes(), PK),
                 pickle.loads(pickle.dumps(ea))):
        assert back.bound == ea.bound and back.scale == ea.scale
        np.testing.assert_array_equal(SK.decrypt(back * 2), [9.0, -12.0])


def _as_version_1(blob: bytes) -> bytes:
    header = serialization._HEADER
    fields = list(header.unpack_from(blob))
    ndim = fields[3]
    shape_end = header.size + 8 * ndim
    (words,) = struct.unpack_from("<H", blob, shape_end)
    fields[1] = 1
    body = header.pack(*fields) + blob[header.size:shape_end] + blob[shape_end + 2 + 8 * words:-32]
    return body + hashlib.sha256(body).digest()


def test_version_1_bytes_and_raw_imports_assume_the_whole_band():
    ea = PK.encrypt(np.array([3, -4]))
    old = paillier.EncryptedArray.from_bytes(_as_version_1(ea.to_bytes()), PK)
    assert old.bound == PK.max_int
    assert SK.decrypt(old).tolist() == [3, -4]
    raw = paillier.EncryptedArray.from_raw(PK, ea.raw().tolist())
    for unknown in (old, raw):
        with pytest.raises(OverflowError, match="bound="):
            unknown * 2
    vouched = paillier.EncryptedArray.from_raw(PK, ea.raw().tolist(), bound=4)
    assert SK.decrypt(vouched * 2 + vouched).tolist() == [9, -12]


def test_from_bytes_needs_a_public_key():
    blob = PK.encrypt(np.array([1.0])).to_bytes()
    for bad in (None, SK, PK.n):
        with pytest.raises(TypeError, match="PublicKey is required"):
            paillier.EncryptedArray.from_bytes(blob, bad)
    with pytest.raises(TypeError, match="PublicKey is required"):
        paillier.EncryptedArray.from_raw(None, [1])


def test_bytes_with_a_bound_past_the_band_are_refused():
    ea = PK.encrypt(np.array([3, -4]))
    blob = ea.to_bytes()[:-32]
    header = serialization._HEADER
    ndim = header.unpack_from(blob)[3]
    at = header.size + 8 * ndim
    (words,) = struct.unpack_from("<H", blob, at)
    too_big = (PK.max_int + 1).to_bytes(8 * 8, "little")
    body = blob[:at] + struct.pack("<H", 8) + too_big + blob[at + 2 + 8 * words:]
    with pytest.raises(ValueError, match="bound"):
        paillier.EncryptedArray.from_bytes(body + hashlib.sha256(body).digest(), PK)


# -- precision control ------------------------------------------------------------------------

def test_operand_precision_controls_scale_growth():
    e = PK.encrypt(np.array([1.0, 2.0]))
    assert 45 <= (e * 1.1).scale - e.scale <= 52
    assert e.mul(1.1, precision=10).scale - e.scale <= 10
    with paillier.precision(12):
        assert paillier.operand_precision() == 12
        assert (e * 1.1).scale - e.scale <= 12
        assert (e @ np.array([[1.1], [0.3]])).scale - e.scale <= 13
        assert (e / 3.0).scale - e.scale <= 13
    assert paillier.operand_precision() == 53
    np.testing.assert_allclose(SK.decrypt(e.mul(1.1, precision=10)), [1.1, 2.2], rtol=2.0**-10)
    np.testing.assert_allclose(SK.decrypt(e.matmul(np.array([0.1, 0.7]), precision=16)),
                               [1.5], rtol=2.0**-15)
    # integers are exact whatever the precision
    with paillier.precision(4):
        assert SK.decrypt(PK.encrypt(np.array([3])) * 1000).tolist() == [3000]


def test_set_precision_is_process_wide_and_checked():
    try:
        paillier.set_precision(20)
        assert paillier.operand_precision() == 20
    finally:
        paillier.set_precision(53)
    for bad in (0, 63):
        with pytest.raises(ValueError, match="precision"):
            paillier.set_precision(bad)
    with pytest.raises(TypeError, match="precision"):
        paillier.precision(1.5).__enter__()


# -- refresh ----------------------------------------------------------------------------------

def test_refresh_gives_the_same_values_at_a_small_scale():
    x = np.array([[0.1, -2.5], [3.75, 1e-3]])
    grown = PK.encrypt(x) * 1.1 * 0.9 * 1.3
    fresh = SK.refresh(grown)
    assert fresh.scale < grown.scale and fresh.bound < grown.bound
    assert fresh.shape == grown.shape and fresh.dtype == grown.dtype and fresh.obfuscated
    np.testing.assert_allclose(SK.decrypt(fresh), x * 1.1 * 0.9 * 1.3, rtol=1e-14, atol=1e-14)
    ints = SK.refresh(PK.encrypt(np.array([5, -6])) * 7)
    assert ints.dtype == np.int64 and SK.decrypt(ints).tolist() == [35, -42]
    assert SK.refresh(grown, precision=20).scale <= fresh.scale


def test_refresh_of_a_masked_array():
    # the protocol form: the data holder masks, the key holder refreshes, the mask comes off
    x = np.array([1.5, -0.25])
    rng = np.random.default_rng(1)
    mask = rng.uniform(-1e3, 1e3, size=2)
    e = PK.encrypt(x) * 1.1
    back = SK.refresh(e + mask) - mask
    np.testing.assert_allclose(SK.decrypt(back), x * 1.1, rtol=0, atol=1e-9)


# -- 1,000 update steps -----------------------------------------------------------------------

def test_thousand_gradient_steps_with_encrypted_weights_match_numpy():
    # linear regression by gradient descent, weights encrypted, data in the clear:
    # w <- w - lr * X^T (X w - y) / n, two plaintext products per step, refreshed as needed
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 3))
    y = X @ np.array([0.5, -1.0, 2.0]) + 0.01 * rng.standard_normal(6)
    lr = 0.05
    w_plain = np.zeros(3)
    w = PK_1024.encrypt(np.zeros(3))
    refreshes = 0
    with paillier.precision(30):
        for _ in range(1000):
            if w.headroom < 200:
                w = SK_1024.refresh(w)
                refreshes += 1
            w = w - (lr / len(y)) * (X.T @ (X @ w - y))
            w_plain = w_plain - (lr / len(y)) * (X.T @ (X @ w_plain - y))
    assert refreshes > 10
    # 30-bit multipliers: the per-step relative error 2**-29 is damped by the contraction
    np.testing.assert_allclose(SK_1024.decrypt(w), w_plain, rtol=1e-6, atol=1e-6)


def test_thousand_multiplicative_updates_with_periodic_refresh():
    # w <- w - lr * (w * x): the scale grows by two 53-bit multipliers every step, so the
    # key holder refreshes whenever less than that headroom is left (every 3 or 4 steps)
    rng = np.random.default_rng(3)
    xs = rng.uniform(-1.0, 1.0, size=(1000, 4))
    w_plain = np.array([1.0, -2.0, 0.5, 3.0])
    w = PK.encrypt(w_plain)
    refreshes = 0
    for x in xs:
        if w.headroom < 110:
            w = SK.refresh(w)
            refreshes += 1
        w = w - 0.01 * (w * x)
        w_plain = w_plain - 0.01 * (w_plain * x)
    assert refreshes > 200
    np.testing.assert_allclose(SK.decrypt(w), w_plain, rtol=1e-9)


def test_thousand_additive_steps_need_no_refresh():
    # w <- w - lr * (ea * x) with ea fixed: scales do not compound, bounds grow linearly
    rng = np.random.default_rng(5)
    g = np.array([0.3, -1.7, 2.2])
    ea = PK.encrypt(g)
    w = PK.encrypt(np.zeros(3))
    w_plain = np.zeros(3)
    for x in rng.uniform(-1.0, 1.0, size=(1000, 3)):
        w = w - 0.01 * (ea * x)
        w_plain = w_plain - 0.01 * (g * x)
    assert w.headroom > 100
    np.testing.assert_allclose(SK.decrypt(w), w_plain, rtol=1e-12, atol=1e-12)
