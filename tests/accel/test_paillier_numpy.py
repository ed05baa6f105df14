"""EncryptedArray against NumPy: every operation is checked on the decrypted result."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import accel
from accel import paillier
from tests.accel.reference_backend import ReferenceBackend

PK, SK = paillier.keygen(512)
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
float_elems = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False).filter(
    lambda v: v == 0 or abs(v) >= 1e-6)  # one scale per array: keep the dynamic range sane
int_elems = st.integers(-(2**40), 2**40)


def floats(shape=shapes):
    return hnp.arrays(np.float64, shape, elements=float_elems)


def ints(shape=shapes):
    return hnp.arrays(np.int64, shape, elements=int_elems)


def close(got, want, *inputs):
    """Fixed point keeps 53 bits of each operand's largest magnitude: the error bound scales
    with the inputs' magnitudes, not with each result element."""
    bound = 1.0
    for x in inputs:
        bound = max(bound, float(np.max(np.abs(x), initial=0.0)))
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=bound * 1e-12)


@SETTINGS
@given(floats())
def test_float_roundtrip(x):
    got = SK.decrypt(PK.encrypt(x))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, x, rtol=0, atol=float(np.abs(x).max()) * 2.0**-52)


@SETTINGS
@given(ints())
def test_int_roundtrip_is_exact(x):
    got = SK.decrypt(PK.encrypt(x))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, x)


def test_int64_extremes_are_exact():
    x = np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max])
    np.testing.assert_array_equal(SK.decrypt(PK.encrypt(x)), x)


@SETTINGS
@given(st.data())
def test_add_subtract_broadcasting(data):
    shape = data.draw(shapes)
    x = data.draw(floats(shape))
    y_shape = data.draw(hnp.broadcastable_shapes(shape, max_dims=3, max_side=4))
    y = data.draw(floats(y_shape))
    ex, ey = PK.encrypt(x), PK.encrypt(y)
    close(SK.decrypt(ex + ey), x + y, x, y)
    close(SK.decrypt(ex + y), x + y, x, y)
    close(SK.decrypt(y + ex), y + x, x, y)
    close(SK.decrypt(ex - ey), x - y, x, y)
    close(SK.decrypt(ex - y), x - y, x, y)
    close(SK.decrypt(y - ex), y - x, x, y)
    close(SK.decrypt(np.add(ex, y)), np.add(x, y), x, y)
    close(SK.decrypt(np.subtract(y, ex)), np.subtract(y, x), x, y)


@SETTINGS
@given(ints(), st.integers(-(2**20), 2**20))
def test_int_arithmetic_is_exact(x, k):
    ex = PK.encrypt(x)
    for got, want in [(ex + ex, x + x), (ex + k, x + k), (k - ex, k - x), (-ex, -x),
                      (ex * k, x * k), (k * ex, k * x), (ex - x[..., :1], x - x[..., :1])]:
        result = SK.decrypt(got)
        assert result.dtype == np.int64
        np.testing.assert_array_equal(result, want)


@SETTINGS
@given(st.data())
def test_multiply_by_plaintext_random_signs(data):
    shape = data.draw(shapes)
    x = data.draw(floats(shape))
    w = data.draw(floats(data.draw(hnp.broadcastable_shapes(shape, max_dims=3, max_side=4))))
    ex = PK.encrypt(x)
    close(SK.decrypt(ex * w), x * w, x * np.max(np.abs(w), initial=1.0))
    close(SK.decrypt(w * ex), w * x, x * np.max(np.abs(w), initial=1.0))
    close(SK.decrypt(np.multiply(ex, w)), x * w, x * np.max(np.abs(w), initial=1.0))


@SETTINGS
@given(floats(), st.floats(-100, 100).filter(lambda v: abs(v) > 1e-3))
def test_scalar_ops_and_division(x, s):
    ex = PK.encrypt(x)
    close(SK.decrypt(ex * s), x * s, x * s)
    close(SK.decrypt(ex / s), x / s, x / s, x)
    close(SK.decrypt(ex + s), x + s, x, s)
    close(SK.decrypt(-ex), -x, x)
    close(SK.decrypt(np.negative(ex)), -x, x)
    close(SK.decrypt(np.true_divide(ex, s)), x / s, x / s, x)


def test_division_by_power_of_two_is_exact():
    x = np.array([1.5, -2.25, 3.0])
    ex = PK.encrypt(x) / 4.0
    np.testing.assert_array_equal(SK.decrypt(ex), x / 4.0)
    assert ex.scale == PK.encrypt(x).scale + 2


