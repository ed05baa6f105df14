"""Horizontal federated learning (FedAvg), one party's side (docs/fl.md).

The parties hold the same columns for different people. The initiator (guest) aggregates and
trains too; hosts train. Every round: the aggregator sends the global model, each party
trains ``local_epochs`` on its own training rows, and the parties' updates
(sample count x parameters, the count, and validation loss and accuracy of the global model
on each party's held-out rows) are summed by secure aggregation: the aggregator learns the
sums, so the new global model (the count-weighted average) and the pooled validation figures,
and no party's own update. k-means sends per-cluster sums and counts instead.

Rounds of messages, all JSON over the job's pairwise sessions:

1. header (every party -> aggregator): parameter digest, feature columns, label values held,
   row count, local problems; the aggregator checks that features agree and a label is present
   everywhere or nowhere, then sends the setup (features, classes) or the reason to stop;
2. secure-aggregation setup: masking keys between every pair (``mask``) or the key holder's
   public key (``paillier``);
3. feature scaling (lr, nn): a secure sum of counts, sums and sums of squares gives the pooled
   mean and deviation, which every party applies;
4. rounds; 5. the final model to every party, which stores it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from appliance.federation.channel import ChannelError
from appliance.operators.base import OperatorError, PartyContext, canonical
from appliance.operators.fl import models, secagg, vertical

log = logging.getLogger("pec.fl")

VERSION = 1
ALGORITHMS = ("homo_lr", "homo_nn", "homo_kmeans")
DEFAULTS: dict[str, Any] = {
    "rounds": 10, "local_epochs": 1, "learning_rate": 0.1, "batch_size": 64, "alpha": 0.0001,
    "secure_aggregation": "mask", "validation": 0.2, "seed": 7, "hidden": "32",
    "clusters": 3, "max_iter": None,
}
MAX_ROUNDS = 1000
#: the aggregator and at least two others: of fewer, the aggregator could subtract its own
#: update from the sum and read the other's
MIN_MASKED = 3
MAX_FEATURES = 4096
MAX_CLASSES = 256


def plan_of(params: dict[str, Any]) -> dict[str, Any]:
    """The job's parameters, checked and with defaults; the same at every party (digest)."""
    algorithm = params.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise OperatorError(f"train: algorithm must be one of {', '.join(ALGORITHMS)}, "
                            f"hetero_lr or hetero_secureboost (got {algorithm!r})")
    plan = {**DEFAULTS, **{k: v for k, v in params.items() if v not in (None, "")}}
    try:
        for key in ("rounds", "local_epochs", "batch_size", "seed", "clusters"):
            plan[key] = int(plan[key])
        for key in ("learning_rate", "alpha", "validation"):
            plan[key] = float(plan[key])
    except (TypeError, ValueError) as exc:
        raise OperatorError(f"train: a numeric parameter is not a number ({exc})") from None
    if not 1 <= plan["rounds"] <= MAX_ROUNDS:
        raise OperatorError(f"train: rounds must be 1..{MAX_ROUNDS}")
    if plan["local_epochs"] < 1 or plan["batch_size"] < 1 or plan["learning_rate"] <= 0:
        raise OperatorError("train: local_epochs, batch_size and learning_rate must be positive")
    if not 0 <= plan["validation"] < 1 or plan["alpha"] < 0:
        raise OperatorError("train: validation is a fraction in [0, 1) and alpha is >= 0")
    if plan["secure_aggregation"] not in secagg.MODES:
        raise OperatorError(f"train: secure_aggregation must be one of "
                            f"{', '.join(secagg.MODES)}")
    if algorithm == "homo_kmeans":
        if not 1 <= plan["clusters"] <= 1024:
            raise OperatorError("train: clusters must be 1..1024")
    elif not isinstance(plan.get("label"), str) or not plan["label"]:
        raise OperatorError(f"train: {algorithm} needs label=COLUMN (the class column)")
    features = plan.get("features")
    if isinstance(features, str):
        plan["features"] = [f.strip() for f in features.split(",") if f.strip()]
    elif features is not None and not (isinstance(features, list) and all(
            isinstance(f, str) for f in features)):
        raise OperatorError("train: features is COL[,COL...]")
    if algorithm == "homo_nn" and not all(
            h.isdigit() and 0 < int(h) <= 4096 for h in str(plan["hidden"]).split("x")):
        raise OperatorError("train: hidden is the layer widths, e.g. 64 or 64x32")
    return plan


def digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({"v": VERSION, **plan})).hexdigest()


# -- this party's rows -----------------------------------------------------------------------

class Local:
    def __init__(self) -> None:
        self.features: list[str] = []
        self.x = np.zeros((0, 0))
        self.labels: list[Any] | None = None
        self.label_type: str | None = None
        self.problems: list[str] = []


def load(ctx: PartyContext, plan: dict[str, Any]) -> Local:
    local = Local()
    if ctx.dataset is None:
        raise OperatorError("train needs a data set at every party")
    label = plan.get("label") if plan["algorithm"] != "homo_kmeans" else None
    batches = list(ctx.dataset.batches())
    table = pa.Table.from_batches(batches) if batches else None
    if table is None or table.num_rows == 0:
        local.problems.append("the data set has no rows")
        return local
    id_column = getattr(ctx.dataset, "id_column", None)
    if plan.get("features"):
        names = list(plan["features"])
        missing = [c for c in names if c not in table.column_names]
        if missing:
            local.problems.append(f"no column {', '.join(missing)}")
            return local
    else:  # every numeric column but the label and the id column
        names = [f.name for f in table.schema if f.name not in (label, id_column)
                 and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not names or len(names) > MAX_FEATURES:
        local.problems.append(f"{len(names)} feature columns (1..{MAX_FEATURES} needed)")
        return local
    local.features = names
    cols = []
    for c in names:
        arr = table.column(c)
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            local.problems.append(f"feature {c!r} is {arr.type}, not numeric")
            continue
        if arr.null_count:
            local.problems.append(f"feature {c!r} has {arr.null_count} empty values")
            continue
        cols.append(pc.cast(arr, pa.float64()).to_numpy())
    if local.problems:
        return local
    local.x = np.column_stack(cols)
    if not np.isfinite(local.x).all():
        local.problems.append("a feature has NaN or infinite values")
    if label is not None:
        if label not in table.column_names:
            local.labels = None
        else:
            arr = table.column(label)
            if arr.null_count:
                local.problems.append(f"label {label!r} has {arr.null_count} empty values")
            local.labels = arr.to_pylist()
            local.label_type = "integer" if pa.types.is_integer(arr.type) else str(arr.type)
    return local


def split(n: int, fraction: float, seed: int, node_id: str) -> tuple[np.ndarray, np.ndarray]:
    """This party's training and validation rows (a seeded shuffle per party)."""
    rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(node_id.encode())
                                                      .digest()[:4], "little")])
    order = rng.permutation(n)
    cut = n - round(n * fraction)
    return np.sort(order[:cut]), np.sort(order[cut:])


# -- the messages ----------------------------------------------------------------------------

def _recv(ctx: PartyContext, peer: str, tag: str) -> Any:
    try:
        msg = ctx.sessions[peer].recv(timeout=ctx.timeout)
    except OperatorError:
        raise
    except Exception as exc:
        raise OperatorError(f"party {peer} did not send its {tag}: {exc}") from exc
    if not (isinstance(msg, dict) and msg.get("t") == tag):
        raise OperatorError(f"party {peer} sent a malformed {tag}")
    return msg


def _floats(msg: Any, key: str, length: int, peer: str) -> np.ndarray:
    v = msg.get(key)
    if not (isinstance(v, list) and len(v) == length and all(
            isinstance(a, int | float) and not isinstance(a, bool) for a in v)):
        raise OperatorError(f"party {peer} sent a malformed {msg.get('t')} ({key})")
    out = np.array(v, dtype=np.float64)
    if not np.isfinite(out).all():
        raise OperatorError(f"party {peer} sent non-finite values in {msg.get('t')}")
    return out


