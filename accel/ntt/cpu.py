"""The NTT on the CPU: Numba-compiled Harvey butterflies with Shoup twiddles.

Every public function takes a validated C-contiguous ``uint64`` array shaped ``(B, L, n)``
(``B`` the flattened batch) and returns a new array of the same shape; rows (batch x limb) run
in parallel. The algorithms and their lazy ranges are written down in docs/ntt.md; the OpenCL
and CUDA kernels follow the same steps on the same tables.

Two row kernels exist per direction. *Wide* ones serve any modulus below 2^62 and take the high
word of a 64 x 64 product (``wide.mulhi``); they run scalar. *Narrow* ones serve moduli below
2^30: there every operand of a Shoup product fits 32 bits, so the products are exact 64-bit ones
that LLVM vectorises (``vpmuludq``), about twice as fast. Both give the same outputs.

Indexing notes, because they decide the speed: Numba adds a negative-index fix-up to every
access with a signed index it cannot prove non-negative, so the short strides (t = 1, 2) index
with ``uint64`` and the long ones work on slices indexed from zero, which also lets the inner
loop vectorise.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from numba import prange

from accel.ntt.jit import compiled
from accel.ntt.wide import mulhi

if TYPE_CHECKING:
    from accel.ntt.plan import Plan

# Numba's OpenMP layer spins idle workers by default. On a box whose cores are busy with other
# work that turns a 0.15 ms batch on two threads into 9-27 ms (measured at load 6 on 2 cores);
# sleeping workers cost a wake-up per call instead. Numba reads this when it starts the pool
# (the first parallel call); a value chosen by the operator wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_U = np.uint64
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_THREE = np.uint64(3)
#: moduli below this use the narrow (vectorised, 32-bit operand) kernels
NARROW_LIMIT = 1 << 30
_NARROW_LIMIT = np.uint64(NARROW_LIMIT)


# -- Shoup products and butterflies -----------------------------------------------------------


@compiled(inline="always")
def _shoup_wide(y, w, w_shoup, q):
    """``w * y mod q`` in ``[0, 2q)`` for any 64-bit ``y``; ``w_shoup = floor(w 2^64 / q)``."""
    return w * y - mulhi(w_shoup, y) * q


@compiled(inline="always")
def _shoup_narrow(y, w, w_shoup32, q):
    """As ``_shoup_wide`` for ``y < 2^32``, ``q < 2^30``, ``w_shoup32 = floor(w 2^32 / q)``.

    The masks change no value; they tell LLVM the operands are 32-bit so that it multiplies
    with ``vpmuludq``.
    """
    y &= _LOW32
    return (w & _LOW32) * y - ((w_shoup32 * y) >> _32) * (q & _LOW32)


@compiled(inline="always")
def _ct_wide(u, y, w, w_shoup, q, two_q):
    """Cooley-Tukey butterfly: inputs and outputs in ``[0, 4q)``."""
    if u >= two_q:
        u -= two_q
    v = _shoup_wide(y, w, w_shoup, q)
    return u + v, u - v + two_q


@compiled(inline="always")
def _ct_narrow(u, y, w, w_shoup32, q, two_q):
    if u >= two_q:
        u -= two_q
    v = _shoup_narrow(y, w, w_shoup32, q)
    return u + v, u - v + two_q


@compiled(inline="always")
def _gs_wide(u, v, w, w_shoup, q, two_q):
    """Gentleman-Sande butterfly: inputs and outputs in ``[0, 2q)``."""
    s = u + v
    if s >= two_q:
        s -= two_q
    return s, _shoup_wide(u - v + two_q, w, w_shoup, q)


@compiled(inline="always")
def _gs_narrow(u, v, w, w_shoup32, q, two_q):
    s = u + v
    if s >= two_q:
        s -= two_q
    return s, _shoup_narrow(u - v + two_q, w, w_shoup32, q)


@compiled(inline="always")
def _reduce_4q(u, q, two_q):
    """``[0, 4q)`` to ``[0, q)``."""
    if u >= two_q:
        u -= two_q
    if u >= q:
        u -= q
    return u


@compiled(inline="always")
def _mulmod_barrett(a, b, q, ratio_lo, ratio_hi):
    """``a * b mod q`` for ``a, b < q < 2^62`` with ``ratio = floor(2^128 / q)``."""
    z_lo = a * b
    z_hi = mulhi(a, b)
    # floor(z * ratio / 2^128), exactly, from the four partial products and their carries; it
    # is at most 1 below floor(z / q), the error of truncating ratio (z < q^2 < 2^124)
    mid = mulhi(z_lo, ratio_lo)
    p_lo = z_lo * ratio_hi
    r_lo = z_hi * ratio_lo
    mid += p_lo
    carry = _ONE if mid < p_lo else _U(0)
    mid += r_lo
    carry += _ONE if mid < r_lo else _U(0)
    quotient = z_hi * ratio_hi + mulhi(z_lo, ratio_hi) + mulhi(z_hi, ratio_lo) + carry
    r = z_lo - quotient * q
    if r >= q:
        r -= q
    return r


@compiled(inline="always")
def _shoup_companion(w, q, ratio_lo, ratio_hi):
    """``floor(w * 2^64 / q)`` for ``w < q``.

    ``floor(w * ratio / 2^64)`` is exact in two words and at most 1 short, because
    ``ratio = floor(2^128 / q)`` is; the remainder ``w * 2^64 - estimate * q`` (below 2q, so
    its low word is all of it) says whether to add the 1.
    """
    estimate = w * ratio_hi + mulhi(w, ratio_lo)
    remainder = _U(0) - estimate * q
    return estimate + _ONE if remainder >= q else estimate


# -- one row (one limb of one polynomial) -----------------------------------------------------


@compiled()
def _forward_row_wide(x, q, w, ws):
    n = x.shape[0]
    two_q = q + q
    t = n
    m = 1
    while m < n:
        t //= 2
        if t >= 4:
            for i in range(m):
                wi, wsi = w[m + i], ws[m + i]
                j = 2 * i * t
                lo, hi = x[j : j + t], x[j + t : j + 2 * t]
                for k in range(t):
                    lo[k], hi[k] = _ct_wide(lo[k], hi[k], wi, wsi, q, two_q)
        elif t == 2:
            for i in range(m):
                wi, wsi = w[m + i], ws[m + i]
                j = _U(4 * i)
                x[j], x[j + _TWO] = _ct_wide(x[j], x[j + _TWO], wi, wsi, q, two_q)
                x[j + _ONE], x[j + _THREE] = _ct_wide(
                    x[j + _ONE], x[j + _THREE], wi, wsi, q, two_q
                )
        else:  # last stage: reduce into [0, q) on the way out
            for i in range(m):
                j = _U(2 * i)
                u, v = _ct_wide(x[j], x[j + _ONE], w[m + i], ws[m + i], q, two_q)
                x[j] = _reduce_4q(u, q, two_q)
                x[j + _ONE] = _reduce_4q(v, q, two_q)
        m *= 2


@compiled()
def _forward_row_narrow(x, q, w, ws):
    n = x.shape[0]
    two_q = q + q
    t = n
    m = 1
    while m < n:
        t //= 2
        if t >= 4:
            for i in range(m):
                wi, wsi = w[m + i], ws[m + i] >> _32
                j = 2 * i * t
                lo, hi = x[j : j + t], x[j + t : j + 2 * t]
                for k in range(t):
                    lo[k], hi[k] = _ct_narrow(lo[k], hi[k], wi, wsi, q, two_q)
        elif t == 2:
            for i in range(m):
                wi, wsi = w[m + i], ws[m + i] >> _32
                j = _U(4 * i)
                x[j], x[j + _TWO] = _ct_narrow(x[j], x[j + _TWO], wi, wsi, q, two_q)
                x[j + _ONE], x[j + _THREE] = _ct_narrow(
                    x[j + _ONE], x[j + _THREE], wi, wsi, q, two_q
                )
        else:
            for i in range(m):
                j = _U(2 * i)
                u, v = _ct_narrow(x[j], x[j + _ONE], w[m + i], ws[m + i] >> _32, q, two_q)
                x[j] = _reduce_4q(u, q, two_q)
                x[j + _ONE] = _reduce_4q(v, q, two_q)
        m *= 2


@compiled()
def _inverse_row_wide(x, q, w, ws, n_inv, n_inv_shoup):
    n = x.shape[0]
    two_q = q + q
    t = 1
    m = n
    while m > 1:
        h = m // 2
        if t >= 4:
            for i in range(h):
                wi, wsi = w[h + i], ws[h + i]
                j = 2 * i * t
                lo, hi = x[j : j + t], x[j + t : j + 2 * t]
                for k in range(t):
                    lo[k], hi[k] = _gs_wide(lo[k], hi[k], wi, wsi, q, two_q)
        elif t == 2:
            for i in range(h):
                wi, wsi = w[h + i], ws[h + i]
                j = _U(4 * i)
                x[j], x[j + _TWO] = _gs_wide(x[j], x[j + _TWO], wi, wsi, q, two_q)
                x[j + _ONE], x[j + _THREE] = _gs_wide(
                    x[j + _ONE], x[j + _THREE], wi, wsi, q, two_q
                )
        else:
            for i in range(h):
                j = _U(2 * i)
                x[j], x[j + _ONE] = _gs_wide(x[j], x[j + _ONE], w[h + i], ws[h + i], q, two_q)
        t *= 2
        m = h
    for j in range(n):
        u = _shoup_wide(x[j], n_inv, n_inv_shoup, q)
        x[j] = u - q if u >= q else u


@compiled()
def _inverse_row_narrow(x, q, w, ws, n_inv, n_inv_shoup):
    n = x.shape[0]
    two_q = q + q
    t = 1
    m = n
    while m > 1:
        h = m // 2
        if t >= 4:
            for i in range(h):
                wi, wsi = w[h + i], ws[h + i] >> _32
                j = 2 * i * t
                lo, hi = x[j : j + t], x[j + t : j + 2 * t]
                for k in range(t):
                    lo[k], hi[k] = _gs_narrow(lo[k], hi[k], wi, wsi, q, two_q)
        elif t == 2:
            for i in range(h):
                wi, wsi = w[h + i], ws[h + i] >> _32
                j = _U(4 * i)
                x[j], x[j + _TWO] = _gs_narrow(x[j], x[j + _TWO], wi, wsi, q, two_q)
                x[j + _ONE], x[j + _THREE] = _gs_narrow(
                    x[j + _ONE], x[j + _THREE], wi, wsi, q, two_q
                )
        else:
            for i in range(h):
                j = _U(2 * i)
                x[j], x[j + _ONE] = _gs_narrow(
                    x[j], x[j + _ONE], w[h + i], ws[h + i] >> _32, q, two_q
                )
        t *= 2
        m = h
    n_inv_shoup32 = n_inv_shoup >> _32
    for j in range(n):
        u = _shoup_narrow(x[j], n_inv, n_inv_shoup32, q)
        x[j] = u - q if u >= q else u


@compiled()
def powers(root, q, n, ratio_lo, ratio_hi):
    """``[root^0, root^1, ..., root^(n-1)] mod q`` (for the plan's tables)."""
    out = np.empty(n, dtype=np.uint64)
    acc = _ONE
    for i in range(n):
        out[i] = acc
        acc = _mulmod_barrett(acc, root, q, ratio_lo, ratio_hi)
    return out


@compiled()
def shoup_companions(values, q, ratio_lo, ratio_hi):
    """``floor(w * 2^64 / q)`` for each ``w < q`` (for the plan's tables)."""
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        out[i] = _shoup_companion(values[i], q, ratio_lo, ratio_hi)
    return out


# -- batches: rows in parallel ----------------------------------------------------------------


@compiled(parallel=True)
def _forward_rows(a, moduli, psi_rev, psi_rev_shoup):
    batch, limbs, _ = a.shape
    for r in prange(batch * limbs):
        b, limb = divmod(np.int64(r), limbs)
        if moduli[limb] < _NARROW_LIMIT:
            _forward_row_narrow(a[b, limb], moduli[limb], psi_rev[limb], psi_rev_shoup[limb])
        else:
            _forward_row_wide(a[b, limb], moduli[limb], psi_rev[limb], psi_rev_shoup[limb])


@compiled(parallel=True)
def _inverse_rows(a, moduli, psi_inv_rev, psi_inv_rev_shoup, n_inv, n_inv_shoup):
    batch, limbs, _ = a.shape
    for r in prange(batch * limbs):
        b, limb = divmod(np.int64(r), limbs)
        args = (
            a[b, limb],
            moduli[limb],
            psi_inv_rev[limb],
            psi_inv_rev_shoup[limb],
            n_inv[limb],
            n_inv_shoup[limb],
        )
        if moduli[limb] < _NARROW_LIMIT:
            _inverse_row_narrow(*args)
        else:
            _inverse_row_wide(*args)


@compiled(parallel=True)
def _pointwise_rows(a, b, moduli, barrett):
    batch, limbs, n = a.shape
    for r in prange(batch * limbs):
        k, limb = divmod(np.int64(r), limbs)
        q = moduli[limb]
        lo = barrett[limb, 0]
        hi = barrett[limb, 1]
        x = a[k, limb]
        y = b[k, limb]
        for j in range(n):
            x[j] = _mulmod_barrett(x[j], y[j], q, lo, hi)


# -- entry points -----------------------------------------------------------------------------


# A single row runs without the parallel region: starting a thread team for one task costs
# more than the transform when the cores are busy with other work.


def _forward_into(plan: Plan, out: np.ndarray) -> None:
    if out.shape[0] * out.shape[1] == 1:
        q = plan.moduli[0]
        row = _forward_row_narrow if q < _NARROW_LIMIT else _forward_row_wide
        row(out[0, 0], q, plan.psi_rev[0], plan.psi_rev_shoup[0])
    else:
        _forward_rows(out, plan.moduli, plan.psi_rev, plan.psi_rev_shoup)


def _inverse_into(plan: Plan, out: np.ndarray) -> None:
    tables = (plan.psi_inv_rev, plan.psi_inv_rev_shoup, plan.n_inv, plan.n_inv_shoup)
    if out.shape[0] * out.shape[1] == 1:
        q = plan.moduli[0]
        row = _inverse_row_narrow if q < _NARROW_LIMIT else _inverse_row_wide
        row(out[0, 0], q, *(table[0] for table in tables))
    else:
        _inverse_rows(out, plan.moduli, *tables)


def forward(plan: Plan, a: np.ndarray) -> np.ndarray:
    """Forward negacyclic NTT of ``a`` (``(B, L, n)``, reduced); bit-reversed output."""
    out = np.array(a, dtype=np.uint64, order="C", copy=True)
    _forward_into(plan, out)
    return out


def inverse(plan: Plan, a: np.ndarray) -> np.ndarray:
    """Inverse of ``forward``: bit-reversed evaluations back to coefficients."""
    out = np.array(a, dtype=np.uint64, order="C", copy=True)
    _inverse_into(plan, out)
    return out


def pointwise(plan: Plan, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * b mod q_l`` elementwise for two reduced ``(B, L, n)`` arrays."""
    out = np.array(a, dtype=np.uint64, order="C", copy=True)
    _pointwise_rows(out, np.ascontiguousarray(b, dtype=np.uint64), plan.moduli, plan.barrett)
    return out


def polymul(plan: Plan, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Negacyclic product per limb of two ``(B, L, n)`` coefficient arrays."""
    fa = forward(plan, a)
    _pointwise_rows(fa, forward(plan, b), plan.moduli, plan.barrett)
    _inverse_into(plan, fa)
    return fa
