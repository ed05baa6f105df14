"""Hetero SecureBoost (Cheng et al. 2019): gradient-boosted trees over a vertical split. The
guest holds the binary label and some features, each host other features of the same people;
docs/fl.md says who learns what.

Per tree:
1. The guest computes each training row's gradient and hessian of the logistic loss, packs
   ``(g, h, 1)`` into one integer (``g`` offset to be non-negative, each field with room
   for a sum over every row), encrypts them under its Paillier key (``accel``) and sends them
   to every host.
2. Level by level, the guest tells the hosts which rows are in which open node. A host bins
   each feature on its own values (equal-frequency, ``bins``), sums the encrypted packed
   values per bin of every feature and node (``accel.paillier.grouping.group_sums``), takes
   the running sums (the left side of each candidate split), packs about twenty of them into
   one ciphertext and sends them to the guest.
3. The guest decrypts, unpacks, and finds the best split of each node over its own features
   (in the clear) and the hosts' candidates: gain = ``G_L^2/(H_L+l) + G_R^2/(H_R+l) -
   G^2/(H+l)``, with ``min_child_weight`` on both sides. A host whose candidate wins is told
   (node, feature, bin), keeps the threshold to itself, and returns which of the node's rows
   go left.
4. A node without a split of positive gain, or at ``depth``, is a leaf: weight
   ``-learning_rate * G / (H + l)``, known to the guest only.

Each party's model part: the guest's trees (its own splits with thresholds, the hosts' splits
as references, the leaves), a host's split records (feature, threshold) by reference.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from appliance.operators.base import OperatorError, PartyContext, canonical
from appliance.operators.fl import hetero_lr, iv, metrics, vertical

ALGORITHM = "hetero_secureboost"
VERSION = 1
DEFAULTS: dict[str, Any] = {
    "trees": 5, "depth": 3, "learning_rate": 0.3, "min_child_weight": 1.0, "bins": 32,
    "reg_lambda": 1.0, "gamma": 0.0, "validation": 0.2, "seed": 7,
}
MAX_TREES, MAX_DEPTH, MAX_FEATURES = 500, 10, 4096
#: fixed-point bits of a gradient and a hessian
GH_BITS = 40


def plan_of(params: dict[str, Any]) -> dict[str, Any]:
    plan = {**DEFAULTS, **{k: v for k, v in params.items() if v not in (None, "")}}
    try:
        for k in ("trees", "depth", "bins", "seed"):
            plan[k] = int(plan[k])
        for k in ("learning_rate", "min_child_weight", "reg_lambda", "gamma", "validation"):
            plan[k] = float(plan[k])
    except (TypeError, ValueError) as exc:
        raise OperatorError(f"train: a numeric parameter is not a number ({exc})") from None
    if not 1 <= plan["trees"] <= MAX_TREES or not 1 <= plan["depth"] <= MAX_DEPTH:
        raise OperatorError(f"train: trees must be 1..{MAX_TREES} and depth 1..{MAX_DEPTH}")
    if not 2 <= plan["bins"] <= 256:
        raise OperatorError("train: bins must be 2..256")
    if plan["learning_rate"] <= 0 or plan["reg_lambda"] < 0 or plan["min_child_weight"] < 0 \
            or plan["gamma"] < 0:
        raise OperatorError("train: learning_rate must be positive; reg_lambda, "
                            "min_child_weight and gamma >= 0")
    if not 0 <= plan["validation"] < 1:
        raise OperatorError("train: validation is a fraction in [0, 1)")
    if not isinstance(plan.get("key"), str) or not plan["key"]:
        raise OperatorError("train: hetero_secureboost needs key=ID_COLUMN (the column that "
                            "aligns the parties' rows)")
    return plan


def digest(plan: dict[str, Any]) -> str:
    """What must be equal at every party (a resumed job may ask for more trees)."""
    fixed = {k: v for k, v in plan.items() if k not in ("trees", "resume")}
    return hashlib.sha256(canonical({"v": VERSION, **fixed})).hexdigest()


class Binned:
    """A party's features binned on its training rows: bin of every row, the thresholds."""

    def __init__(self, rows: vertical.Rows, train: np.ndarray, bins: int) -> None:
        self.names = list(rows.features)
        self.x = rows.matrix(self.names)
        self.edges: list[np.ndarray] = []
        cols = []
        for j in range(len(self.names)):
            v = self.x[train, j]  # never empty: run() refuses a job without training rows
            edges = iv.bin_edges(v, bins)
            # an edge equal to the minimum would leave its left side empty
            edges = edges[edges > v.min()]
            self.edges.append(edges)
            cols.append(np.searchsorted(edges, self.x[:, j], side="right"))
        self.bin_of = np.column_stack(cols) if cols else np.zeros((len(self.x), 0), int)

    def width(self, j: int) -> int:
        return len(self.edges[j]) + 1

    def goes_left(self, j: int, b: int, rows: np.ndarray) -> np.ndarray:
        """Split after bin ``b`` of feature ``j``: left when the value is below edge ``b``."""
        return self.x[rows, j] < self.edges[j][b]