class Aggregation:
    """One job's secure aggregation, from this party's side."""

    def __init__(self, ctx: PartyContext, mode: str, aggregator: str, order: list[str]) -> None:
        self.ctx, self.mode, self.aggregator = ctx, mode, aggregator
        self.me = ctx.node_id
        self.alive = list(order)  # parties still in the job (the mask mode drops parties)
        self.hosts = [p for p in order if p != aggregator]
        self.key_holder = self.hosts[0] if self.hosts else None
        self.keys: secagg.MaskKeys | None = None
        self.pk: Any = None
        self.sk: Any = None
        self.he_seconds = 0.0
        self.percent = 0.0  # the job's progress, for messages sent from inside a round

    @property
    def is_aggregator(self) -> bool:
        return self.me == self.aggregator

    def setup(self) -> None:
        ctx, others = self.ctx, [p for p in self.alive if p != self.me]
        if self.mode == "mask":
            self.keys = secagg.MaskKeys(self.me, ctx.job_id)
            for p in others:
                ctx.sessions[p].send({"t": "fl/maskkey", "k": self.keys.public.hex()})
            for p in others:
                self.keys.agree(p, _recv(ctx, p, "fl/maskkey").get("k"))
        elif self.mode == "paillier":
            from accel import paillier

            if self.me == self.key_holder:
                t = time.perf_counter()
                self.pk, self.sk = paillier.keygen(vertical.PAILLIER_BITS)
                self.he_seconds += time.perf_counter() - t
                for p in others:
                    ctx.sessions[p].send({"t": "fl/pk", "n": str(self.pk.n)})
            else:
                msg = _recv(ctx, self.key_holder, "fl/pk")
                try:
                    n = int(msg.get("n"))
                    if n.bit_length() != vertical.PAILLIER_BITS:
                        raise ValueError(f"a {n.bit_length()}-bit modulus")
                    self.pk = paillier.PublicKey(n)
                except (TypeError, ValueError) as exc:
                    raise OperatorError(f"party {self.key_holder} sent a bad Paillier key "
                                        f"({exc})") from None

    def sum(self, x: np.ndarray, tag: str) -> np.ndarray | None:
        """Every live party calls this with its vector; the aggregator gets the sum over the
        parties that took part (None elsewhere)."""
        if self.mode == "none":
            return self._plain(x, tag)
        if self.mode == "mask":
            return self._masked(x, tag)
        return self._paillier(x, tag)

    def _plain(self, x: np.ndarray, tag: str) -> np.ndarray | None:
        if not self.is_aggregator:
            self.ctx.sessions[self.aggregator].send({"t": "fl/plain", "r": tag,
                                                     "v": x.tolist()})
            return None
        total = x.copy()
        for p in self.alive:
            if p != self.me:
                total += _floats(_recv(self.ctx, p, "fl/plain"), "v", len(x), p)
        return total

    def _masked(self, x: np.ndarray, tag: str) -> np.ndarray | None:
        assert self.keys is not None
        ctx, n = self.ctx, len(self.alive)
        self_key = os.urandom(32)
        round_tag = tag.encode()
        y = self.keys.masked(secagg.encode(x, n), round_tag, self_key)
        if not self.is_aggregator:
            ctx.sessions[self.aggregator].send({"t": "fl/masked", "r": tag, "v": secagg.wire(y)})
            ask = _recv(ctx, self.aggregator, "fl/unmask")
            dropped = ask.get("dropped")
            if not (isinstance(dropped, list) and all(d in self.keys.seeds for d in dropped)):
                raise OperatorError(f"party {self.aggregator} sent a malformed fl/unmask")
            if len(self.alive) - len(dropped) < MIN_MASKED:
                raise OperatorError(f"fl: fewer than {MIN_MASKED} parties would be left; the "
                                    "aggregator could take its own update from the sum")
            # a survivor's self-mask key, and this round's keys with the parties that dropped:
            # never both for one party, so no x is ever unmasked alone, and no seed leaves
            ctx.sessions[self.aggregator].send({
                "t": "fl/seeds", "b": self_key.hex(),
                "s": {d: secagg.round_key(self.keys.seeds[d], round_tag).hex()
                      for d in dropped}})
            for d in dropped:
                self.keys.seeds.pop(d)
            self.alive = [p for p in self.alive if p not in dropped]
            return None
        total, survivors, dropped = y, [self.me], []
        for p in [p for p in self.alive if p != self.me]:
            try:
                msg = ctx.sessions[p].recv(timeout=ctx.timeout)
            except (ChannelError, TimeoutError) as exc:  # gone after masking: no y came
                log.info("party %s dropped out of round %s: %s", p, tag, exc)
                dropped.append(p)
                continue
            total = secagg.add(total, secagg.parse_vector(msg, "fl/masked", len(x), p))
            survivors.append(p)
        if len(survivors) < MIN_MASKED:
            raise OperatorError(f"fl: {', '.join(dropped)} dropped out and fewer than "
                                f"{MIN_MASKED} parties are left: the aggregator could take "
                                "its own update from the sum of the others")
        self_keys = {self.me: self_key}
        dropped_keys = [(self.me, d, secagg.round_key(self.keys.seeds[d], round_tag))
                        for d in dropped]
        for p in survivors[1:]:
            ctx.sessions[p].send({"t": "fl/unmask", "dropped": dropped})
        for p in survivors[1:]:
            msg = _recv(ctx, p, "fl/seeds")
            self_keys[p] = secagg.check_seed(msg.get("b"), p, "self-mask key")
            s = msg.get("s")
            if not (isinstance(s, dict) and set(s) == set(dropped)):
                raise OperatorError(f"party {p} sent malformed fl/seeds")
            dropped_keys += [(p, d, secagg.check_seed(s[d], p, "round key")) for d in dropped]
        for d in dropped:
            self.keys.seeds.pop(d)
        self.alive = [p for p in self.alive if p not in dropped]
        if dropped:
            ctx.progress(self.percent, f"party {', '.join(dropped)} dropped out; "
                         f"{len(self.alive)} parties go on")
        return secagg.decode(secagg.unmask(total, self_keys, dropped_keys))

    def _paillier(self, x: np.ndarray, tag: str) -> np.ndarray | None:
        from accel.paillier import EncryptedArray

        ctx = self.ctx
        t = time.perf_counter()
        mine = self.pk.encrypt(x)
        blob = mine.to_bytes()
        self.he_seconds += time.perf_counter() - t
        if not self.is_aggregator:
            ctx.sessions[self.aggregator].send({"t": "fl/enc", "r": tag})
            ctx.sessions[self.aggregator].send_bytes(blob)
            if self.me == self.key_holder:
                _recv(ctx, self.aggregator, "fl/encsum")
                data = ctx.sessions[self.aggregator].recv(timeout=ctx.timeout)
                t = time.perf_counter()
                try:
                    total = EncryptedArray.from_bytes(data, self.pk)
                except Exception as exc:
                    raise OperatorError(f"party {self.aggregator} sent a malformed encrypted "
                                        f"sum ({exc})") from None
                plain = np.asarray(self.sk.decrypt(total), dtype=np.float64)
                self.he_seconds += time.perf_counter() - t
                ctx.sessions[self.aggregator].send({"t": "fl/decsum", "v": plain.tolist()})
            return None
        total = mine
        for p in [p for p in self.alive if p != self.me]:
            _recv(ctx, p, "fl/enc")
            data = ctx.sessions[p].recv(timeout=ctx.timeout)
            t = time.perf_counter()
            try:
                theirs = EncryptedArray.from_bytes(data, self.pk)
            except Exception as exc:
                raise OperatorError(f"party {p} sent a malformed encrypted update ({exc})") \
                    from None
            if theirs.shape != mine.shape:
                raise OperatorError(f"party {p} sent an update of shape {theirs.shape}, not "
                                    f"{mine.shape}")
            total = total + theirs
            self.he_seconds += time.perf_counter() - t
        t = time.perf_counter()
        blob = total.to_bytes()
        self.he_seconds += time.perf_counter() - t
        ctx.sessions[self.key_holder].send({"t": "fl/encsum", "r": tag})
        ctx.sessions[self.key_holder].send_bytes(blob)
        return _floats(_recv(ctx, self.key_holder, "fl/decsum"), "v", len(x), self.key_holder)


