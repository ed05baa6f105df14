"""Hetero (vertical) logistic regression: the guest holds the binary label and some features,
each host other features of the same people (docs/fl.md says who learns what).

The model is ``sigmoid(b + x_g . w_g + sum_h x_h . w_h)``; each party keeps its own weights.
Mini-batch gradient descent on the logistic loss with the sigmoid's first-order Taylor
expansion around 0 (Hardy et al. 2017, as FATE does), so that the residual of a row is
linear in the parties' partial scores: ``d = 0.25 (z_g + sum z_h) + 0.5 - y``, and each
party's gradient is ``X_party^T d / |batch|``.

Two variants, chosen by the job's parties:

- **without an arbiter** (guest and one host): each has its own Paillier key. Per batch the
  guest sends ``[[0.25 z_g + 0.5 - y]]`` under its key, the host ``[[0.25 z_h]]`` under its
  key; each adds its own part in the clear, multiplies by its features (``accel``, one
  ciphertext-by-matrix product), masks the encrypted gradient and has the other party
  decrypt it (``accel.paillier.masking``).
- **with an arbiter** (guest, one or more hosts, arbiter): the arbiter's key. Hosts send
  ``[[0.25 z_h]]`` to the guest, which adds its part and sends ``[[d]]`` (re-randomised)
  to every host; every data party masks its encrypted gradient and the arbiter decrypts it.

Every epoch with a validation split, each host sends its partial scores of the validation
rows to the guest (what joint inference gives it), which computes loss, AUC and KS; early
stopping keeps the best epoch's weights at every party.

Features are standardised by each party on its own training rows; for the encrypted
product each column is also divided by its largest magnitude, so ``precision`` bits keep
every column's resolution (the factor is multiplied back after decryption).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from appliance.operators.base import OperatorError, PartyContext, canonical
from appliance.operators.fl import metrics, vertical

ALGORITHM = "hetero_lr"
VERSION = 1
DEFAULTS: dict[str, Any] = {
    "epochs": 10, "learning_rate": 0.15, "batch_size": 512, "penalty": "l2", "alpha": 0.01,
    "validation": 0.2, "early_stopping": 3, "tol": 1e-4, "seed": 7, "precision": 20,
}
PENALTIES = ("l1", "l2", "none")
MAX_EPOCHS = 1000
MAX_FEATURES = 4096


def plan_of(params: dict[str, Any]) -> dict[str, Any]:
    """The job's parameters, checked and with defaults."""
    plan = {**DEFAULTS, **{k: v for k, v in params.items() if v not in (None, "")}}
    try:
        for k in ("epochs", "batch_size", "early_stopping", "seed", "precision"):
            plan[k] = int(plan[k])
        for k in ("learning_rate", "alpha", "validation", "tol"):
            plan[k] = float(plan[k])
    except (TypeError, ValueError) as exc:
        raise OperatorError(f"train: a numeric parameter is not a number ({exc})") from None
    if not 1 <= plan["epochs"] <= MAX_EPOCHS:
        raise OperatorError(f"train: epochs must be 1..{MAX_EPOCHS}")
    if plan["batch_size"] < 1 or plan["learning_rate"] <= 0 or plan["alpha"] < 0:
        raise OperatorError("train: batch_size and learning_rate must be positive, alpha >= 0")
    if not 0 <= plan["validation"] < 1 or plan["early_stopping"] < 0:
        raise OperatorError("train: validation is a fraction in [0, 1); early_stopping is a "
                            "number of epochs (0: off)")
    if plan["penalty"] not in PENALTIES:
        raise OperatorError(f"train: penalty must be one of {', '.join(PENALTIES)}")
    if not 8 <= plan["precision"] <= 53:
        raise OperatorError("train: precision (bits of each feature in the encrypted "
                            "product) must be 8..53")
    if not isinstance(plan.get("key"), str) or not plan["key"]:
        raise OperatorError("train: hetero_lr needs key=ID_COLUMN (the column that aligns "
                            "the parties' rows)")
    return plan


