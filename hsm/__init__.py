"""Key custody in a PKCS#11 hardware security module."""
