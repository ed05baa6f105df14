"""Ciphertexts are interchangeable with python-paillier (phe) for the same key, both ways."""

from __future__ import annotations

import numpy as np
import phe
import pytest

from accel import paillier

PHE_PUB, PHE_PRIV = phe.generate_paillier_keypair(n_length=512)
PK = paillier.PublicKey(PHE_PUB.n)
SK = paillier.PrivateKey(PK, PHE_PRIV.p, PHE_PRIV.q)
VALUES = [0, 1, -1, 42, -12345678901, 2**62, -(2**63)]


def test_imported_keys_expose_python_ints():
    assert isinstance(PK.n, int) and PK.n == PHE_PUB.n
    assert isinstance(SK.p, int) and SK.p * SK.q == PHE_PUB.n


@pytest.mark.parametrize("encrypt", ["public", "private", "full"])
def test_our_integer_ciphertexts_decrypt_with_phe(encrypt):
    x = np.array(VALUES)
    ea = {"public": lambda: PK.encrypt(x), "private": lambda: SK.encrypt(x),
          "full": lambda: PK.encrypt(x, full_randomness=True)}[encrypt]()
    got = [PHE_PRIV.decrypt(phe.EncryptedNumber(PHE_PUB, int(c), exponent=0)) for c in ea.raw()]
    assert got == VALUES


def test_big_python_ints_interoperate():
    big = [PK.max_int, -PK.max_int, 3**200]
    ea = PK.encrypt(np.array(big, dtype=object))
    got = [PHE_PRIV.decrypt(phe.EncryptedNumber(PHE_PUB, int(c), exponent=0)) for c in ea.raw()]
    assert got == big
    assert SK.decrypt(ea).tolist() == big


def test_phe_ciphertexts_decrypt_here():
    cts = [PHE_PUB.encrypt(v).ciphertext() for v in VALUES]
    ea = paillier.EncryptedArray.from_raw(PK, cts, scale=0)
    got = SK.decrypt(ea)
    assert got.dtype == np.int64
    assert got.tolist() == VALUES


def test_phe_float_ciphertexts_map_to_binary_scales():
    # phe's exponent counts powers of 16, ours powers of 2: scale = -4 * exponent
    enc = [PHE_PUB.encrypt(v) for v in (1.5, -2.25, 1e-3)]
    exponent = min(e.exponent for e in enc)
    cts = [e.decrease_exponent_to(exponent).ciphertext() for e in enc]
    ea = paillier.EncryptedArray.from_raw(PK, cts, scale=-4 * exponent)
    np.testing.assert_allclose(SK.decrypt(ea), [1.5, -2.25, 1e-3], rtol=1e-12)


def test_homomorphic_results_agree_across_libraries():
    x = np.array([5, -7, 11])
    ea = PK.encrypt(x)
    mine = (ea * np.array([3, -2, 0]) + 10).raw()
    theirs = [phe.EncryptedNumber(PHE_PUB, int(c), exponent=0) for c in ea.raw()]
    expect = [theirs[0] * 3 + 10, theirs[1] * -2 + 10, theirs[2] * 0 + 10]
    assert [PHE_PRIV.decrypt(phe.EncryptedNumber(PHE_PUB, int(c), 0)) for c in mine] == \
        [PHE_PRIV.decrypt(e) for e in expect]
    # a sum mixing ciphertexts made by both libraries
    mixed = paillier.EncryptedArray.from_raw(
        PK, [int(ea.raw()[0]), PHE_PUB.encrypt(100).ciphertext()], bound=2**63)
    assert SK.decrypt(mixed.sum()) == 105


def test_phe_decrypts_after_matmul_with_negative_weights():
    v = np.array([2, -3, 4])
    w = np.array([[1, -1], [-2, 5], [3, 0]])
    out = PK.encrypt(v) @ w
    got = [PHE_PRIV.decrypt(phe.EncryptedNumber(PHE_PUB, int(c), 0)) for c in out.raw()]
    assert got == (v @ w).tolist()