def digest(plan: dict[str, Any]) -> str:
    """What must be equal at every party (a resumed job may change epochs and patience)."""
    fixed = {k: v for k, v in plan.items() if k not in ("epochs", "early_stopping", "resume")}
    return hashlib.sha256(canonical({"v": VERSION, **fixed})).hexdigest()


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows: the same at every party (rows are ordered by key)."""
    order = np.random.default_rng([seed, 1]).permutation(n)
    cut = round(n * fraction)
    return np.sort(order[cut:]), np.sort(order[:cut])


def batches(train: np.ndarray, size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, 2, epoch]).permutation(train)
    return [order[i: i + size] for i in range(0, len(order), size)]


class Party:
    """One data party's part: standardised features, weights and the encrypted steps."""

    def __init__(self, rows: vertical.Rows, train: np.ndarray, plan: dict[str, Any],
                 intercept: bool) -> None:
        self.names = list(rows.features)
        x = rows.matrix(self.names)
        xt = x[train]  # never empty: run() refuses a job without training rows
        self.mean, scale = xt.mean(axis=0), xt.std(axis=0)
        constant = [f for f, s in zip(self.names, scale, strict=True) if s == 0]
        if constant:
            raise OperatorError(f"train: feature(s) {', '.join(constant[:10])} are constant on "
                                "the training rows (they carry nothing): leave them out of "
                                "the data set")
        self.scale = scale
        z = (x - self.mean) / self.scale
        if intercept:
            z = np.column_stack([z, np.ones(len(z))])
        self.x = z
        # each column divided by its largest magnitude for the encrypted product
        self.colmax = np.maximum(np.abs(z[train]).max(axis=0), 1e-12)
        self.xs = z / self.colmax
        self.w = np.zeros(z.shape[1])
        self.intercept = intercept
        self.plan = plan

    def score(self, rows: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
        return self.x[rows] @ (self.w if w is None else w)

    def step(self, grad_scaled: np.ndarray, count: int) -> None:
        """A gradient step from the decrypted ``X_scaled^T d`` of a batch of ``count``."""
        lr, alpha, penalty = (self.plan["learning_rate"], self.plan["alpha"],
                              self.plan["penalty"])
        g = grad_scaled * self.colmax / count
        reg = slice(0, len(self.w) - 1) if self.intercept else slice(0, len(self.w))
        if penalty == "l2":
            g[reg] += alpha * self.w[reg]
        self.w -= lr * g
        if penalty == "l1":  # proximal step: soft thresholding
            wr = self.w[reg]
            self.w[reg] = np.sign(wr) * np.maximum(np.abs(wr) - lr * alpha, 0.0)

    def model(self, ctx: PartyContext, plan: dict[str, Any], w: np.ndarray,
              extra: dict[str, Any]) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, "role": ctx.role, "job": ctx.job_id,
                "key": plan["key"], "features": self.names, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "weights": (w[:-1] if self.intercept else w).tolist(),
                "intercept": float(w[-1]) if self.intercept else None,
                "parties": dict(ctx.parties),
                # the data set it was trained on: where online prediction reads rows by key
                "dataset": getattr(ctx.dataset, "name", None), **extra}


# -- keys and ciphertexts on the wire -----------------------------------------------------------

def _opened(ctx: PartyContext, peer: str, mask: Any) -> np.ndarray:
    from accel.paillier import masking

    msg = vertical.recv(ctx, peer, "lr/opened")
    try:
        return masking.unmask(masking.mantissas_from_wire(msg.get("v"), len(mask)), mask)
    except ValueError as exc:
        raise OperatorError(f"party {peer} sent malformed decrypted values ({exc})") from None


def _open_for(ctx: PartyContext, peer: str, sk: Any, what: str, limit: int,
              clock: Clock) -> int:
    """Decrypt a peer's masked array and send the mantissas back; how many there were."""
    from accel.paillier import EncryptedArray, masking

    blob = vertical.recv(ctx, peer, f"bytes:{what}")
    try:
        ea = EncryptedArray.from_bytes(blob, sk.public_key)
        if not (ea.ndim == 1 and 0 < ea.size <= limit):
            raise ValueError(f"shape {ea.shape}")
        with clock:
            values = sk.decrypt_mantissas(ea)
    except (ValueError, OverflowError) as exc:
        raise OperatorError(f"party {peer} sent a malformed {what} ({exc})") from None
    vertical.send(ctx, peer, {"t": "lr/opened", "v": masking.mantissas_to_wire(values)})
    return len(values)


def _masked_gradient(d: Any, xs: np.ndarray, precision: int) -> tuple[bytes, Any]:
    from accel.paillier import masking

    g = d.matmul(xs, precision=precision)
    masked, mask = masking.mask(g)
    return masked.to_bytes(), mask  # re-randomised: the key holder learns nothing of xs


