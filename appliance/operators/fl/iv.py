"""Information value (IV) and weight of evidence (WOE) of every feature, across a vertical
split (docs/fl.md): the guest holds the binary label, each host holds features of the same
people. A host learns its own features' IV without seeing a label.

1. Alignment: every party orders its rows by the key column and sends SHA-256 of the ordered
   keys; they must be equal (otherwise: align the data sets first, e.g. with psi's join).
2. The guest encrypts the label (0/1) under a fresh Paillier key through ``accel`` and sends
   the key and the ciphertexts to each host.
3. A host bins each of its features (equal-frequency, on its own values), sums the encrypted
   labels per bin (one ciphertext-by-0/1-matrix product per feature, ``accel``), adds a
   random mask to each sum and sends them; the guest decrypts the masked sums and returns
   them; the host removes its masks and has each bin's event count.
4. The host computes WOE and IV from the counts; it sends the IV per feature (not the bins or
   the counts) to the guest, which computes its own features' IV in the clear.

Who learns what (semi-honest): the guest learns each host feature's IV; a host learns, per
bin of its own features, how many rows have the label 1 (what IV is made of), and the total.
Masks are uniform below 2^52, so a count below 2^20 is hidden up to a statistical distance
of 2^-32.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from appliance.operators.base import OperatorError, PartyContext
from appliance.operators.fl import vertical

MASK_BITS = 52
#: WOE of a bin with no events or no non-events: 0.5 is added to both counts (the usual
#: adjustment), so that every bin's WOE is finite
SMOOTHING = 0.5


def bin_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """Equal-frequency edges (the inner ones); ties collapse, so a bin is never empty."""
    qs = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def woe_iv(bin_of: np.ndarray, nbins: int, events: np.ndarray,
           y_total: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Per-bin WOE and the feature's IV from per-bin event counts (``events``) and the rows
    per bin (from ``bin_of``); ``y_total`` = (events, non-events) over all rows."""
    rows = np.bincount(bin_of, minlength=nbins).astype(np.float64)
    ev = events.astype(np.float64)
    non = rows - ev
    total_ev, total_non = y_total
    p_ev = (ev + SMOOTHING) / (total_ev + SMOOTHING * nbins)
    p_non = (non + SMOOTHING) / (total_non + SMOOTHING * nbins)
    woe = np.log(p_ev / p_non)
    return woe, float(((p_ev - p_non) * woe).sum())