# -- the protocol ------------------------------------------------------------------------------

def run(ctx: PartyContext) -> dict[str, Any]:
    started = time.perf_counter()
    plan = plan_of(ctx.params)
    order = sorted(ctx.parties)
    guests = [p for p in order if ctx.parties[p] == "guest"]
    if len(guests) != 1 or len(order) < 2:
        raise OperatorError("train needs one guest (the initiator, which aggregates) and at "
                            "least one host")
    aggregator = guests[0]
    others = [p for p in order if p != ctx.node_id]
    if set(ctx.sessions) != set(others):
        raise OperatorError("train needs a session to every other party of the job")
    if plan["secure_aggregation"] == "mask" and len(order) < MIN_MASKED:
        raise OperatorError("train: secure_aggregation=mask needs three or more parties (of "
                            "two, the aggregator could subtract its own update from the sum)")
    if plan["secure_aggregation"] == "paillier" and len(order) < 3:
        raise OperatorError("train: secure_aggregation=paillier needs three or more parties "
                            "(the key holder is a host that does not aggregate; with two, it "
                            "would learn the other party's update from the sum)")
    me_agg = ctx.node_id == aggregator
    local = load(ctx, plan)
    kmeans = plan["algorithm"] == "homo_kmeans"

    # 1. header and setup
    classes_here = sorted({str(v) for v in local.labels}) if local.labels is not None else None
    header = {"t": "fl/header", "params": digest(plan), "features": local.features,
              "classes": classes_here, "label_type": local.label_type, "rows": len(local.x),
              "problems": local.problems[:20]}
    if not me_agg:
        ctx.sessions[aggregator].send(header)
        setup = _recv(ctx, aggregator, "fl/setup")
        if setup.get("error"):
            raise OperatorError(str(setup["error"]))
    else:
        setup = _setup(ctx, plan, header, others)
    features, classes = setup["features"], setup.get("classes")
    k = len(classes) if classes else 0
    agg = Aggregation(ctx, plan["secure_aggregation"], aggregator, order)
    agg.setup()

    x = local.x
    y = np.array([classes.index(str(v)) for v in local.labels]) if classes else None
    train_rows, val_rows = split(len(x), 0 if kmeans else plan["validation"], plan["seed"],
                                 ctx.node_id)
    rng = np.random.default_rng([plan["seed"], len(ctx.node_id)])

    # 2. the pooled count, sums and sums of squares, by one secure aggregation: the features'
    #    scaling (lr, nn) or the k-means start (the aggregator never sees a party's row)
    d = len(features)
    moments = agg.sum(np.concatenate([[len(x)], x.sum(axis=0), (x * x).sum(axis=0)]),
                      "moments")
    mean, scale = np.zeros(d), np.ones(d)
    if not kmeans:
        mean, scale = _broadcast_scaling(ctx, agg, moments, d)
        x = (x - mean) / scale

    # 3. the initial model, at the aggregator
    model = None if kmeans else models.make(plan["algorithm"], d, k, plan)
    w = None
    if me_agg:
        w = (_initial_centroids(plan, moments) if kmeans
             else model.initial(np.random.default_rng(plan["seed"])))
    size = plan["clusters"] * d if kmeans else model.size()
    history: list[dict[str, Any]] = []
    mine: list[dict[str, Any]] = []
    for r in range(plan["rounds"]):
        w = _exchange_model(ctx, agg, w, f"model{r}", size)
        if kmeans:
            centroids = w.reshape(plan["clusters"], d)
            sums, counts, inertia = models.kmeans_stats(centroids, x)
            total = agg.sum(np.concatenate([sums.ravel(), counts, [inertia]]), f"r{r}")
            if total is not None:
                ksum = total[: plan["clusters"] * d].reshape(plan["clusters"], d)
                kcount = total[plan["clusters"] * d: -1]
                new = models.kmeans_step(centroids, ksum, np.round(kcount))
                shift = float(np.abs(new - centroids).max())
                history.append({"round": r + 1, "inertia": float(total[-1]), "shift": shift})
                w = new.ravel()
        else:
            tr, va = train_rows, val_rows
            loss, correct = models.evaluate(model, w, x[va], y[va])
            # this party's own figures: kept here, never sent (the sum is what leaves)
            mine.append({"round": r + 1,
                         "val_loss": loss / len(va) if len(va) else None,
                         "val_accuracy": correct / len(va) if len(va) else None})
            trained = model.fit(w, x[tr], y[tr], rng)
            n = float(len(tr))
            total = agg.sum(np.concatenate([n * trained, [n, loss, correct, len(va)]]),
                            f"r{r}")
            if total is not None:
                n_all, val_n = total[-4], total[-1]
                if n_all <= 0:
                    raise OperatorError("fl: no party has training rows")
                w = total[:-4] / n_all
                history.append({"round": r + 1,
                                "val_loss": float(total[-3] / val_n) if val_n else None,
                                "val_accuracy": float(total[-2] / val_n) if val_n else None})
        if me_agg:
            agg.percent = 100 * (r + 1) / plan["rounds"]
            ctx.progress(agg.percent, f"round {r + 1} of {plan['rounds']}")
            _send_all(ctx, agg, {"t": "fl/progress", "history": history[-1:]})
        else:
            _recv(ctx, aggregator, "fl/progress")

    # 4. the final model, its last validation, to every party
    w = _exchange_model(ctx, agg, w, "final", size)
    final: dict[str, Any] = {}
    if not kmeans:
        loss, correct = models.evaluate(model, w, x[val_rows], y[val_rows])
        total = agg.sum(np.array([loss, correct, len(val_rows)]), "final-eval")
        if total is not None and total[2]:
            final = {"val_loss": float(total[0] / total[2]),
                     "val_accuracy": float(total[1] / total[2])}
    history = _exchange_history(ctx, agg, history, final)
    model_doc = {"algorithm": plan["algorithm"], "features": features, "classes": classes,
                 "mean": mean.tolist(), "scale": scale.tolist(), "weights": w.tolist(),
                 "hidden": plan["hidden"] if plan["algorithm"] == "homo_nn" else None,
                 "clusters": plan["clusters"] if kmeans else None, "job": ctx.job_id,
                 "parties": order, "secure_aggregation": plan["secure_aggregation"]}
    model_id = f"{plan['algorithm']}-{ctx.job_id}"
    sha = vertical.store(ctx, "model.json", model_doc)
    return {"model": model_id, "algorithm": plan["algorithm"],
            "secure_aggregation": plan["secure_aggregation"], "rounds": plan["rounds"],
            "parties": len(agg.alive), "dropped": [p for p in order if p not in agg.alive],
            "history": history["rounds"], "final": history["final"],
            **({"local_history": mine} if mine else {}),
            "model_sha256": sha,
            "seconds": round(time.perf_counter() - started, 3),
            "he_seconds": round(agg.he_seconds, 3), "rows": len(local.x),
            **({"centroids": w.reshape(plan["clusters"], -1).tolist()} if kmeans else {})}


