"""The linear NumPy functions on ``EncryptedArray``: cumsum, diff, where, outer, tensordot,
einsum, average and trace.

Each is linear in the ciphertexts (exactly one encrypted operand where there is a product), so
it reduces to the batch operations of ``accel.paillier.arithmetic``: products go through one
``multiexp`` or ``powmod`` batch, sums through ``prodmod`` or a logarithmic number of
``mulmod`` batches, selections through NumPy on the opaque cells. Magnitude bounds follow from
those operations, which refuse before a result could leave the plaintext band.
"""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

import numpy as np
from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple

from accel.paillier.arithmetic import (
    CT_TIMES_CT,
    _encrypted_at_plain,
    as_encrypted,
    at_scale,
    check_bound,
    is_encrypted,
    multiply,
    subtract,
    sum_,
    true_divide,
)
from accel.paillier.encoding import as_plaintext

__all__ = ["as_encrypted", "average", "cumsum", "diff", "einsum", "outer", "tensordot",
           "trace", "where"]


def _first_encrypted(*values: Any) -> Any:
    return next(v for v in values if is_encrypted(v))


def cumsum(a: Any, axis: Any = None) -> Any:
    """Running sums: a Hillis-Steele scan, ``ceil(log2 K)`` ``mulmod`` batches along an axis of
    length ``K`` rather than ``K`` sequential ones."""
    if axis is None:
        a, axis = a.ravel(), 0
    axis = normalize_axis_index(axis, a.ndim)
    K = a.shape[axis]
    bound = check_bound(a, a.bound * K, a.scale, f"cumulative sum of {K} elements")
    L = a.public_key.limbs
    moved = np.moveaxis(a.data, axis, 0)
    out = np.array(moved, order="C").reshape(K, -1, L)  # a copy: a.data is read-only
    R = out.shape[1]
    if K > 1 and R > 0:
        be = a._backend("mulmod", K * R)
        shift = 1
        while shift < K:
            upper = np.ascontiguousarray(out[shift:]).reshape(-1, L)
            lower = np.ascontiguousarray(out[:-shift]).reshape(-1, L)
            out[shift:] = be.mulmod(upper, lower, a.public_key.nsquare).reshape(K - shift, R, L)
            shift *= 2
    data = np.moveaxis(out.reshape(moved.shape), 0, axis)
    return a._like(np.ascontiguousarray(data), bound=bound)


def diff(a: Any, n: int = 1, axis: int = -1, prepend: Any = np._NoValue,
         append: Any = np._NoValue) -> Any:
    """``np.diff``; plaintext ``a``, ``prepend`` or ``append`` are encrypted with the key of
    the encrypted one."""
    if n == 0:
        return a
    if n < 0:
        raise ValueError(f"order must be non-negative but got {n!r}")
    like = _first_encrypted(a, prepend, append)
    a = as_encrypted(a, like)
    if a.ndim == 0:
        raise ValueError("diff requires input that is at least one dimensional")
    axis = normalize_axis_index(axis, a.ndim)
    parts = []
    for extra in (prepend, a, append):
        if extra is np._NoValue:
            continue
        if np.ndim(extra) == 0:
            shape = list(a.shape)
            shape[axis] = 1
            extra = np.broadcast_to(extra, shape)
        parts.append(extra)
    if len(parts) > 1:
        a = np.concatenate(parts, axis=axis)
    # each order doubles the magnitude bound (after scale alignment): refuse up front
    check_bound(a, a.bound << n, a.scale, f"diff of order {n}")
    head = (slice(None),) * axis
    for _ in range(n):
        a = subtract(a[(*head, slice(1, None))], a[(*head, slice(None, -1))])
    return a


def where(condition: Any, x: Any = np._NoValue, y: Any = np._NoValue) -> Any:
    """``np.where(condition, x, y)`` with a plaintext condition: a selection of cells."""
    if is_encrypted(condition):
        raise TypeError(
            "numpy.where cannot take an encrypted condition: choosing by an encrypted value "
            "needs comparisons, and Paillier ciphertexts cannot be compared without the "
            "private key (decrypt the condition first)")
    if x is np._NoValue or y is np._NoValue:
        raise ValueError("either both or neither of x and y should be given")
    like = _first_encrypted(x, y)
    ex, ey = as_encrypted(x, like), as_encrypted(y, like)
    scale = max(ex.scale, ey.scale)
    ex, ey = at_scale(ex, scale), at_scale(ey, scale)
    cells = np.where(np.asarray(condition).astype(bool), ex.cells, ey.cells)
    dtype = np.float64 if "f" in (ex.dtype.kind, ey.dtype.kind) else np.int64
    return like._from_cells(cells, scale, dtype, ex.obfuscated and ey.obfuscated,
                            max(ex.bound, ey.bound))