@SETTINGS
@given(st.data())
def test_matmul_both_sides(data):
    k = data.draw(st.integers(1, 5))
    m = data.draw(st.integers(1, 4))
    p = data.draw(st.integers(1, 3))
    a = data.draw(floats((p, k)))
    v = data.draw(floats((k,)))
    w = data.draw(floats((k, m)))
    w_left = data.draw(floats((m, k)))
    ea, ev = PK.encrypt(a), PK.encrypt(v)
    big = max(1.0, float(np.abs(w).max()), float(np.abs(w_left).max())) * k
    close(SK.decrypt(ea @ w), a @ w, a * big)
    close(SK.decrypt(ev @ w), v @ w, v * big)
    close(SK.decrypt(np.matmul(ev, w)), v @ w, v * big)
    close(SK.decrypt(w_left @ ea.T), w_left @ a.T, a * big)
    close(SK.decrypt(w_left @ ev), w_left @ v, v * big)
    close(SK.decrypt(np.dot(v, ea.T)), np.dot(v, a.T), a * big)
    close(SK.decrypt(ea.dot(v)), a.dot(v), a * big)
    close(SK.decrypt(ev @ v), v @ v, v * big)


def test_matmul_integers_exact_with_stacks():
    a = np.arange(24).reshape(2, 3, 4) - 11
    w = np.array([[1, -2], [0, 3], [-4, 5], [7, -1]])
    ea = PK.encrypt(a)
    np.testing.assert_array_equal(SK.decrypt(ea @ w), a @ w)
    np.testing.assert_array_equal(SK.decrypt(w.T @ ea.swapaxes(-1, -2)), w.T @ a.swapaxes(-1, -2))


@SETTINGS
@given(st.data())
def test_sum_and_mean_with_axes(data):
    x = data.draw(floats())
    axis = data.draw(st.none() | st.integers(-x.ndim, x.ndim - 1))
    keepdims = data.draw(st.booleans())
    ex = PK.encrypt(x)
    bound = x * x.size
    close(SK.decrypt(ex.sum(axis=axis, keepdims=keepdims)),
          x.sum(axis=axis, keepdims=keepdims), bound)
    close(SK.decrypt(np.sum(ex, axis=axis, keepdims=keepdims)),
          np.sum(x, axis=axis, keepdims=keepdims), bound)
    close(SK.decrypt(ex.mean(axis=axis)), x.mean(axis=axis), bound)
    close(SK.decrypt(np.mean(ex, axis=axis)), np.mean(x, axis=axis), bound)


def test_sum_over_tuple_axes_and_add_reduce():
    x = np.arange(60).reshape(3, 4, 5)
    ex = PK.encrypt(x)
    np.testing.assert_array_equal(SK.decrypt(ex.sum(axis=(0, 2))), x.sum(axis=(0, 2)))
    np.testing.assert_array_equal(SK.decrypt(np.add.reduce(ex, axis=1)), np.add.reduce(x, 1))
    np.testing.assert_array_equal(SK.decrypt(ex.sum()), x.sum())


@SETTINGS
@given(st.data())
def test_indexing_and_structure(data):
    x = data.draw(ints(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4)))
    ex = PK.encrypt(x)
    idx = data.draw(hnp.basic_indices(x.shape))
    np.testing.assert_array_equal(SK.decrypt(ex[idx]), x[idx])
    np.testing.assert_array_equal(SK.decrypt(ex.T), x.T)
    np.testing.assert_array_equal(SK.decrypt(ex.reshape(-1)), x.reshape(-1))
    np.testing.assert_array_equal(SK.decrypt(np.reshape(ex, (x.size, 1))), x.reshape(x.size, 1))
    np.testing.assert_array_equal(SK.decrypt(np.transpose(ex)), x.T)
    np.testing.assert_array_equal(SK.decrypt(np.concatenate([ex, ex], axis=1)),
                                  np.concatenate([x, x], axis=1))
    np.testing.assert_array_equal(SK.decrypt(np.stack([ex, ex], axis=-1)),
                                  np.stack([x, x], axis=-1))
    mask = x > 0
    np.testing.assert_array_equal(SK.decrypt(ex[mask]), x[mask])
    np.testing.assert_array_equal(SK.decrypt(ex[[0, -1]]), x[[0, -1]])


