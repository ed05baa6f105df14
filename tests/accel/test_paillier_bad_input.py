"""Bad input gets a clear exception, never a wrong number or a crash."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from accel import paillier
from accel.paillier import serialization

PK, SK = paillier.keygen(512)
OTHER_PK, OTHER_SK = paillier.keygen(512)
EA = PK.encrypt(np.array([[1.5, -2.0], [3.25, 4.0]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinity_are_refused(bad):
    with pytest.raises(ValueError, match="NaN or infinity"):
        PK.encrypt(np.array([1.0, bad]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        EA + bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        EA * np.array([bad, 1.0])


def test_mismatched_keys():
    other = OTHER_PK.encrypt(np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="different public keys"):
        EA + other
    with pytest.raises(ValueError, match="different public keys"):
        np.concatenate([EA, other])
    with pytest.raises(ValueError, match="different public key"):
        SK.decrypt(other)


def test_ciphertext_times_ciphertext_says_paillier_cannot():
    for op in (lambda: EA * EA, lambda: np.multiply(EA, EA), lambda: EA @ EA.T,
               lambda: np.dot(EA, EA)):
        with pytest.raises(TypeError, match="Paillier cannot multiply two ciphertexts"):
            op()
    with pytest.raises(TypeError, match="cannot divide by a ciphertext"):
        2.0 / EA


def test_overflow_raises_instead_of_returning_a_wrong_number():
    big = PK.encrypt(np.array([PK.max_int // 2], dtype=object))
    with pytest.raises(OverflowError, match="plaintext band"):
        SK.decrypt(big * 3)
    with pytest.raises(OverflowError, match="too large"):
        PK.encrypt(np.array([PK.max_int + 1], dtype=object))
    with pytest.raises(OverflowError, match="plaintext band"):
        SK.decrypt(big + np.array([PK.max_int], dtype=object))
    with pytest.raises(OverflowError, match="plaintext band"):
        SK.decrypt(-big * 3)


def test_integer_results_beyond_int64_come_back_exact():
    ea = PK.encrypt(np.array([np.iinfo(np.int64).max]))
    got = SK.decrypt(ea * 4)
    assert got.tolist() == [4 * int(np.iinfo(np.int64).max)]


def test_unsupported_values_and_operations():
    with pytest.raises(TypeError, match="dtype"):
        PK.encrypt(np.array([1 + 2j]))
    with pytest.raises(TypeError, match="dtype"):
        EA + "text"
    with pytest.raises(ZeroDivisionError):
        EA / 0.0
    with pytest.raises(ValueError, match="size mismatch"):
        EA @ np.ones((3, 2))
    with pytest.raises(ValueError, match="precision"):
        PK.encrypt(np.ones(2), precision=0)
    with pytest.raises(TypeError, match="truth value"):
        bool(EA)
    with pytest.raises(TypeError, match="decrypt it first"):
        np.asarray(EA)
    with pytest.raises(TypeError):
        np.sort(EA)  # no encrypted comparison exists
    with pytest.raises(TypeError):
        np.sum(EA, out=np.zeros(2))
    with pytest.raises(TypeError, match="index"):
        EA[EA]


def test_bad_keys():
    with pytest.raises(ValueError, match="odd modulus"):
        paillier.PublicKey(2**600)
    with pytest.raises(ValueError, match="odd modulus"):
        paillier.PublicKey(15)
    with pytest.raises(TypeError):
        paillier.PublicKey("123")
    with pytest.raises(ValueError, match="does not equal"):
        paillier.PrivateKey(PK, SK.p, SK.q + 2)
    with pytest.raises(ValueError, match="at least"):
        paillier.keygen(64)
    with pytest.raises(TypeError):
        SK.decrypt(np.zeros(3))


def test_keygen_gives_exact_sizes_and_distinct_primes():
    pk, sk = paillier.keygen(1024)
    assert pk.n.bit_length() == 1024
    assert sk.p != sk.q and sk.p.bit_length() == sk.q.bit_length() == 512
    assert SK.decrypt(EA).shape == (2, 2)


def test_from_raw_checks_range():
    with pytest.raises(ValueError, match="not in"):
        paillier.EncryptedArray.from_raw(PK, [PK.nsquare])
    with pytest.raises(ValueError, match="not in"):
        paillier.EncryptedArray.from_raw(PK, [0])
    with pytest.raises(TypeError, match="not an int"):
        paillier.EncryptedArray.from_raw(PK, [1.5])


def test_bytes_roundtrip():
    blob = EA.to_bytes()
    back = paillier.EncryptedArray.from_bytes(blob, PK)
    assert back.shape == EA.shape and back.scale == EA.scale and back.dtype == EA.dtype
    np.testing.assert_array_equal(SK.decrypt(back), SK.decrypt(EA))
    zero_d = PK.encrypt(np.array(7))
    assert SK.decrypt(paillier.EncryptedArray.from_bytes(zero_d.to_bytes(), PK)) == 7


def test_every_truncation_is_a_value_error():
    blob = EA.to_bytes()
    for cut in list(range(0, 120)) + list(range(len(blob) - 40, len(blob))):
        with pytest.raises(ValueError):
            paillier.EncryptedArray.from_bytes(blob[:cut], PK)
    with pytest.raises(ValueError):
        paillier.EncryptedArray.from_bytes(blob + b"\0", PK)


def test_corruption_wrong_key_and_bad_fields():
    blob = EA.to_bytes()
    for pos in (0, 9, 20, 60, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(ValueError):
            paillier.EncryptedArray.from_bytes(bytes(bad), PK)
    with pytest.raises(ValueError, match="different public key"):
        paillier.EncryptedArray.from_bytes(blob, OTHER_PK)
    with pytest.raises(TypeError):
        paillier.EncryptedArray.from_bytes("text", PK)


def _resealed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_well_formed_blob_with_out_of_range_ciphertext_is_refused():
    body = bytearray(EA.to_bytes()[:-32])
    start = len(body) - 8 * PK.limbs
    body[start:] = PK.nsquare.to_bytes(8 * PK.limbs, "little")  # c = n^2 is not a residue
    with pytest.raises(ValueError, match=r"not in \[1, n\^2\)"):
        paillier.EncryptedArray.from_bytes(_resealed(bytes(body)), PK)
    body[start:] = bytes(8 * PK.limbs)
    with pytest.raises(ValueError, match=r"not in \[1, n\^2\)"):
        paillier.EncryptedArray.from_bytes(_resealed(bytes(body)), PK)


def test_version_and_dtype_fields_are_checked():
    header = serialization._HEADER
    # an empty array: changing its limb count keeps the announced length right
    body = bytearray(PK.encrypt(np.zeros(0)).to_bytes()[:-32])
    fields = list(header.unpack_from(body))
    for index, value, message in [(1, 3, "version"), (2, 9, "dtype"), (5, 3, "limb count")]:
        changed = list(fields)
        changed[index] = value
        patched = bytearray(body)
        patched[: header.size] = header.pack(*changed)
        with pytest.raises(ValueError, match=message):
            paillier.EncryptedArray.from_bytes(_resealed(bytes(patched)), PK)
    ints = PK.encrypt(np.array([1, 2]))
    body = bytearray(ints.to_bytes()[:-32])
    fields = list(header.unpack_from(body))
    fields[4] = 3  # an integer array with a scale
    body[: header.size] = header.pack(*fields)
    with pytest.raises(ValueError, match="scale 0"):
        paillier.EncryptedArray.from_bytes(_resealed(bytes(body)), PK)
    assert struct.calcsize("<8sHBBqI32s") == header.size


def test_a_foreign_h_s_is_caught_by_the_private_key():
    forged = paillier.PublicKey(PK.n, h_s=PK.g)  # g is not an n-th residue
    with pytest.raises(ValueError, match="n-th residue"):
        paillier.PrivateKey(forged, SK.p, SK.q)
    paillier.PrivateKey(paillier.PublicKey(PK.n, h_s=PK.h_s), SK.p, SK.q)  # the real one is fine