def outer(a: Any, b: Any) -> Any:
    """``np.outer`` of an encrypted and a plaintext vector (both are flattened)."""
    if is_encrypted(a) and is_encrypted(b):
        raise TypeError(CT_TIMES_CT)
    left = a.ravel() if is_encrypted(a) else np.ravel(as_plaintext(a))
    right = b.ravel() if is_encrypted(b) else np.ravel(as_plaintext(b))
    return multiply(left.reshape(-1, 1), right.reshape(1, -1))


def _tensordot_axes(axes: Any, nd_a: int, nd_b: int) -> tuple[list[int], list[int]]:
    try:
        axes_a, axes_b = axes
    except TypeError:
        n = int(axes)
        return list(range(nd_a - n, nd_a)), list(range(n))
    axes_a = [axes_a] if np.ndim(axes_a) == 0 else list(axes_a)
    axes_b = [axes_b] if np.ndim(axes_b) == 0 else list(axes_b)
    if len(axes_a) != len(axes_b):
        raise ValueError("shape-mismatch for sum")
    return ([normalize_axis_index(i, nd_a) for i in axes_a],
            [normalize_axis_index(i, nd_b) for i in axes_b])


def tensordot(a: Any, b: Any, axes: Any = 2) -> Any:
    """``np.tensordot`` with exactly one encrypted operand: one ``multiexp`` batch."""
    if is_encrypted(a) and is_encrypted(b):
        raise TypeError(CT_TIMES_CT)
    pa = a if is_encrypted(a) else as_plaintext(a)
    pb = b if is_encrypted(b) else as_plaintext(b)
    axes_a, axes_b = _tensordot_axes(axes, pa.ndim, pb.ndim)
    if any(pa.shape[i] != pb.shape[j] for i, j in zip(axes_a, axes_b, strict=True)):
        raise ValueError("shape-mismatch for sum")
    free_a = [i for i in range(pa.ndim) if i not in axes_a]
    free_b = [j for j in range(pb.ndim) if j not in axes_b]
    C = int(np.prod([pa.shape[i] for i in axes_a], dtype=np.int64))
    FA = int(np.prod([pa.shape[i] for i in free_a], dtype=np.int64))
    FB = int(np.prod([pb.shape[j] for j in free_b], dtype=np.int64))
    out_shape = tuple(pa.shape[i] for i in free_a) + tuple(pb.shape[j] for j in free_b)
    if is_encrypted(pa):
        e2 = pa.transpose(free_a + axes_a).reshape(FA, C)
        w2 = np.transpose(pb, axes_b + free_b).reshape(C, FB)
        result = _encrypted_at_plain(e2, w2)
    else:  # (A @ E) = (E^T @ A^T)^T on the flattened axes
        e2 = pb.transpose(free_b + axes_b).reshape(FB, C)
        w2 = np.transpose(pa, axes_a + free_a).reshape(C, FA)
        result = _encrypted_at_plain(e2, w2).T
    return result.reshape(out_shape)