def test_fancy_structure_functions():
    x = np.arange(12).reshape(3, 4)
    ex = PK.encrypt(x)
    for f in (np.ravel, np.flip, np.atleast_1d, np.copy):
        np.testing.assert_array_equal(SK.decrypt(f(ex)), f(x))
    np.testing.assert_array_equal(SK.decrypt(np.moveaxis(ex, 0, -1)), np.moveaxis(x, 0, -1))
    np.testing.assert_array_equal(SK.decrypt(np.expand_dims(ex, 1)), np.expand_dims(x, 1))
    np.testing.assert_array_equal(SK.decrypt(np.vstack([ex, ex])), np.vstack([x, x]))
    parts = np.split(ex, 2, axis=1)
    assert len(parts) == 2
    np.testing.assert_array_equal(SK.decrypt(parts[1]), np.split(x, 2, axis=1)[1])
    assert np.shape(ex) == (3, 4) and np.ndim(ex) == 2 and np.size(ex) == 12 and len(ex) == 3
    assert [SK.decrypt(row).tolist() for row in ex] == x.tolist()


def test_mixed_scales_align_and_promote():
    ei = PK.encrypt(np.array([1, -2, 3]))
    ef = PK.encrypt(np.array([0.1, 0.25, -7.125]))
    got = SK.decrypt(np.concatenate([ei, ef]))
    assert got.dtype == np.float64
    # one scale per array: 0.1 keeps 53 bits relative to 7.125, the largest magnitude
    tol = 7.125 * 2.0**-52
    np.testing.assert_allclose(got, [1, -2, 3, 0.1, 0.25, -7.125], rtol=0, atol=tol)
    np.testing.assert_allclose(SK.decrypt(ei + ef), [1.1, -1.75, -4.125], rtol=0, atol=tol)
    np.testing.assert_allclose(SK.decrypt(ei * 0.5), [0.5, -1.0, 1.5])
    assert SK.decrypt(ei * 2).dtype == np.int64


def test_product_scale_is_sum_of_scales():
    ex = PK.encrypt(np.array([0.1, 0.2]))
    w = np.array([0.3, -0.7])
    prod = ex * w
    assert prod.scale == ex.scale + paillier.encoding.encode(w).scale
    np.testing.assert_allclose(SK.decrypt(prod), [0.1 * 0.3, -0.2 * 0.7], rtol=1e-15)


def test_setitem_with_ciphertexts_and_plaintexts():
    x = np.arange(6).reshape(2, 3)
    ex = PK.encrypt(x)
    ex[0, 1] = PK.encrypt(np.array(40))
    ex[1] = np.array([7, 8, 9])
    np.testing.assert_array_equal(SK.decrypt(ex), [[0, 40, 2], [7, 8, 9]])
    ex[:, 0] = PK.encrypt(np.array([0.5, 1.5]))
    np.testing.assert_allclose(SK.decrypt(ex), [[0.5, 40, 2], [1.5, 8, 9]])


def test_zero_multiplier_is_an_unrandomised_encryption_of_zero():
    ex = PK.encrypt(np.array([5, -6]))
    zero = ex * 0
    np.testing.assert_array_equal(SK.decrypt(zero), [0, 0])
    assert zero.raw(rerandomize=False).tolist() == [1, 1]


def test_computed_ciphertexts_are_rerandomised_when_they_leave():
    ex = PK.encrypt(np.array([5, -6, 7]))
    assert ex.obfuscated
    assert ex.raw().tolist() == ex.raw(rerandomize=False).tolist()  # fresh: exported as is
    zero = ex * 0
    assert not zero.obfuscated and not zero[1:].obfuscated
    assert 1 not in zero.raw().tolist()
    assert zero.to_bytes() != zero.to_bytes(rerandomize=False)
    back = paillier.EncryptedArray.from_bytes(zero.to_bytes(), PK)
    assert back.obfuscated
    np.testing.assert_array_equal(SK.decrypt(back), [0, 0, 0])
    total = ex + ex
    fresh = total.rerandomize()
    assert fresh.obfuscated and fresh.raw(rerandomize=False).tolist() != \
        total.raw(rerandomize=False).tolist()
    np.testing.assert_array_equal(SK.decrypt(fresh), [10, -12, 14])
    assert np.concatenate([ex, ex]).obfuscated and not np.concatenate([ex, total]).obfuscated


def test_encryption_is_randomised():
    x = np.zeros(4)
    a, b = PK.encrypt(x), PK.encrypt(x)
    assert len(set(a.raw().tolist()) | set(b.raw().tolist())) == 8


