"""``EncryptedArray``: a NumPy-shaped array of Paillier ciphertexts.

The ciphertexts live in one C-contiguous ``uint64`` ndarray of shape ``(*shape, L)`` with one
public key and one fixed-point scale for the whole array. Shape operations never touch the
numbers: the limb rows are viewed as opaque cells (a void dtype of ``8*L`` bytes), so indexing,
transposes, concatenation and every other structural NumPy function run on NumPy itself with
exactly NumPy's semantics. Arithmetic lives in ``accel.paillier.arithmetic``.

An array encrypted with an explicit ``backend=`` keeps computing on that backend, and so do
arrays computed from it; otherwise each operation asks the router.

Results of homomorphic operations are not re-randomised (that would cost an encryption per
element and each intermediate product of a dot product would pay it). As in python-paillier,
the ciphertexts are re-randomised instead when they leave the process: ``to_bytes()`` and
``raw()`` of a computed array multiply in fresh randomness first, unless told not to. Without
that, ``ea * 0`` would leave as the ciphertext 1 and a sum would reveal its summands.

Every array also carries ``bound``, an upper bound on ``|mantissa|`` over all its elements
(one Python int per array, never per element). Each operation computes its result's bound
from its operands' before any ciphertext work and raises ``OverflowError`` when it could pass
the key's plaintext band (``n // 3 - 1``): past it a mantissa wraps modulo n and would decrypt
to a wrong number. ``PrivateKey.refresh`` brings a grown array back to a small scale and bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from accel.backends import Backend, resolve
from accel.backends.base import ints_to_limbs, limbs_to_ints
from accel.paillier import arithmetic, numpy_api
from accel.paillier.keys import PublicKey


class EncryptedArray:
    """Ciphertexts under one public key, with NumPy shapes, broadcasting and dispatch.

    The constructor trusts ``data`` to hold reduced ciphertexts (the backends assume it) and
    ``bound`` to bound every ``|mantissa|``; without a ``bound`` it assumes int64-sized values
    (``|value| <= 2**63``). Untrusted input goes through ``from_raw`` or ``from_bytes``, which
    check every ciphertext and assume the whole plaintext band unless told a bound.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable through __setitem__

    def __init__(
        self,
        public_key: PublicKey,
        data: np.ndarray,
        scale: int,
        dtype: Any = np.float64,
        *,
        backend: str | Backend | None = None,
        obfuscated: bool = False,
        bound: int | None = None,
    ) -> None:
        if not isinstance(public_key, PublicKey):
            raise TypeError("public_key must be a PublicKey")
        if not isinstance(data, np.ndarray):
            raise TypeError("data must be a uint64 ndarray of limbs")
        if data.dtype != np.uint64 or data.ndim < 1 or data.shape[-1] != public_key.limbs:
            raise ValueError(
                f"ciphertext data must be uint64 of shape (..., {public_key.limbs}) for this key"
            )
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.int64), np.dtype(np.float64)):
            raise ValueError("the plaintext dtype of an EncryptedArray is int64 or float64")
        if dtype.kind == "i" and scale != 0:
            raise ValueError("integer arrays have scale 0")
        if bound is None:
            bound = min(public_key.max_int, 1 << max(0, 63 + int(scale)))
        elif isinstance(bound, bool) or not isinstance(bound, int | np.integer) or bound < 0:
            raise TypeError("bound must be a non-negative int (a bound on |mantissa|)")
        elif bound > public_key.max_int:
            raise ValueError(
                f"bound has {int(bound).bit_length()} bits: beyond the plaintext band of this "
                f"key ({public_key.max_int.bit_length()} bits), its values may have wrapped")
        self.public_key = public_key
        self._data = np.ascontiguousarray(data)
        self.scale = int(scale)
        #: upper bound on |mantissa| of every element (``value = mantissa * 2**-scale``)
        self.bound = int(bound)
        self.dtype = dtype
        self.backend = backend
        #: every ciphertext carries fresh randomness (true for encryptions and imports)
        self.obfuscated = bool(obfuscated)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_raw(
        cls, public_key: PublicKey, ciphertexts: Any, scale: int = 0, dtype: Any = None,
        *, bound: int | None = None,
    ) -> EncryptedArray:
        """Wrap existing ciphertexts (Python ints, e.g. from python-paillier, whose exponent
        ``e`` in base 16 is ``scale = -4 * e``); each must be in ``[1, n^2)``.

        ``bound`` is what the caller vouches for ``|mantissa|``; without it nothing is known
        and the whole plaintext band is assumed, so decryption works but any operation that
        could grow the values (a sum, a product) raises ``OverflowError``.
        """
        _require_public_key(public_key)
        arr = np.asarray(ciphertexts, dtype=object)
        flat = arr.ravel()
        for i, c in enumerate(flat):
            if isinstance(c, bool) or not isinstance(c, int | np.integer):
                raise TypeError(f"ciphertext {i} is not an int")
            if not 0 < int(c) < public_key.nsquare:
                raise ValueError(f"ciphertext {i} is not in [1, n^2) for this key")
        data = ints_to_limbs(flat, public_key.limbs).reshape((*arr.shape, public_key.limbs))
        if dtype is None:
            dtype = np.int64 if scale == 0 else np.float64
        return cls(public_key, data, scale, dtype, obfuscated=True,
                   bound=public_key.max_int if bound is None else bound)

    @classmethod
    def from_bytes(cls, blob: bytes, public_key: PublicKey) -> EncryptedArray:
        """Parse ``to_bytes`` output; ``ValueError`` for anything malformed or foreign.

        The bytes carry the array's bound (format 2); format-1 bytes carry none, so the whole
        plaintext band is assumed (see ``from_raw``)."""
        from accel.paillier.serialization import loads

        _require_public_key(public_key)
        data, scale, dtype, bound = loads(blob, public_key)
        return cls(public_key, data, scale, dtype, obfuscated=True, bound=bound)

    def to_bytes(self, *, rerandomize: bool = True) -> bytes:
        """A versioned, self-describing serialization (see ``accel.paillier.serialization``);
        a computed array is re-randomised first unless ``rerandomize=False``."""
        from accel.paillier.serialization import dumps

        return dumps(self._exportable(rerandomize))

    def raw(self, *, rerandomize: bool = True) -> np.ndarray:
        """The ciphertexts as an object ndarray of Python ints (re-randomised like
        ``to_bytes``)."""
        source = self._exportable(rerandomize)
        out = np.empty(self.size, dtype=object)
        out[:] = limbs_to_ints(source._data.reshape(-1, self.public_key.limbs))
        return out.reshape(self.shape)

    def rerandomize(self) -> EncryptedArray:
        """The same plaintexts under fresh randomness (one encryption's work per element)."""
        from accel.paillier.residues import randomness

        out = self._like(self._data.copy())
        if self.size:
            be = self._backend("powmod_fixed", self.size)
            rows = self._data.reshape(-1, self.public_key.limbs)
            noise = randomness(self.public_key, self.size, be)
            out._data = be.mulmod(rows, noise, self.public_key.nsquare).reshape(self._data.shape)
        out.obfuscated = True
        return out

    def _exportable(self, rerandomize: bool) -> EncryptedArray:
        return self.rerandomize() if rerandomize and not self.obfuscated else self

    def _like(self, data: np.ndarray, scale: int | None = None, dtype: Any = None,
              bound: int | None = None) -> EncryptedArray:
        """An array on the same key and backend. A new ``scale`` must come with its
        ``bound``: the bound of the values cannot be guessed from the scale."""
        if bound is None:
            if scale is not None and scale != self.scale:
                raise ValueError("a new scale needs its bound")
            bound = self.bound
        return EncryptedArray(
            self.public_key, data, self.scale if scale is None else scale,
            self.dtype if dtype is None else dtype, backend=self.backend, bound=bound,
        )

    def _backend(self, op: str, size: int) -> Backend:
        return resolve(self.backend, op=op, size=size)

    # -- cells: the ciphertexts as opaque NumPy elements --------------------------------------

    @property
    def cells(self) -> np.ndarray:
        """A view of the ciphertexts as an array of shape ``self.shape`` with a void dtype."""
        cell = np.dtype((np.void, 8 * self.public_key.limbs))
        return self._data.view(cell).reshape(self.shape)

    def _from_cells(self, cells: Any, scale: int | None = None, dtype: Any = None,
                    obfuscated: bool | None = None, bound: int | None = None
                    ) -> EncryptedArray:
        """An array of these cells; moving ciphertexts around keeps them as fresh as they were
        unless a scale change recomputed them."""
        cells = np.asarray(cells)
        flat = np.ascontiguousarray(cells.reshape(-1))  # a 0-d array cannot change its dtype
        data = flat.view(np.uint64).reshape((*cells.shape, self.public_key.limbs))
        out = self._like(data, scale, dtype, bound)
        out.obfuscated = self.obfuscated if obfuscated is None else obfuscated
        return out

    # -- array attributes --------------------------------------------------------------------

    @property
    def data(self) -> np.ndarray:
        """The ``(*shape, L)`` limb buffer (read-only view)."""
        view = self._data.view()
        view.flags.writeable = False
        return view

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape[:-1]

    @property
    def ndim(self) -> int:
        return self._data.ndim - 1

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def T(self) -> EncryptedArray:
        return self.transpose()

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d encrypted array")
        return self.shape[0]

    def __iter__(self) -> Iterator[EncryptedArray]:
        for i in range(len(self)):
            yield self[i]

    @property
    def headroom(self) -> int:
        """Bits left before the magnitude bound reaches the plaintext band: a product by a
        plaintext of ``b`` bits, or a sum of ``2**b`` such arrays, needs ``b`` of them."""
        if self.bound == 0:
            return self.public_key.max_int.bit_length()
        return (self.public_key.max_int // self.bound).bit_length() - 1

    def __repr__(self) -> str:
        return (f"EncryptedArray(shape={self.shape}, dtype={self.dtype.name}, "
                f"scale={self.scale}, headroom={self.headroom} bits, "
                f"key={self.public_key.fingerprint[:6].hex()})")

    def __bool__(self) -> bool:
        raise TypeError("the truth value of an encrypted array is unknown until decrypted")

    def _compare(self, other: Any) -> bool:
        raise TypeError(
            "encrypted arrays cannot be compared: Paillier ciphertexts hide their order, and "
            "only the private key can tell (decrypt first)")

    __lt__ = __le__ = __gt__ = __ge__ = _compare

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("an EncryptedArray has no plaintext values: decrypt it first")

    # -- structure ---------------------------------------------------------------------------

    def __getitem__(self, index: Any) -> EncryptedArray:
        if isinstance(index, EncryptedArray):
            raise TypeError("an encrypted array cannot be used as an index")
        return self._from_cells(self.cells[index])

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(value, EncryptedArray):
            arithmetic.check_same_key(self, value)
        else:
            value = self.public_key.encrypt(value, backend=self.backend)
        if value.scale > self.scale:
            raised = arithmetic.at_scale(self, value.scale)
            self._data, self.scale, self.bound = raised._data, raised.scale, raised.bound
            self.obfuscated = False
        value = arithmetic.at_scale(value, self.scale)
        # cells that are not overwritten keep their values: the new bound covers both
        self.bound = max(self.bound, value.bound)
        if value.dtype.kind == "f":
            self.dtype = value.dtype  # no truncation exists on ciphertexts: promote instead
        self.cells[index] = value.cells
        self.obfuscated = self.obfuscated and value.obfuscated

    def reshape(self, *shape: Any) -> EncryptedArray:
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return self._from_cells(self.cells.reshape(shape))

    def transpose(self, *axes: Any) -> EncryptedArray:
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], tuple | list)):
            axes = axes[0]
        return self._from_cells(self.cells.transpose(axes or None))

    def swapaxes(self, a: int, b: int) -> EncryptedArray:
        return self._from_cells(self.cells.swapaxes(a, b))

    def ravel(self) -> EncryptedArray:
        return self._from_cells(self.cells.ravel())

    def flatten(self) -> EncryptedArray:
        return self._from_cells(self.cells.flatten())

    def squeeze(self, axis: Any = None) -> EncryptedArray:
        return self._from_cells(self.cells.squeeze(axis))

    def copy(self) -> EncryptedArray:
        out = self._like(self._data.copy())
        out.obfuscated = self.obfuscated
        return out

    def __copy__(self) -> EncryptedArray:
        return self.copy()

    def __deepcopy__(self, memo: dict) -> EncryptedArray:
        return self.copy()

    def __reduce__(self) -> tuple:
        # the backend pin is a property of this process, not of the data
        return _restore, (self.public_key, self._data, self.scale, self.dtype, self.obfuscated,
                          self.bound)

    # -- arithmetic --------------------------------------------------------------------------

    def __add__(self, other: Any) -> EncryptedArray:
        return arithmetic.add(self, other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> EncryptedArray:
        return arithmetic.subtract(self, other)

    def __rsub__(self, other: Any) -> EncryptedArray:
        return arithmetic.subtract(other, self)

    def __mul__(self, other: Any) -> EncryptedArray:
        return arithmetic.multiply(self, other)

    def mul(self, other: Any, *, precision: int | None = None) -> EncryptedArray:
        """``self * other`` with a float ``other`` encoded on ``precision`` bits of its
        largest magnitude (the operand precision, 53 by default, when None): fewer bits make
        the result's scale and bound grow less."""
        return arithmetic.multiply(self, other, precision=precision)

    def matmul(self, other: Any, *, precision: int | None = None) -> EncryptedArray:
        """``self @ other`` with the plaintext ``other`` encoded like ``mul`` does."""
        return arithmetic.matmul(self, other, precision=precision)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> EncryptedArray:
        return arithmetic.true_divide(self, other)

    def __rtruediv__(self, other: Any) -> EncryptedArray:
        return arithmetic.true_divide(other, self)

    def __neg__(self) -> EncryptedArray:
        return arithmetic.negative(self)

    def __pos__(self) -> EncryptedArray:
        return self

    def __matmul__(self, other: Any) -> EncryptedArray:
        return arithmetic.matmul(self, other)

    def __rmatmul__(self, other: Any) -> EncryptedArray:
        return arithmetic.matmul(other, self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> EncryptedArray:
        return arithmetic.sum_(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> EncryptedArray:
        return arithmetic.mean(self, axis, keepdims)

    def dot(self, other: Any) -> EncryptedArray:
        return arithmetic.dot(self, other)

    # -- NumPy protocols ---------------------------------------------------------------------

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return numpy_api.array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return numpy_api.array_function(func, args, kwargs)


def _restore(public_key: PublicKey, data: np.ndarray, scale: int, dtype: Any,
             obfuscated: bool, bound: int | None = None) -> EncryptedArray:
    # a pickle from before bounds were tracked carries none: assume the whole band
    return EncryptedArray(public_key, data, scale, dtype, obfuscated=obfuscated,
                          bound=public_key.max_int if bound is None else bound)


def _require_public_key(public_key: Any) -> None:
    if not isinstance(public_key, PublicKey):
        raise TypeError(
            "a PublicKey is required to load ciphertexts (the key they were encrypted "
            f"under), got {type(public_key).__name__}")
