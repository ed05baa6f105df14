"""Paillier encryption over NumPy-shaped arrays.

    pk, sk = keygen(bits=2048)
    ea = pk.encrypt(np.array([[1.5, -2.25], [3.0, 4.0]]))
    sk.decrypt(ea @ w + 1.0)

Ciphertexts are python-paillier compatible (g = n + 1, negative values as n - |m|).
"""

from accel.paillier.array import EncryptedArray
from accel.paillier.keys import PrivateKey, PublicKey, keygen

__all__ = ["EncryptedArray", "PrivateKey", "PublicKey", "keygen"]