def binned(x: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    edges = bin_edges(x, bins)
    return np.searchsorted(edges, x, side="right"), len(edges) + 1


def local_iv(features: dict[str, np.ndarray], y: np.ndarray, bins: int) -> dict[str, float]:
    """IV of each feature with the label at hand (the guest's own; and the pooled reference)."""
    totals = (int(y.sum()), int(len(y) - y.sum()))
    out = {}
    for name, x in features.items():
        bin_of, nb = binned(x, bins)
        out[name] = woe_iv(bin_of, nb, np.bincount(bin_of, weights=y, minlength=nb),
                           totals)[1]
    return out


def run(ctx: PartyContext) -> dict[str, Any]:
    from accel import paillier

    started = time.perf_counter()
    params = ctx.params
    key, label = params.get("key"), params.get("label")
    try:
        bins = int(params.get("bins", 10))
    except (TypeError, ValueError):
        raise OperatorError("iv: bins is a whole number") from None
    if not isinstance(key, str) or not key or not 2 <= bins <= 100:
        raise OperatorError("iv needs key=ID_COLUMN (the column that aligns the rows) and "
                            "bins in 2..100")
    roles = vertical.roles_of(ctx, "iv")
    guest, hosts = roles.guest, roles.hosts
    me_guest = ctx.node_id == guest
    if me_guest and (not isinstance(label, str) or not label):
        raise OperatorError("iv needs label=COLUMN at the guest (the binary label)")
    rows, problem = None, None
    try:
        rows = vertical.load(ctx, "iv", key, label if me_guest else None)
    except OperatorError as exc:
        problem = str(exc)
    # 1. alignment (a party's problem stops every party at once)
    vertical.check_alignment(ctx, roles, rows, "iv", problem)
    assert rows is not None
    features, y = rows.features, rows.y

    if not me_guest:
        # 2. the encrypted label
        setup = vertical.recv(ctx, guest, "iv/setup")
        pk = vertical.public_key(setup, guest)
        n = rows.n
        enc_y = vertical.recv_encrypted(ctx, guest, "labels", pk, n)
        try:
            totals = (int(setup["events"]), int(setup["nonevents"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise OperatorError(f"party {guest} sent a malformed iv setup ({exc})") from None
        if sum(totals) != n:
            raise OperatorError(f"party {guest} sent label totals for {sum(totals)} rows, "
                                f"not {n}")
        # 3. encrypted event counts per bin, masked
        t = time.perf_counter()
        names = list(features)
        layout: list[tuple[str, np.ndarray, int]] = []
        sums = []
        for name in names:
            bin_of, nb = binned(features[name], bins)
            onehot = np.zeros((n, nb))
            onehot[np.arange(n), bin_of] = 1.0
            sums.append(enc_y @ onehot)
            layout.append((name, bin_of, nb))
        total = sum(nb for _, _, nb in layout)
        masks = (np.frombuffer(os.urandom(8 * total), dtype=np.uint64)
                 >> np.uint64(64 - MASK_BITS)).astype(np.float64)
        masked = np.concatenate(sums) + masks if sums else None
        he = time.perf_counter() - t
        if masked is None:
            vertical.send(ctx, guest, {"t": "iv/none"})
            return {"iv": {}, "rows": n, "he_seconds": round(he, 3)}
        vertical.send(ctx, guest, {"t": "iv/masked", "bins": total})
        vertical.send_bytes(ctx, guest, masked.to_bytes())
        opened = vertical.recv(ctx, guest, "iv/opened").get("v")
        if not (isinstance(opened, list) and len(opened) == total):
            raise OperatorError(f"party {guest} sent malformed opened counts")
        counts = np.array(opened, dtype=np.float64) - masks
        events = np.round(counts)
        if np.abs(counts - events).max(initial=0) > 1e-3 or (events < 0).any():
            raise OperatorError(f"party {guest} returned counts that are not whole numbers")
        out, woe, at = {}, {}, 0
        for name, bin_of, nb in layout:
            w, iv = woe_iv(bin_of, nb, events[at: at + nb], totals)
            out[name], woe[name] = iv, w.tolist()
            at += nb
        # 4. the IV per feature to the guest (not the bins, not the counts)
        vertical.send(ctx, guest, {"t": "iv/result", "iv": out})
        return {"iv": out, "woe": woe, "rows": n, "he_seconds": round(he, 3),
                "seconds": round(time.perf_counter() - started, 3)}

    assert y is not None
    t = time.perf_counter()
    pk, sk = paillier.keygen(vertical.PAILLIER_BITS)
    blob = pk.encrypt(y).to_bytes()
    he = time.perf_counter() - t
    events = int(y.sum())
    for h in hosts:
        vertical.send(ctx, h, {"t": "iv/setup", "n": str(pk.n), "events": events,
                              "nonevents": len(y) - events})
        vertical.send_bytes(ctx, h, blob)
    result: dict[str, dict[str, float]] = {ctx.node_id: local_iv(features, y, bins)}
    for h in hosts:
        msg = ctx.sessions[h].recv(timeout=ctx.timeout)
        if isinstance(msg, dict) and msg.get("t") == "iv/none":
            result[h] = {}
            continue
        if not (isinstance(msg, dict) and msg.get("t") == "iv/masked"
                and isinstance(msg.get("bins"), int) and 0 < msg["bins"] <= 100_000):
            raise OperatorError(f"party {h} sent a malformed iv/masked")
        masked = vertical.recv_encrypted(ctx, h, "masked counts", pk, msg["bins"])
        t = time.perf_counter()
        opened = np.asarray(sk.decrypt(masked), dtype=np.float64)
        he += time.perf_counter() - t
        vertical.send(ctx, h, {"t": "iv/opened", "v": opened.tolist()})
        ivs = vertical.recv(ctx, h, "iv/result").get("iv")
        if not (isinstance(ivs, dict) and all(
                isinstance(k, str) and isinstance(v, float) and math.isfinite(v)
                for k, v in ivs.items())):
            raise OperatorError(f"party {h} sent a malformed iv/result")
        result[h] = ivs
    return {"iv": result, "rows": len(y), "he_seconds": round(he, 3),
            "seconds": round(time.perf_counter() - started, 3)}