def test_private_key_and_full_randomness_encrypt_the_same_values():
    x = np.array([[1.25, -3.5], [1e5, -1e-3]])
    for ea in (SK.encrypt(x), PK.encrypt(x, full_randomness=True),
               SK.encrypt(x, full_randomness=True)):
        np.testing.assert_allclose(SK.decrypt(ea), x, rtol=1e-15, atol=1e5 * 2.0**-52)


def test_empty_arrays():
    ex = PK.encrypt(np.zeros((0, 3)))
    assert SK.decrypt(ex).shape == (0, 3)
    assert SK.decrypt(ex + 1.0).shape == (0, 3)
    np.testing.assert_array_equal(SK.decrypt(ex.sum(axis=0)), np.zeros(3))


def test_backend_choice_is_honoured_and_backends_agree():
    x = np.array([[1.5, -2.0], [0.25, 8.0]])
    w = np.array([[1.0, -0.5], [2.0, 3.0]])
    ref = ReferenceBackend()
    on_ref = PK.encrypt(x, backend=ref)
    assert on_ref.backend is ref
    derived = (on_ref @ w - 1.0).sum(axis=0)
    assert derived.backend is ref
    want = (x @ w - 1.0).sum(axis=0)
    np.testing.assert_allclose(SK.decrypt(derived), want)
    np.testing.assert_allclose(SK.decrypt(derived, backend="cpu"), want)
    with accel.use("cpu"):
        on_cpu = PK.encrypt(x)
        assert on_cpu.backend is None
        np.testing.assert_allclose(SK.decrypt(on_cpu @ w, backend=ref), x @ w)


def test_ciphertext_operations_match_the_reference_backend_bit_for_bit():
    ex = PK.encrypt(np.array([3, -4, 5]))
    ref = ReferenceBackend()
    pinned = paillier.EncryptedArray(PK, ex.data.copy(), 0, np.int64, backend=ref)
    for op in (lambda a: a * np.array([2, -3, 0]), lambda a: -a, lambda a: a + a,
               lambda a: a @ np.array([[1, -1], [2, 0], [-3, 5]]), lambda a: a.sum()):
        assert op(ex).raw(rerandomize=False).tolist() == \
            op(pinned).raw(rerandomize=False).tolist()


def test_scalar_result_types():
    ex = PK.encrypt(np.array([1.0, 2.0]))
    s = ex.sum()
    assert s.shape == () and s.ndim == 0
    assert float(SK.decrypt(s)) == 3.0
    assert SK.decrypt(ex[0]).shape == ()


@pytest.mark.parametrize("precision", [10, 30, 53])
def test_precision_knob(precision):
    x = np.array([1.0 / 3.0, -2.0 / 3.0])
    ea = PK.encrypt(x, precision=precision)
    np.testing.assert_allclose(SK.decrypt(ea), x, rtol=0, atol=2.0 ** -(precision - 1))


def test_copy_and_pickle():
    import copy
    import pickle

    ex = PK.encrypt(np.array([1.25, -3.0]))
    for clone in (copy.copy(ex), copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
        np.testing.assert_array_equal(SK.decrypt(clone), [1.25, -3.0])
        assert clone.public_key == PK and clone.scale == ex.scale
    assert copy.deepcopy(ex).data.ctypes.data != ex.data.ctypes.data
    assert pickle.loads(pickle.dumps(PK)).h_s == PK.h_s
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(SK)


def test_opencl_backend_runs_the_same_arrays():
    # EncryptedArray only speaks the backend protocol: a device backend plugs in unchanged
    x = np.array([[1.5, -2.0], [0.25, 8.0]])
    w = np.array([[1.0, -0.5], [2.0, 3.0]])
    ea = PK.encrypt(x, backend="opencl")
    got = ((ea @ w - 1.0) * np.array([2.0, -1.0])).sum(axis=0) + (-ea[0])
    want = ((x @ w - 1.0) * np.array([2.0, -1.0])).sum(axis=0) - x[0]
    np.testing.assert_allclose(SK.decrypt(got, backend="opencl"), want)
    np.testing.assert_allclose(SK.decrypt(SK.encrypt(x, backend="opencl")), x)


def test_broadcast_ciphertexts_times_signed_matrix():
    v = np.array([1.5, -2.0, 0.25])
    w = np.array([[1.0, -2.0, 3.0], [-0.5, 0.0, -4.0], [2.0, 2.0, -1.0], [-1.0, -1.0, -1.0]])
    np.testing.assert_allclose(SK.decrypt(PK.encrypt(v) * w), v * w)
    np.testing.assert_array_equal(SK.decrypt(PK.encrypt(np.array([3, -7])) * -2), [-6, 14])
