"""Paillier encryption over NumPy-shaped arrays.

    pk, sk = keygen(bits=2048)
    ea = pk.encrypt(np.array([[1.5, -2.25], [3.0, 4.0]]))
    sk.decrypt(ea @ w + 1.0)

Ciphertexts are python-paillier compatible (g = n + 1, negative values as n - |m|). Every
array carries a bound on its plaintext magnitudes: an operation whose result could wrap modulo
n raises ``OverflowError`` instead of producing a wrong number. ``precision(bits)`` /
``set_precision(bits)`` shorten plaintext float multipliers, ``sk.refresh(ea)`` resets a grown
array's scale. ``masking.mask`` / ``sk.decrypt_mantissas`` / ``masking.unmask`` let the key
holder decrypt for another party without learning the values; ``grouping.group_sums`` and
``grouping.pack`` make encrypted histograms and pack several values into one ciphertext.
"""

from accel.paillier import grouping, masking
from accel.paillier.array import EncryptedArray
from accel.paillier.encoding import operand_precision, precision, set_precision
from accel.paillier.keys import PrivateKey, PublicKey, keygen

__all__ = ["EncryptedArray", "PrivateKey", "PublicKey", "grouping", "keygen", "masking",
           "operand_precision", "precision", "set_precision"]
