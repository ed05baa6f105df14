"""``python -m accel.demo``: a short tour of encrypted arrays, checked against NumPy."""

from __future__ import annotations

import sys
import time

import numpy as np

from accel import backends, paillier


def _show(label: str, got: np.ndarray, want: np.ndarray) -> bool:
    ok = bool(np.allclose(got, want, rtol=1e-9, atol=1e-9))
    text = np.array2string(np.asarray(got), precision=4, suppress_small=True)
    print(f"  {label:30} {text.replace(chr(10), ' '):44} {'ok' if ok else 'MISMATCH'}")
    return ok


def main(bits: int = 2048) -> int:
    t0 = time.perf_counter()
    pk, sk = paillier.keygen(bits)
    print(f"Paillier key: {pk.n.bit_length()} bits, generated in {time.perf_counter() - t0:.2f} s;"
          f" backend {backends.resolve().name}")

    x = np.array([[1.5, -2.25], [3.0, 4.0]])
    w = np.array([[0.5, -1.0], [2.0, 0.25]])
    t0 = time.perf_counter()
    ea = pk.encrypt(x)
    print(f"encrypted x = {x.tolist()} -> {ea!r} in {time.perf_counter() - t0:.3f} s "
          "(the first call also builds the fixed-base table)")
    print("every result below is computed on ciphertexts, then decrypted:")
    checks = [
        ("x + x", ea + ea, x + x),
        ("x + 1.0", ea + 1.0, x + 1.0),
        ("2 - x", 2 - ea, 2 - x),
        ("x * w (elementwise)", ea * w, x * w),
        ("x @ w", ea @ w, x @ w),
        ("w @ x", w @ ea, w @ x),
        ("x.sum(axis=0)", ea.sum(axis=0), x.sum(axis=0)),
        ("np.mean(x)", np.mean(ea), np.mean(x)),
        ("x.T / 4", ea.T / 4.0, x.T / 4.0),
        ("np.concatenate([x, x])[:, 1]", np.concatenate([ea, ea])[:, 1],
         np.concatenate([x, x])[:, 1]),
    ]
    ok = all([_show(label, sk.decrypt(enc), want) for label, enc, want in checks])

    counts = np.arange(-3, 5)
    ei = pk.encrypt(counts)
    ok &= _show("integers stay exact: 3*v-1", sk.decrypt(3 * ei - 1), 3 * counts - 1)
    blob = ea.to_bytes()
    back = paillier.EncryptedArray.from_bytes(blob, pk)
    ok &= _show(f"to_bytes / from_bytes ({len(blob)} B)", sk.decrypt(back), x)
    try:
        ea * ea
    except TypeError as exc:
        print(f"  x * x on ciphertexts -> TypeError: {exc}")
    else:
        print("  x * x on ciphertexts did not raise TypeError")
        ok = False
    print("all results match NumPy" if ok else "SOME RESULTS DO NOT MATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