def trace(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Any:
    return sum_(a._from_cells(np.diagonal(a.cells, offset, axis1, axis2)), -1)


def average(a: Any, axis: Any = None, weights: Any = None, returned: bool = False, *,
            keepdims: Any = np._NoValue) -> Any:
    """``np.average`` of an encrypted array with plaintext weights."""
    if is_encrypted(weights):
        raise TypeError("numpy.average cannot take encrypted weights: " + CT_TIMES_CT)
    keep = keepdims is not np._NoValue and bool(keepdims)
    if weights is None:
        avg = np.mean(a, axis=axis, keepdims=keep)
        scl = np.float64(a.size / max(avg.size, 1))
    else:
        w = as_plaintext(weights)
        if w.shape != a.shape:
            if axis is None:
                raise TypeError(
                    "Axis must be specified when shapes of a and weights differ.")
            axes = normalize_axis_tuple(axis, a.ndim)
            if w.shape != tuple(a.shape[i] for i in axes):
                raise ValueError(
                    "Shape of weights must be consistent with shape of a along specified axis.")
            w = w.transpose(np.argsort(axes)).reshape(
                tuple(s if i in axes else 1 for i, s in enumerate(a.shape)))
        scl = np.sum(w, axis=axis, dtype=np.float64, keepdims=keep)
        if np.any(scl == 0.0):
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
        avg = true_divide(sum_(multiply(a, w), axis, keep), scl)
    if not returned:
        return avg
    if np.shape(scl) != avg.shape:
        scl = np.broadcast_to(scl, avg.shape).copy()
    return avg, scl


def _expand_ellipsis(inputs: list[str], ndims: list[int], out: str | None
                     ) -> tuple[list[str], str]:
    """Subscripts with ``...`` replaced by fresh letters (broadcast dimensions aligned on the
    right, as NumPy does) and the output made explicit."""
    used = {c for term in inputs for c in term if c.isalpha()}
    pool = [c for c in string.ascii_letters if c not in used]
    spans = [nd - (len(t) - 3) for t, nd in zip(inputs, ndims, strict=True) if "..." in t]
    ell = pool[: max(spans, default=0)]
    expanded = []
    for term, nd in zip(inputs, ndims, strict=True):
        if "..." in term:
            k = nd - (len(term) - 3)
            term = term.replace("...", "".join(ell[len(ell) - k:]) if k > 0 else "")
        if len(term) != nd or not all(c.isalpha() for c in term):
            raise ValueError(
                f"einsum: subscripts {term!r} do not match an operand of {nd} dimensions")
        expanded.append(term)
    if out is None:
        counts = Counter("".join(expanded))
        out = "".join(ell) + "".join(sorted(c for c, k in counts.items()
                                            if k == 1 and c not in ell))
    else:
        out = out.replace("...", "".join(ell))
        seen = {c for term in expanded for c in term}
        if len(set(out)) != len(out) or any(c not in seen for c in out):
            raise ValueError(f"einsum: invalid output subscripts {out!r}")
    return expanded, out


def einsum(*operands: Any) -> Any:
    """``np.einsum`` with exactly one encrypted operand.

    The plaintext operands are contracted together first (NumPy, plaintext), repeated labels
    of the encrypted one become diagonals and its own summed labels are summed; what is left
    is one matrix product (a ``multiexp`` batch), or, when a label is shared, kept and not
    summed (a batch label), a broadcast product followed by a sum.
    """
    if not operands or not isinstance(operands[0], str):
        raise TypeError("einsum on encrypted arrays takes the subscripts form, "
                        "np.einsum('ij,jk->ik', a, b)")
    subscripts, ops = operands[0].replace(" ", ""), list(operands[1:])
    encrypted = [i for i, op in enumerate(ops) if is_encrypted(op)]
    if len(encrypted) != 1:
        raise TypeError(CT_TIMES_CT + " (einsum takes exactly one encrypted operand)")
    lhs, arrow, out = subscripts.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ops):
        raise ValueError(f"einsum: {len(inputs)} subscripts for {len(ops)} operands")
    plain_ops = {i: as_plaintext(op) for i, op in enumerate(ops) if i != encrypted[0]}
    ndims = [op.ndim if is_encrypted(op) else plain_ops[i].ndim for i, op in enumerate(ops)]
    terms, out = _expand_ellipsis(inputs, ndims, out if arrow else None)
    e = ops[encrypted[0]]
    out_set = set(out)
    labels = list(terms[encrypted[0]])
    # repeated labels of the encrypted operand: its diagonal, moved to the last axis
    while len(set(labels)) != len(labels):
        c = next(c for c in labels if labels.count(c) > 1)
        i = labels.index(c)
        j = labels.index(c, i + 1)
        e = e._from_cells(np.diagonal(e.cells, axis1=i, axis2=j))
        labels = [lab for k, lab in enumerate(labels) if k not in (i, j)] + [c]
    q = ""
    p = None
    if plain_ops:
        plain_terms = [terms[i] for i in plain_ops]
        q = "".join(dict.fromkeys(c for c in "".join(plain_terms)
                                  if c in labels or c in out_set))
        p = np.einsum(",".join(plain_terms) + "->" + q, *plain_ops.values())
    drop = tuple(k for k, c in enumerate(labels) if c not in out_set and c not in q)
    if drop:
        e = sum_(e, drop)
        labels = [c for k, c in enumerate(labels) if k not in drop]
    if p is None:
        return e.transpose([labels.index(c) for c in out]) if labels else e
    sizes = dict(zip(labels, e.shape, strict=True))
    for c, d in zip(q, p.shape, strict=True):
        if sizes.setdefault(c, d) != d:
            raise ValueError(f"einsum: label {c!r} has sizes {sizes[c]} and {d}")
    batch = [c for c in labels if c in q and c in out_set]
    contracted = [c for c in labels if c in q and c not in out_set]
    if not batch:
        free_e = [c for c in labels if c not in q]
        free_p = [c for c in q if c not in labels]
        dims = [sizes[c] for c in free_e + free_p]
        n_e, n_c, n_p = (int(np.prod([sizes[c] for c in group], dtype=np.int64))
                         for group in (free_e, contracted, free_p))
        e2 = e.transpose([labels.index(c) for c in free_e + contracted]).reshape(n_e, n_c)
        p2 = np.transpose(p, [q.index(c) for c in contracted + free_p]).reshape(n_c, n_p)
        result = _encrypted_at_plain(e2, p2).reshape(dims)
        result_labels = free_e + free_p
    else:
        full = list(out) + contracted
        ex = e.transpose([labels.index(c) for c in full if c in labels]).reshape(
            [sizes[c] if c in labels else 1 for c in full])
        px = np.transpose(p, [q.index(c) for c in full if c in q]).reshape(
            [sizes[c] if c in q else 1 for c in full])
        result = multiply(ex, px)
        if contracted:
            result = sum_(result, tuple(range(len(out), len(full))))
        result_labels = list(out)
    perm = [result_labels.index(c) for c in out]
    return result.transpose(perm) if perm else result