# -- the run ------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.he = 0.0
        self._t = 0.0

    def __enter__(self) -> Clock:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.he += time.perf_counter() - self._t


def run(ctx: PartyContext) -> dict[str, Any]:
    started = time.perf_counter()
    plan = plan_of(ctx.params)
    roles = vertical.roles_of(ctx, "hetero_lr")
    if roles.arbiter is None and len(roles.hosts) != 1:
        raise OperatorError("hetero_lr without an arbiter runs between the guest and one "
                            "host; with more hosts name an arbiter (arbiter=PEER)")
    me = ctx.node_id
    if me == roles.arbiter:
        return _arbiter(ctx, plan, roles, started)
    guest = me == roles.guest
    if guest and (not isinstance(plan.get("label"), str) or not plan["label"]):
        raise OperatorError("train: hetero_lr needs label=COLUMN at the guest (the binary "
                            "label)")
    rows, party, problem = None, None, None
    try:
        rows = vertical.load(ctx, "train", plan["key"], plan["label"] if guest else None)
        if not rows.features and not guest:
            raise OperatorError(f"train: party {me} has no numeric feature columns")
        train, val = split(rows.n, plan["validation"], plan["seed"])
        if len(train) == 0:
            raise OperatorError("train: no training rows")
        party = Party(rows, train, plan, intercept=guest)
        if len(party.names) > MAX_FEATURES:
            raise OperatorError(f"train: {len(party.names)} features at {me} (at most "
                                f"{MAX_FEATURES})")
    except OperatorError as exc:
        problem = str(exc)
    vertical.check_alignment(ctx, roles, rows, "lr", problem)
    assert rows is not None and party is not None
    resumed = _resume(ctx, plan, party, roles)
    clock = Clock()
    if guest:
        return _guest(ctx, plan, roles, rows, party, train, val, clock, started, resumed)
    return _host(ctx, plan, roles, rows, party, train, val, clock, started, resumed)


def _keys(ctx: PartyContext, roles: vertical.Roles, clock: Clock) -> tuple[Any, Any, Any]:
    """(this party's secret key or None, the key its gradient is encrypted under by the
    other side, what this party encrypts its own residual part with: its secret key where it
    holds one, which encrypts faster through the CRT, else the arbiter's public key)."""
    from accel import paillier

    if roles.arbiter is not None:
        pk = vertical.public_key(vertical.recv(ctx, roles.arbiter, "lr/key"), roles.arbiter)
        return None, pk, pk
    other = roles.hosts[0] if ctx.node_id == roles.guest else roles.guest
    with clock:
        pk, sk = paillier.keygen(vertical.PAILLIER_BITS)
    vertical.send(ctx, other, {"t": "lr/key", "n": str(pk.n)})
    theirs = vertical.public_key(vertical.recv(ctx, other, "lr/key"), other)
    return sk, theirs, sk