def _setup(ctx: PartyContext, plan: dict[str, Any], mine: dict[str, Any],
           others: list[str]) -> dict[str, Any]:
    headers = {ctx.node_id: mine}
    for p in others:
        headers[p] = _recv(ctx, p, "fl/header")
    problems = []
    for p, h in sorted(headers.items()):
        if h.get("params") != mine["params"]:
            problems.append(f"party {p} runs other parameters")
        probs = h.get("problems")
        if isinstance(probs, list) and probs:
            problems += [f"party {p}: {str(q)[:300]}" for q in probs[:20]]
    feature_sets = {p: h.get("features") for p, h in headers.items()}
    if not problems and len({json.dumps(f) for f in feature_sets.values()}) != 1:
        ref = feature_sets[ctx.node_id]
        for p, f in sorted(feature_sets.items()):
            if f != ref:
                problems.append(f"party {p}'s feature columns {f} differ from {ctx.node_id}'s "
                                f"{ref}")
    classes = None
    if plan["algorithm"] != "homo_kmeans" and not problems:
        without = sorted(p for p, h in headers.items() if h.get("classes") is None)
        types = {p: h.get("label_type") for p, h in headers.items()}
        if without:
            problems.append(f"the label {plan['label']!r} is missing at {', '.join(without)}")
        elif len(set(types.values())) != 1:
            # 1 and 1.0 would be two classes: refuse rather than train on the wrong labels
            problems.append("the label's type differs between parties: " + ", ".join(
                f"{p} {t}" for p, t in sorted(types.items())))
        else:
            # the union of the label values each party holds (which values, not how many:
            # docs/fl.md)
            union = set()
            for h in headers.values():
                if not (isinstance(h["classes"], list) and len(h["classes"]) <= MAX_CLASSES):
                    problems.append("a party sent a malformed class list")
                    break
                union |= {str(c) for c in h["classes"]}
            classes = sorted(union, key=lambda c: (len(c), c))
            if len(classes) < 2:
                problems.append(f"the label has {len(classes)} value(s) over all parties; "
                                "classification needs two or more")
            if len(classes) > MAX_CLASSES:
                problems.append(f"the label has {len(classes)} values (at most {MAX_CLASSES})")
    if problems:
        reason = "; ".join(problems)
        for p in others:
            ctx.sessions[p].send({"t": "fl/setup", "error": reason})
        raise OperatorError(reason)
    setup = {"t": "fl/setup", "features": mine["features"], "classes": classes}
    for p in others:
        ctx.sessions[p].send(setup)
    return setup


