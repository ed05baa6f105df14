"""The linear NumPy functions on encrypted arrays, against NumPy on the decrypted values, and
clear refusals for the rest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from accel import paillier

PK, SK = paillier.keygen(512)
OTHER_PK, _ = paillier.keygen(512)
SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
int_elems = st.integers(-(2**30), 2**30)
float_elems = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False).filter(
    lambda v: v == 0 or abs(v) >= 1e-3)


def ints(shape=shapes):
    return hnp.arrays(np.int64, shape, elements=int_elems)


def floats(shape=shapes):
    return hnp.arrays(np.float64, shape, elements=float_elems)


def exact(got, want):
    assert got.shape == np.shape(want)
    assert got.dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(got, want)


def close(got, want, scale):
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=max(1.0, scale) * 1e-12)


@SETTINGS
@given(st.data())
def test_cumsum_and_add_accumulate(data):
    x = data.draw(ints())
    axis = data.draw(st.none() | st.integers(-x.ndim, x.ndim - 1))
    ex = PK.encrypt(x)
    exact(SK.decrypt(np.cumsum(ex, axis=axis)), np.cumsum(x, axis=axis))
    exact(SK.decrypt(np.add.accumulate(ex, axis=axis or 0)), np.add.accumulate(x, axis=axis or 0))
    f = data.draw(floats(x.shape))
    close(SK.decrypt(np.cumsum(PK.encrypt(f), axis=axis)), np.cumsum(f, axis=axis),
          f.size * float(np.abs(f).max()))


@SETTINGS
@given(st.data())
def test_diff_with_orders_and_padding(data):
    x = data.draw(ints())
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    n = data.draw(st.integers(0, 3))
    ex = PK.encrypt(x)
    exact(SK.decrypt(np.diff(ex, n=n, axis=axis)), np.diff(x, n=n, axis=axis))
    exact(SK.decrypt(np.diff(ex, axis=axis, prepend=7, append=-3)),
          np.diff(x, axis=axis, prepend=7, append=-3))
    side = list(x.shape)
    side[axis] = 2
    pad = np.arange(np.prod(side)).reshape(side)
    exact(SK.decrypt(np.diff(ex, axis=axis, prepend=pad)), np.diff(x, axis=axis, prepend=pad))
    exact(SK.decrypt(np.diff(pad, axis=axis, append=ex)), np.diff(pad, axis=axis, append=x))


@SETTINGS
@given(st.data())
def test_where_with_encrypted_and_plain_branches(data):
    x = data.draw(ints())
    y = data.draw(floats(data.draw(hnp.broadcastable_shapes(x.shape, max_dims=3, max_side=4))))
    cond = data.draw(hnp.arrays(np.bool_, x.shape))
    ex, ey = PK.encrypt(x), PK.encrypt(y)
    exact(SK.decrypt(np.where(cond, ex, x)), np.where(cond, x, x))
    close(SK.decrypt(np.where(cond, ex, ey)), np.where(cond, x, y), float(np.abs(y).max()))
    close(SK.decrypt(np.where(cond, y, ex)), np.where(cond, y, x), float(np.abs(y).max()))
    exact(SK.decrypt(np.where(cond, ex, -5)), np.where(cond, x, -5))
    assert not np.where(cond, ex, 0).obfuscated  # a plain branch is re-randomised on export


@SETTINGS
@given(ints(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)),
       hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                  elements=st.integers(-1000, 1000)))
def test_outer(x, w):
    ex = PK.encrypt(x)
    exact(SK.decrypt(np.outer(ex, w)), np.outer(x, w))
    exact(SK.decrypt(np.outer(w, ex)), np.outer(w, x))


@SETTINGS
@given(st.data())
def test_tensordot_both_sides(data):
    a = data.draw(ints(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3)))
    n = data.draw(st.integers(0, a.ndim))
    extra = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
    w = data.draw(hnp.arrays(np.int64, a.shape[a.ndim - n:] + extra,
                             elements=st.integers(-500, 500)))
    ea = PK.encrypt(a)
    exact(SK.decrypt(np.tensordot(ea, w, n)), np.tensordot(a, w, n))
    # plaintext on the left: contract w's leading axes with a's leading ones
    wl = data.draw(hnp.arrays(np.int64, extra + a.shape[:n], elements=st.integers(-500, 500)))
    axes = (list(range(len(extra), len(extra) + n)), list(range(n)))
    exact(SK.decrypt(np.tensordot(wl, ea, axes)), np.tensordot(wl, a, axes))


def test_tensordot_explicit_axes_and_floats():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4, 2))
    w = rng.standard_normal((2, 3, 5))
    ea = PK.encrypt(a)
    close(SK.decrypt(np.tensordot(ea, w, axes=([0, 2], [1, 0]))),
          np.tensordot(a, w, axes=([0, 2], [1, 0])), 20)
    close(SK.decrypt(np.tensordot(ea, w, axes=(2, 0))), np.tensordot(a, w, axes=(2, 0)), 20)
    with pytest.raises(ValueError, match="shape-mismatch"):
        np.tensordot(ea, w, axes=([0], [0]))


EINSUM_CASES = [
    ("ij,jk->ik", [(2, 3), (3, 4)], 0),
    ("ij,jk->ik", [(2, 3), (3, 4)], 1),
    ("ij,jk", [(2, 3), (3, 4)], 0),
    ("i,i->", [(4,), (4,)], 1),
    ("i,i", [(4,), (4,)], 0),
    ("ij,j->i", [(3, 4), (4,)], 0),
    ("ij,ij->i", [(3, 4), (3, 4)], 0),  # a batch label: kept and shared
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 2)], 1),
    ("ii->i", [(3, 3)], 0),
    ("ii", [(3, 3)], 0),
    ("ij->ji", [(2, 3)], 0),
    ("ij->", [(2, 3)], 0),
    ("ji", [(2, 3)], 0),
    ("i,j->ij", [(3,), (2,)], 0),
    ("i,j->ji", [(3,), (2,)], 1),
    ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 2)], 1),
    ("ij,k->i", [(2, 3), (4,)], 0),
    ("...j,jk->...k", [(2, 2, 3), (3, 2)], 0),
    ("ij,j...->i...", [(2, 3), (3, 2)], 1),
    ("iij,j->i", [(2, 2, 3), (3,)], 0),
]


@pytest.mark.parametrize(("subscripts", "shapes", "which"), EINSUM_CASES)
def test_einsum_matches_numpy(subscripts, shapes, which):
    rng = np.random.default_rng(len(subscripts) + which)
    ops = [rng.integers(-50, 50, size=s) for s in shapes]
    enc = [PK.encrypt(o) if i == which else o for i, o in enumerate(ops)]
    exact(SK.decrypt(np.einsum(subscripts, *enc)), np.einsum(subscripts, *ops))
    fops = [rng.standard_normal(s) for s in shapes]
    fenc = [PK.encrypt(o) if i == which else o for i, o in enumerate(fops)]
    close(SK.decrypt(np.einsum(subscripts, *fenc)), np.einsum(subscripts, *fops), 100)


def test_einsum_refuses_two_ciphertexts_and_other_forms():
    ea = PK.encrypt(np.ones((2, 2)))
    with pytest.raises(TypeError, match="Paillier cannot multiply two ciphertexts"):
        np.einsum("ij,jk->ik", ea, ea)
    with pytest.raises(TypeError, match="subscripts"):
        np.einsum(ea, [0, 1], [1, 0])
    with pytest.raises(TypeError, match="out="):
        np.einsum("ij->ji", ea, out=np.zeros((2, 2)))


@SETTINGS
@given(st.data())
def test_average_with_and_without_weights(data):
    x = data.draw(floats())
    ex = PK.encrypt(x)
    bound = float(np.abs(x).max())
    close(SK.decrypt(np.average(ex)), np.average(x), bound)
    axis = data.draw(st.integers(0, x.ndim - 1))
    w = data.draw(hnp.arrays(np.int64, (x.shape[axis],), elements=st.integers(1, 9)))
    got, scl = np.average(ex, axis=axis, weights=w, returned=True)
    want, want_scl = np.average(x, axis=axis, weights=w, returned=True)
    close(SK.decrypt(got), want, bound)
    np.testing.assert_array_equal(scl, want_scl)
    full = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0.5, 4)))
    close(SK.decrypt(np.average(ex, weights=full)), np.average(x, weights=full), bound)
    close(SK.decrypt(np.average(ex, axis=axis, keepdims=True)),
          np.average(x, axis=axis, keepdims=True), bound)


def test_average_refusals():
    ex = PK.encrypt(np.ones((2, 3)))
    with pytest.raises(TypeError, match="encrypted weights"):
        np.average(np.ones(3), weights=PK.encrypt(np.ones(3)))
    with pytest.raises(ZeroDivisionError):
        np.average(ex, axis=1, weights=[1, -1, 0])
    with pytest.raises(TypeError, match="Axis must be specified"):
        np.average(ex, weights=[1, 2, 3])


@SETTINGS
@given(ints(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4)),
       st.integers(-2, 2))
def test_trace(x, offset):
    ex = PK.encrypt(x)
    exact(SK.decrypt(np.trace(ex, offset=offset)), np.trace(x, offset=offset))
    if x.ndim == 3:
        exact(SK.decrypt(np.trace(ex, axis1=1, axis2=2)), np.trace(x, axis1=1, axis2=2))


def test_concatenate_and_stack_with_plain_arrays():
    x = np.array([[1.5, -2.0], [3.0, 4.25]])
    p = np.array([[7, 8]])
    ex = PK.encrypt(x)
    got = np.concatenate([ex, p])
    exact(SK.decrypt(got), np.concatenate([x, p]))
    assert not got.obfuscated  # the plain part is re-randomised when the result leaves
    exact(SK.decrypt(np.concatenate([p, ex], axis=0)), np.concatenate([p, x]))
    exact(SK.decrypt(np.stack([ex, x + 1])), np.stack([x, x + 1]))
    exact(SK.decrypt(np.vstack([ex, [0.5, 0.25]])), np.vstack([x, [0.5, 0.25]]))
    exact(SK.decrypt(np.hstack([ex, p.T])), np.hstack([x, p.T]))
    exact(SK.decrypt(np.append(ex, [9, 10])), np.append(x, [9, 10]))
    ei = PK.encrypt(np.array([1, 2]))
    exact(SK.decrypt(np.concatenate([ei, np.array([3])])), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="different public keys"):
        np.concatenate([ex, OTHER_PK.encrypt(x)])


def test_more_structural_functions():
    x = np.arange(12).reshape(3, 4)
    ex = PK.encrypt(x)
    for f in (np.diagonal, np.fliplr, np.flipud, np.rot90, np.atleast_3d):
        exact(SK.decrypt(f(ex)), f(x))
    exact(SK.decrypt(np.column_stack([ex[:, 0], ex[:, 1]])), np.column_stack([x[:, 0], x[:, 1]]))


@pytest.mark.parametrize(("func", "why"), [
    (np.prod, "additively homomorphic"),
    (np.cumprod, "additively homomorphic"),
    (np.exp, "additively homomorphic"),
    (np.var, "additively homomorphic"),
    (np.linalg.norm, "additively homomorphic"),
    (np.sort, "cannot be compared"),
    (np.max, "cannot be compared"),
    (np.argmax, "cannot be compared"),
    (np.median, "cannot be compared"),
    (np.abs, "cannot be compared"),
    (np.round, "cannot be compared"),
    (lambda a: a > 0, "cannot be compared"),
    (lambda a: np.maximum(a, 0), "cannot be compared"),
    (lambda a: np.where(a, 1, 0), "encrypted condition"),
])
def test_non_linear_functions_say_why(func, why):
    ex = PK.encrypt(np.array([[1.0, -2.0], [3.0, 4.0]]))
    with pytest.raises(TypeError, match=why) as info:
        func(ex)
    assert "no implementation found" not in str(info.value)


def test_unknown_functions_are_named():
    ex = PK.encrypt(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"numpy\.nanmean is not supported on encrypted arrays"):
        np.nanmean(ex)
    with pytest.raises(TypeError, match=r"numpy\.add\.outer"):
        np.add.outer(ex, ex)
    with pytest.raises(TypeError, match="out="):
        np.add(ex, 1.0, out=ex)