def _layout(n: int) -> tuple[int, int, int]:
    """(bits of the count field, of the hessian field, of the gradient field) for sums over
    at most ``n`` rows."""
    cb = max(n, 1).bit_length() + 1
    return cb, GH_BITS - 1 + cb, GH_BITS + 1 + cb


def _pack_gh(g: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    cb, hb, _ = _layout(n)
    gi = np.rint((g + 1.0) * 2**GH_BITS).astype(np.int64)
    hi = np.rint(h * 2**GH_BITS).astype(np.int64)
    out = np.empty(len(g), dtype=object)
    out[:] = [(int(a) << (hb + cb)) | (int(b) << cb) | 1 for a, b in zip(gi, hi, strict=True)]
    return out


def _unpack_gh(v: int, fields: tuple[int, int, int]) -> tuple[float, float, int]:
    """(G, H, count) of a packed sum, ``fields`` as ``_layout`` gives them."""
    cb, hb, _ = fields
    count = v & ((1 << cb) - 1)
    hsum = (v >> cb) & ((1 << hb) - 1)
    gsum = v >> (hb + cb)
    return gsum / 2**GH_BITS - count, hsum / 2**GH_BITS, count


def _gain(gl: np.ndarray, hl: np.ndarray, gt: float, ht: float, lam: float) -> np.ndarray:
    gr, hr = gt - gl, ht - hl
    return gl * gl / (hl + lam) + gr * gr / (hr + lam) - gt * gt / (ht + lam)


def run(ctx: PartyContext) -> dict[str, Any]:
    started = time.perf_counter()
    plan = plan_of(ctx.params)
    roles = vertical.roles_of(ctx, "hetero_secureboost")
    if roles.arbiter is not None:
        raise OperatorError("hetero_secureboost needs no arbiter: the guest holds the key")
    guest = ctx.node_id == roles.guest
    if guest and (not isinstance(plan.get("label"), str) or not plan["label"]):
        raise OperatorError("train: hetero_secureboost needs label=COLUMN at the guest")
    rows, binned, problem = None, None, None
    train = val = np.zeros(0, dtype=int)
    try:
        rows = vertical.load(ctx, "train", plan["key"], plan["label"] if guest else None)
        if len(rows.features) > MAX_FEATURES:
            raise OperatorError(f"train: {len(rows.features)} features at {ctx.node_id} "
                                f"(at most {MAX_FEATURES})")
        if not guest and not rows.features:
            raise OperatorError(f"train: party {ctx.node_id} has no numeric feature columns")
        train, val = hetero_lr.split(rows.n, plan["validation"], plan["seed"])
        if len(train) == 0:
            raise OperatorError("train: no training rows")
        binned = Binned(rows, train, plan["bins"])
    except OperatorError as exc:
        problem = str(exc)
    vertical.check_alignment(ctx, roles, rows, "sb", problem)
    assert rows is not None and binned is not None
    state = vertical.resume(ctx, roles, plan.get("resume"), digest(plan), "trees", "sb")
    if guest:
        return _guest(ctx, plan, roles, rows, binned, train, val, started, state)
    return _host(ctx, plan, roles, rows, binned, train, val, started, state)


def _guest(ctx: PartyContext, plan: dict[str, Any], roles: vertical.Roles, rows: vertical.Rows,
           binned: Binned, train: np.ndarray, val: np.ndarray, started: float,
           state: dict[str, Any]) -> dict[str, Any]:
    from accel import paillier
    from accel.paillier import grouping

    y = rows.y
    assert y is not None
    hosts, lam, mcw = roles.hosts, plan["reg_lambda"], plan["min_child_weight"]
    he = 0.0
    t = time.perf_counter()
    pk, sk = paillier.keygen(vertical.PAILLIER_BITS)
    he += time.perf_counter() - t
    for h in hosts:
        vertical.send(ctx, h, {"t": "sb/key", "n": str(pk.n)})
    base = float(np.clip(y[train].mean(), 1e-6, 1 - 1e-6))
    init = float(np.log(base / (1 - base)))
    f_train = np.full(len(train), init)
    f_val = np.full(len(val), init)
    trees: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    splits_by: dict[str, int] = {}
    if state:  # resumed: the trees so far and the scores they give
        trees, history, splits_by = state["model_trees"], state["history"], state["importance"]
        f_train, f_val = np.array(state["f_train"]), np.array(state["f_val"])
        if f_train.shape != (len(train),) or f_val.shape != (len(val),):
            raise OperatorError("train: cannot resume: the checkpoint's rows do not fit")
    n = len(train)
    fields = _layout(n)
    train_bins = binned.bin_of[train]  # once: the guest's own candidates read it every level

    def leaf(gsum: float, hsum: float) -> float:
        return float(-plan["learning_rate"] * gsum / (hsum + lam))

    for tree_no in range(len(trees), plan["trees"]):
        p = metrics.sigmoid(f_train)
        g, h = p - y[train], p * (1 - p)
        t = time.perf_counter()
        blob = pk.encrypt(_pack_gh(g, h, n)).to_bytes()
        he += time.perf_counter() - t
        for hst in hosts:
            vertical.send(ctx, hst, {"t": "sb/tree", "tree": tree_no})
            vertical.send_bytes(ctx, hst, blob)
        nodes: dict[int, dict[str, Any]] = {}
        node_of = np.zeros(n, dtype=np.int64)  # heap ids: children of k are 2k+1, 2k+2
        open_nodes = [0]
        for level in range(plan["depth"] + 1):
            last = level == plan["depth"] or not open_nodes
            for hst in hosts:
                vertical.send(ctx, hst, {"t": "sb/level", "nodes": [] if last else open_nodes})
                if not last:
                    vertical.send_bytes(ctx, hst,
                        np.where(np.isin(node_of, open_nodes), node_of, -1)
                        .astype("<i4").tobytes())
            if last:
                break
            best: dict[int, tuple[float, Any]] = {}
            # each open node's rows, once a level (the splits below change only children)
            members = {k: np.flatnonzero(node_of == k) for k in open_nodes}
            totals = {k: (float(g[r].sum()), float(h[r].sum())) for k, r in members.items()}

            def consider(k: int, gl: np.ndarray, hl: np.ndarray, who: str, j: int,
                         best: dict[int, Any] = best, totals: dict[int, Any] = totals) -> None:
                """Keep the best split of node k so far: feature j of ``who`` at the bin of
                the highest gain with min_child_weight on both sides."""
                gt, ht = totals[k]
                ok = (hl >= mcw) & (ht - hl >= mcw)
                if not ok.any():
                    return
                gains = np.where(ok, _gain(gl, hl, gt, ht, lam), -np.inf)
                at = int(np.argmax(gains))
                if gains[at] > best.get(k, (0.0, None))[0]:
                    best[k] = (float(gains[at]), (who, j, at))

            for k, r in members.items():
                for j in range(len(binned.names)):
                    w = binned.width(j)
                    if w < 2:
                        continue
                    b = train_bins[r, j]
                    consider(k, np.cumsum(np.bincount(b, weights=g[r], minlength=w))[:-1],
                             np.cumsum(np.bincount(b, weights=h[r], minlength=w))[:-1],
                             ctx.node_id, j)
            for hst in hosts:
                meta = vertical.recv(ctx, hst, "sb/hist")
                widths = meta.get("widths")
                if not (isinstance(widths, list) and len(widths) <= MAX_FEATURES
                        and all(isinstance(v, int) and 0 <= v <= 256 for v in widths)):
                    raise OperatorError(f"party {hst} sent a malformed sb/hist")
                cand = sum(max(v - 1, 0) for v in widths)
                count = cand * len(open_nodes)
                if not count:
                    continue
                t = time.perf_counter()
                try:
                    packed = paillier.EncryptedArray.from_bytes(
                        vertical.recv(ctx, hst, "bytes:histograms"), pk)
                    layout = grouping.Packing(count, int(meta["per"]), int(meta["slot"]))
                    values = grouping.unpack(sk.decrypt_mantissas(packed), layout)
                except (ValueError, KeyError, TypeError, OverflowError) as exc:
                    raise OperatorError(f"party {hst} sent malformed histograms "
                                        f"({exc})") from None
                he += time.perf_counter() - t
                sums = np.array([_unpack_gh(v, fields) for v in values])
                at = 0
                for k in open_nodes:
                    for j, wdt in enumerate(widths):
                        if wdt < 2:
                            continue
                        consider(k, sums[at: at + wdt - 1, 0], sums[at: at + wdt - 1, 1], hst, j)
                        at += wdt - 1
            # the splits: each host hears only its own winners and answers with the sides
            chosen = {k: v[1] for k, v in best.items() if v[0] * 0.5 > plan["gamma"]}
            for hst in hosts:
                mine = {str(k): [j, b] for k, (who, j, b) in chosen.items() if who == hst}
                vertical.send(ctx, hst, {"t": "sb/splits", "splits": mine})
            left_of: dict[int, np.ndarray] = {}
            for k, (who, j, b) in chosen.items():
                if who == ctx.node_id:
                    left_of[k] = binned.goes_left(j, b, train[members[k]])
                    nodes[k] = {"party": who, "feature": binned.names[j],
                                "threshold": float(binned.edges[j][b])}
                else:
                    nodes[k] = {"party": who, "record": f"{tree_no}:{k}"}
                # a host's feature is known here by its position only
                name = binned.names[j] if who == ctx.node_id else f"{who}#{j}"
                splits_by[name] = splits_by.get(name, 0) + 1
            for hst in hosts:
                sides = vertical.recv(ctx, hst, "sb/sides")
                for key, bits in (sides.get("left") or {}).items():
                    k = int(key)
                    if chosen.get(k, ("",))[0] != hst:
                        raise OperatorError(f"party {hst} answered for a node it does not "
                                            "split")
                    left_of[k] = bits_of(bits, len(members[k]), hst)
            for k in open_nodes:
                if k not in chosen:
                    nodes[k] = {"leaf": leaf(*totals[k])}
                    continue
                r = members[k]
                node_of[r] = np.where(left_of[k], 2 * k + 1, 2 * k + 2)
            open_nodes = sorted(c for k in chosen for c in (2 * k + 1, 2 * k + 2))
        for k in open_nodes:  # the last level's nodes are leaves
            r = np.flatnonzero(node_of == k)
            nodes[k] = {"leaf": leaf(float(g[r].sum()), float(h[r].sum()))}
        ids, where = np.unique(node_of, return_inverse=True)
        f_train += np.array([nodes[int(k)]["leaf"] for k in ids])[where]
        tree = {"nodes": {str(k): v for k, v in sorted(nodes.items())}}
        trees.append(tree)
        row: dict[str, Any] = {"tree": tree_no + 1, "leaves": sum(
            1 for v in nodes.values() if "leaf" in v)}
        if len(val):
            decisions = _host_decisions(ctx, hosts, tree, len(val))
            f_val += route(tree, lambda k, rr, t=tree: _decide_own(binned, t, k, val[rr]),
                           decisions, len(val))
            row.update(metrics.summary(y[val], metrics.sigmoid(f_val)))
        history.append(row)
        for hst in hosts:
            vertical.send(ctx, hst, {"t": "sb/done", "row": row})
        vertical.store(ctx, "checkpoint.json", {
            "digest": digest(plan), "trees": len(trees), "model_trees": trees,
            "f_train": f_train.tolist(), "f_val": f_val.tolist(), "history": history,
            "importance": splits_by})
        ctx.progress(100 * (tree_no + 1) / plan["trees"], f"tree {tree_no + 1} of "
                     f"{plan['trees']}" + (f": validation AUC {row['auc']:.4f}"
                                           if row.get("auc") else ""))
    for hst in hosts:
        vertical.send(ctx, hst, {"t": "sb/tree", "tree": None})
    model = {"algorithm": ALGORITHM, "role": "guest", "job": ctx.job_id, "key": plan["key"],
             "features": binned.names, "init": init, "trees": trees,
             "classes": rows.classes, "parties": dict(ctx.parties),
             "dataset": getattr(ctx.dataset, "name", None),
             "final": history[-1] if history else {}}
    sha = vertical.store(ctx, "model.json", model)
    return {"model": f"{ALGORITHM}-{ctx.job_id}", "algorithm": ALGORITHM,
            "trees": len(trees), "history": history, "final": model["final"],
            "importance": splits_by, "rows": rows.n, "train_rows": len(train),
            "validation_rows": len(val), "model_sha256": sha, "he_seconds": round(he, 3),
            "seconds": round(time.perf_counter() - started, 3)}


def _host(ctx: PartyContext, plan: dict[str, Any], roles: vertical.Roles, rows: vertical.Rows,
          binned: Binned, train: np.ndarray, val: np.ndarray, started: float,
          state: dict[str, Any]) -> dict[str, Any]:
    from accel.paillier import grouping

    guest = roles.guest
    pk = vertical.public_key(vertical.recv(ctx, guest, "sb/key"), guest)
    records: dict[str, dict[str, Any]] = dict(state.get("records", {}))
    he, n, trees = 0.0, len(train), int(state.get("trees", 0))
    widths = [binned.width(j) for j in range(len(binned.names))]
    cb, hb, gb = _layout(n)
    # the running sums' bound as accel tracks it: a node's rows times the bins, and one more
    # parent's bound per level where a sibling is a difference (at most depth + 1 terms)
    slot = (cb + hb + gb + 1 + max(widths, default=1).bit_length()
            + (plan["depth"] + 1).bit_length())
    history: list[dict[str, Any]] = list(state.get("history", []))
    while True:
        msg = vertical.recv(ctx, guest, "sb/tree")
        if msg.get("tree") is None:
            break
        tree_no = int(msg["tree"])
        enc = vertical.recv_encrypted(ctx, guest, "gradients", pk, n)
        mine: dict[int, tuple[int, int]] = {}
        sums_of: dict[int, Any] = {}  # the last level's per-bin sums, by node
        while True:
            level = vertical.recv(ctx, guest, "sb/level")
            nodes = level.get("nodes")
            if not isinstance(nodes, list) or not nodes:
                break
            node_of = np.frombuffer(vertical.recv(ctx, guest, "bytes:node map"), "<i4")
            if node_of.shape != (n,):
                raise OperatorError(f"party {guest} sent a malformed node map")
            t = time.perf_counter()
            sums_of = _level_sums(enc, node_of, nodes, binned.bin_of[train], widths, sums_of)
            parts = [_candidates(sums_of[k], widths) for k in nodes if k in sums_of]
            if parts:
                flat = np.concatenate(parts)
                packed, layout = grouping.pack(flat, slot)
                vertical.send(ctx, guest, {"t": "sb/hist", "widths": widths,
                                          "per": layout.per, "slot": layout.slot_bits})
                vertical.send_bytes(ctx, guest, packed.to_bytes())
            else:
                vertical.send(ctx, guest, {"t": "sb/hist", "widths": widths, "per": 1,
                                          "slot": slot})
            he += time.perf_counter() - t
            splits = vertical.recv(ctx, guest, "sb/splits").get("splits") or {}
            left = {}
            for key, jb in splits.items():
                k = int(key)
                if not (isinstance(jb, list) and len(jb) == 2 and k in nodes
                        and 0 <= jb[0] < len(widths) and 0 <= jb[1] < widths[jb[0]] - 1):
                    raise OperatorError(f"party {guest} sent a malformed split")
                j, b = int(jb[0]), int(jb[1])
                mine[k] = (j, b)
                records[f"{tree_no}:{k}"] = {"feature": binned.names[j],
                                             "threshold": float(binned.edges[j][b])}
                r = np.flatnonzero(node_of == k)
                left[key] = pack_bits(binned.goes_left(j, b, train[r]))
            vertical.send(ctx, guest, {"t": "sb/sides", "left": left})
        if len(val):
            vertical.send(ctx, guest, {"t": "sb/val", "left": {
                f"{tree_no}:{k}": pack_bits(binned.goes_left(j, b, val))
                for k, (j, b) in mine.items()}})
        done = vertical.recv(ctx, guest, "sb/done")
        history.append(done.get("row") if isinstance(done.get("row"), dict) else {})
        trees += 1
        vertical.store(ctx, "checkpoint.json", {
            "digest": digest(plan), "trees": trees, "records": records, "history": history})
        ctx.progress(100 * trees / plan["trees"], f"tree {trees} of {plan['trees']}")
    model = {"algorithm": ALGORITHM, "role": "host", "job": ctx.job_id, "key": plan["key"],
             "features": binned.names, "records": records, "parties": dict(ctx.parties),
             "dataset": getattr(ctx.dataset, "name", None)}
    sha = vertical.store(ctx, "model.json", model)
    used: dict[str, int] = {}
    for rec in records.values():
        used[rec["feature"]] = used.get(rec["feature"], 0) + 1
    return {"model": f"{ALGORITHM}-{ctx.job_id}", "algorithm": ALGORITHM, "trees": trees,
            "history": history, "importance": used, "rows": rows.n, "model_sha256": sha,
            "he_seconds": round(he, 3), "seconds": round(time.perf_counter() - started, 3)}


#: ciphertexts gathered at once for the histograms (128 MiB of 2048-bit ones)
GATHER = 1 << 18


def _level_sums(enc: Any, node_of: np.ndarray, nodes: list[int], bins: np.ndarray,
                widths: list[int], parents: dict[int, Any]) -> dict[int, Any]:
    """Each open node's per-bin sums of every feature with a candidate split. Of two
    siblings whose parent's sums are known, only the smaller is summed; the other is the
    parent's minus it (histogram subtraction: about half the additions; exact, since every
    packed field of the parent is the sum of its children's)."""
    out: dict[int, Any] = {}
    rows = {k: np.flatnonzero(node_of == k) for k in nodes}
    for k in nodes:
        if k in out:
            continue
        sib = k + 1 if k % 2 == 1 else k - 1
        parent = (k - 1) // 2
        if k > 0 and sib in rows and parent in parents:
            small, large = (k, sib) if len(rows[k]) <= len(rows[sib]) else (sib, k)
            out[small] = _bin_sums(enc[rows[small]], bins[rows[small]], widths)
            if out[small] is not None:
                out[large] = parents[parent] - out[small]
        else:
            out[k] = _bin_sums(enc[rows[k]], bins[rows[k]], widths)
    return {k: v for k, v in out.items() if v is not None}


def _bin_sums(sub: Any, bins: np.ndarray, widths: list[int]) -> Any:
    """One node's per-bin sums, (features with a candidate, widest bins): features side by
    side in blocks, one group-sum call per block; None without a candidate feature."""
    from accel.paillier import grouping

    n = sub.size
    feats = [j for j, w in enumerate(widths) if w >= 2]
    if not feats:
        return None
    width = max(widths[j] for j in feats)
    block = max(1, GATHER // max(n, 1))
    out = []
    for at in range(0, len(feats), block):
        fs = feats[at: at + block]
        gathered = sub[np.tile(np.arange(n), len(fs))]
        groups = np.concatenate([i * width + bins[:, j] for i, j in enumerate(fs)]
                                ).astype(np.int64)
        out.append(grouping.group_sums(gathered, groups, len(fs) * width).reshape(
            len(fs), width))
    return np.concatenate(out) if len(out) > 1 else out[0]


def _candidates(sums: Any, widths: list[int]) -> Any:
    """The left side of every candidate split: running sums over the bins, the last bin of
    each feature left out (nothing to its right)."""
    feats = [j for j, w in enumerate(widths) if w >= 2]
    width = sums.shape[1]
    running = np.cumsum(sums, axis=1)
    keep = np.concatenate([i * width + np.arange(widths[j] - 1) for i, j in enumerate(feats)])
    return running.reshape(-1)[keep]


# -- routing rows through a tree ----------------------------------------------------------------

def pack_bits(mask: np.ndarray) -> str:
    return np.packbits(mask.astype(np.uint8)).tobytes().hex()


def bits_of(value: Any, count: int, peer: str) -> np.ndarray:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise OperatorError(f"party {peer} sent malformed split sides") from None
    if len(raw) != (count + 7) // 8:
        raise OperatorError(f"party {peer} sent {len(raw) * 8} split sides for {count} rows")
    return np.unpackbits(np.frombuffer(raw, np.uint8))[:count].astype(bool)


def _host_decisions(ctx: PartyContext, hosts: list[str], tree: dict[str, Any],
                    count: int) -> dict[str, np.ndarray]:
    """Every host split's side for every row being routed, by record."""
    wanted = {v["record"]: v["party"] for v in tree["nodes"].values() if "record" in v}
    out: dict[str, np.ndarray] = {}
    for h in hosts:
        left = vertical.recv(ctx, h, "sb/val").get("left") or {}
        for rec, bits in left.items():
            if wanted.get(rec) != h:
                raise OperatorError(f"party {h} sent sides for a split it does not hold")
            out[rec] = bits_of(bits, count, h)
    missing = [r for r in wanted if r not in out]
    if missing:
        raise OperatorError(f"the hosts sent no sides for split(s) {', '.join(missing[:5])}")
    return out


def _decide_own(binned: Binned, tree: dict[str, Any], k: str, rows: np.ndarray) -> np.ndarray:
    node = tree["nodes"][k]
    j = binned.names.index(node["feature"])
    return binned.x[rows, j] < node["threshold"]


def route(tree: dict[str, Any], own: Any, decisions: dict[str, np.ndarray],
          count: int) -> np.ndarray:
    """Each row's leaf weight. ``own(k, rows)``: the guest's own split's left mask for those
    rows; ``decisions``: each host split's left mask over all rows."""
    nodes = tree["nodes"]
    at = np.zeros(count, dtype=np.int64)
    out = np.zeros(count)
    todo = np.arange(count)
    while todo.size:
        nxt = []
        for k in np.unique(at[todo]):
            rows = todo[at[todo] == k]
            node = nodes.get(str(int(k)))
            if node is None:
                raise OperatorError(f"the tree has no node {k}")
            if "leaf" in node:
                out[rows] = node["leaf"]
                continue
            left = own(str(int(k)), rows) if "record" not in node else (
                decisions[node["record"]][rows])
            at[rows] = np.where(left, 2 * k + 1, 2 * k + 2)
            nxt.append(rows)
        todo = np.concatenate(nxt) if nxt else np.zeros(0, dtype=np.int64)
    return out