def _send_all(ctx: PartyContext, agg: Aggregation, msg: dict[str, Any]) -> None:
    for p in agg.alive:
        if p != ctx.node_id:
            ctx.sessions[p].send(msg)


def _exchange_model(ctx: PartyContext, agg: Aggregation, w: np.ndarray | None,
                    tag: str, size: int) -> np.ndarray:
    """The aggregator's global model to every party; a host takes only one of exactly the
    size its own model has."""
    if agg.is_aggregator:
        assert w is not None
        _send_all(ctx, agg, {"t": "fl/model", "r": tag, "w": w.tolist()})
        return w
    return _floats(_recv(ctx, agg.aggregator, "fl/model"), "w", size, agg.aggregator)


def _broadcast_scaling(ctx: PartyContext, agg: Aggregation, stats: np.ndarray | None,
                       d: int) -> tuple[np.ndarray, np.ndarray]:
    if agg.is_aggregator:
        assert stats is not None
        n = stats[0]
        mean = stats[1: 1 + d] / n
        var = np.maximum(stats[1 + d:] / n - mean * mean, 0.0)
        scale = np.where(var > 1e-12, np.sqrt(var), 1.0)  # a constant feature stays as it is
        _send_all(ctx, agg, {"t": "fl/scale", "mean": mean.tolist(), "scale": scale.tolist()})
        return mean, scale
    msg = _recv(ctx, agg.aggregator, "fl/scale")
    mean, scale = _floats(msg, "mean", d, agg.aggregator), _floats(msg, "scale", d,
                                                                  agg.aggregator)
    if not (scale > 0).all():
        raise OperatorError(f"party {agg.aggregator} sent a scaling with zero or negative "
                            "deviations")
    return mean, scale