def _guest(ctx: PartyContext, plan: dict[str, Any], roles: vertical.Roles,
           rows: vertical.Rows, party: Party, train: np.ndarray, val: np.ndarray,
           clock: Clock, started: float, resumed: dict[str, Any]) -> dict[str, Any]:
    y = rows.y
    assert y is not None
    arbiter, hosts = roles.arbiter, roles.hosts
    sk, their_pk, encrypter = _keys(ctx, roles, clock)
    if arbiter is not None:
        vertical.send(ctx, arbiter, {"t": "lr/plan",
                                     "batches": -(-len(train) // plan["batch_size"])})
    history: list[dict[str, Any]] = list(resumed.get("history", []))
    best = resumed.get("best", {"loss": None, "epoch": 0, "w": party.w.copy()})
    first = int(resumed.get("epoch", 0))
    epoch, stop, waited = first, first >= plan["epochs"], int(resumed.get("waited", 0))
    while not stop:
        for b in batches(train, plan["batch_size"], plan["seed"], epoch):
            dg = 0.25 * party.score(b) + 0.5 - y[b]
            if arbiter is None:
                host = hosts[0]
                with clock:
                    vertical.send_bytes(ctx, host, encrypter.encrypt(dg).to_bytes())
                u = vertical.recv_encrypted(ctx, host, "partial scores", their_pk, len(b))
                with clock:
                    blob, mask = _masked_gradient(u + dg, party.xs[b], plan["precision"])
                vertical.send_bytes(ctx, host, blob)
                _open_for(ctx, host, sk, "masked gradient", MAX_FEATURES + 1, clock)
                grad = _opened(ctx, host, mask)
            else:
                parts = [vertical.recv_encrypted(ctx, h, "partial scores", their_pk, len(b))
                         for h in hosts]
                with clock:
                    d = parts[0] + dg
                    for p in parts[1:]:
                        d = d + p
                    shared = d.to_bytes()  # re-randomised: a host cannot subtract its part
                for h in hosts:
                    vertical.send_bytes(ctx, h, shared)
                with clock:
                    blob, mask = _masked_gradient(d, party.xs[b], plan["precision"])
                vertical.send_bytes(ctx, arbiter, blob)
                grad = _opened(ctx, arbiter, mask)
            party.step(grad, len(b))
        epoch += 1
        row: dict[str, Any] = {"epoch": epoch}
        if len(val):
            z = party.score(val)
            for h in hosts:
                msg = vertical.recv(ctx, h, "lr/scores")
                z = z + vertical.floats(msg, len(val), h)
            row.update(metrics.summary(y[val], metrics.sigmoid(z)))
        improved = len(val) == 0 or best["loss"] is None or (
            row["loss"] < best["loss"] - plan["tol"])
        if improved:
            best = {"loss": row.get("loss"), "epoch": epoch, "w": party.w.copy(),
                    "metrics": row}
            waited = 0
        else:
            waited += 1
        stop = epoch >= plan["epochs"] or (
            plan["early_stopping"] > 0 and len(val) > 0 and waited >= plan["early_stopping"])
        history.append(row)
        for p in roles.others(ctx.node_id):
            vertical.send(ctx, p, {"t": "lr/epoch", "epoch": epoch, "best": improved,
                                  "stop": stop, "row": row})
        _checkpoint(ctx, plan, party, epoch, best, waited, history)
        ctx.progress(100 * epoch / plan["epochs"], f"epoch {epoch} of {plan['epochs']}"
                     + (f": validation AUC {row['auc']:.4f}" if row.get("auc") else ""))
    w = best["w"]
    final = best.get("metrics", {})
    importance = dict(zip(party.names, np.abs(w[:-1]).tolist(), strict=True))
    model = party.model(ctx, plan, w, {"classes": rows.classes, "final": final})
    sha = vertical.store(ctx, "model.json", model)
    return {"model": f"{ALGORITHM}-{ctx.job_id}", "algorithm": ALGORITHM,
            "variant": "arbiter" if arbiter else "two-party", "epochs_run": epoch,
            "best_epoch": best["epoch"], "history": history, "final": final,
            "importance": importance, "rows": rows.n, "train_rows": len(train),
            "validation_rows": len(val), "model_sha256": sha,
            "he_seconds": round(clock.he, 3), "seconds": round(time.perf_counter() - started, 3)}


def _host(ctx: PartyContext, plan: dict[str, Any], roles: vertical.Roles, rows: vertical.Rows,
          party: Party, train: np.ndarray, val: np.ndarray, clock: Clock, started: float,
          resumed: dict[str, Any]) -> dict[str, Any]:
    guest, arbiter = roles.guest, roles.arbiter
    sk, their_pk, encrypter = _keys(ctx, roles, clock)
    history: list[dict[str, Any]] = list(resumed.get("history", []))
    best = resumed.get("best", {"epoch": 0, "w": party.w.copy()})
    epoch = int(resumed.get("epoch", 0))
    stop = epoch >= plan["epochs"]
    while not stop:
        for b in batches(train, plan["batch_size"], plan["seed"], epoch):
            u = 0.25 * party.score(b)
            with clock:
                vertical.send_bytes(ctx, guest, encrypter.encrypt(u).to_bytes())
            if arbiter is None:
                dg = vertical.recv_encrypted(ctx, guest, "residuals", their_pk, len(b))
                with clock:
                    blob, mask = _masked_gradient(dg + u, party.xs[b], plan["precision"])
                vertical.send_bytes(ctx, guest, blob)
                _open_for(ctx, guest, sk, "masked gradient", MAX_FEATURES + 1, clock)
                grad = _opened(ctx, guest, mask)
            else:
                d = vertical.recv_encrypted(ctx, guest, "residuals", their_pk, len(b))
                with clock:
                    blob, mask = _masked_gradient(d, party.xs[b], plan["precision"])
                vertical.send_bytes(ctx, arbiter, blob)
                grad = _opened(ctx, arbiter, mask)
            party.step(grad, len(b))
        if len(val):
            vertical.send(ctx, guest, {"t": "lr/scores", "z": party.score(val).tolist()})
        msg = vertical.recv(ctx, guest, "lr/epoch")
        epoch += 1
        if msg.get("epoch") != epoch:
            raise OperatorError(f"party {guest} is at epoch {msg.get('epoch')}, not {epoch}")
        if msg.get("best"):
            best = {"epoch": epoch, "w": party.w.copy()}
        stop = bool(msg.get("stop"))
        row = msg.get("row") if isinstance(msg.get("row"), dict) else {"epoch": epoch}
        history.append(row)
        _checkpoint(ctx, plan, party, epoch, best, 0, history)
        ctx.progress(100 * epoch / plan["epochs"], f"epoch {epoch} of {plan['epochs']}")
    w = best["w"]
    model = party.model(ctx, plan, w, {})
    sha = vertical.store(ctx, "model.json", model)
    return {"model": f"{ALGORITHM}-{ctx.job_id}", "algorithm": ALGORITHM,
            "variant": "arbiter" if arbiter else "two-party", "epochs_run": epoch,
            "best_epoch": best["epoch"], "history": history,
            "importance": dict(zip(party.names, np.abs(w).tolist(), strict=True)),
            "rows": rows.n, "model_sha256": sha, "he_seconds": round(clock.he, 3),
            "seconds": round(time.perf_counter() - started, 3)}


def _arbiter(ctx: PartyContext, plan: dict[str, Any], roles: vertical.Roles,
             started: float) -> dict[str, Any]:
    """Holds the key, decrypts masked gradients; sees no row, no label, no weight."""
    from accel import paillier

    clock = Clock()
    vertical.check_alignment(ctx, roles, None, "lr")
    vertical.resume(ctx, roles, plan.get("resume"), digest(plan), "epoch", "lr")
    with clock:
        pk, sk = paillier.keygen(vertical.PAILLIER_BITS)
    for p in [roles.guest, *roles.hosts]:
        vertical.send(ctx, p, {"t": "lr/key", "n": str(pk.n)})
    setup = vertical.recv(ctx, roles.guest, "lr/plan")
    nb = setup.get("batches")
    if not (isinstance(nb, int) and 0 < nb <= 10**7):
        raise OperatorError(f"party {roles.guest} sent a malformed lr/plan")
    opened, epoch, stop = 0, 0, False
    while not stop:
        for _ in range(nb):
            for p in [roles.guest, *roles.hosts]:
                opened += _open_for(ctx, p, sk, "masked gradient", MAX_FEATURES + 1, clock)
        msg = vertical.recv(ctx, roles.guest, "lr/epoch")
        epoch += 1
        stop = bool(msg.get("stop"))
        ctx.progress(100 * epoch / plan["epochs"], f"epoch {epoch} of {plan['epochs']}")
    return {"model": f"{ALGORITHM}-{ctx.job_id}", "algorithm": ALGORITHM, "role": "arbiter",
            "epochs_run": epoch, "decrypted": opened, "he_seconds": round(clock.he, 3),
            "seconds": round(time.perf_counter() - started, 3)}


# -- the model and the checkpoints --------------------------------------------------------------

def _checkpoint(ctx: PartyContext, plan: dict[str, Any], party: Party, epoch: int,
                best: dict[str, Any], waited: int, history: list[dict[str, Any]]) -> None:
    """After every epoch: what a job with ``resume=THIS_JOB`` starts from."""
    vertical.store(ctx, "checkpoint.json", {
        "digest": digest(plan), "epoch": epoch, "w": party.w.tolist(), "waited": waited,
        "best": {**{k: v for k, v in best.items() if k != "w"}, "w": best["w"].tolist()},
        "history": history})


def _resume(ctx: PartyContext, plan: dict[str, Any], party: Party,
            roles: vertical.Roles) -> dict[str, Any]:
    """With ``resume=JOB``: this party's state after JOB's last finished epoch."""
    state = vertical.resume(ctx, roles, plan.get("resume"), digest(plan), "epoch", "lr")
    if not state:
        return {}
    if len(state["w"]) != len(party.w):
        raise OperatorError(f"train: cannot resume: party {ctx.node_id}: job "
                            f"{plan['resume']}'s weights do not fit its features")
    party.w = np.array(state["w"], dtype=np.float64)
    best = dict(state["best"])
    best["w"] = np.array(best["w"], dtype=np.float64)
    return {"epoch": state["epoch"], "history": state.get("history", []), "best": best,
            "waited": int(state.get("waited", 0))}