def _initial_centroids(plan: dict[str, Any], stats: np.ndarray | None) -> np.ndarray:
    assert stats is not None
    init = plan.get("init")
    d = (len(stats) - 1) // 2
    if init is not None:  # the caller's start, e.g. to compare with a pooled run
        c = np.asarray(init, dtype=np.float64)
        if c.shape != (plan["clusters"], d):
            raise OperatorError(f"train: init must be {plan['clusters']} x {d} centroids")
        return c.ravel()
    n = stats[0]
    mean = stats[1: 1 + d] / n
    std = np.sqrt(np.maximum(stats[1 + d:] / n - mean * mean, 0.0))
    rng = np.random.default_rng(plan["seed"])
    return (mean + std * rng.standard_normal((plan["clusters"], d))).ravel()


def _exchange_history(ctx: PartyContext, agg: Aggregation, history: list[dict[str, Any]],
                      final: dict[str, Any]) -> dict[str, Any]:
    if agg.is_aggregator:
        doc = {"rounds": history, "final": final}
        _send_all(ctx, agg, {"t": "fl/history", **doc})
        return doc
    msg = _recv(ctx, agg.aggregator, "fl/history")
    rounds, fin = msg.get("rounds"), msg.get("final")
    if not isinstance(rounds, list) or not isinstance(fin, dict):
        raise OperatorError(f"party {agg.aggregator} sent a malformed history")
    return {"rounds": rounds, "final": fin}
