"""Online joint inference with a vertical model: ``POST /v1/models/MODEL/predict`` at the guest,
with rows of the key and the guest's features. The guest asks each host, on a session of
topic ``predict`` (the pinned mTLS channel, the peer attested within the last five minutes),
for its part of those ids: partial scores (logistic regression) or split sides (SecureBoost),
computed from the host's own data set. Only the guest learns the predictions (docs/fl.md).

A host answers only the guest that trained the model with it, reads rows of the data set the
model was trained on (or the one the guest names), under its grade policy, and keeps the
rows indexed by key between requests (rebuilt when the data set changes).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.federation.datasets import DatasetError
from appliance.federation.peers import PeerError
from appliance.jobs.runner import JobError
from appliance.operators.base import OperatorError
from appliance.operators.fl import joint_predict

log = logging.getLogger("pec.predict")

TOPIC = "predict"
TIMEOUT = 30.0
MAX_ROWS = 10_000


class OnlinePredict:
    def __init__(self, fed: Any, datasets: Any, policy: Any, output_root: Path) -> None:
        self.fed, self.datasets, self.policy = fed, datasets, policy
        self.output_root = output_root
        self._rows: dict[tuple[str, str], tuple[str, dict[str, int], np.ndarray]] = {}
        self._lock = threading.Lock()
        fed.topics[TOPIC] = self._serve

    # -- the guest --------------------------------------------------------------------------

    def predict(self, model: str, rows: Any, peer_datasets: Any = None) -> dict[str, Any]:
        try:
            doc = joint_predict.load_part(self.output_root, model)
        except OperatorError as exc:
            raise JobError(str(exc), 404) from None
        if doc["role"] != "guest":
            raise JobError(f"this node is a host of {model}: ask its guest, which holds the "
                           "label side and combines the parts", 409)
        if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS or not all(
                isinstance(r, dict) for r in rows):
            raise JobError(f"rows is a list of 1..{MAX_ROWS} objects: the key "
                           f"{doc['key']!r} and this node's feature values")
        if peer_datasets is not None and not (isinstance(peer_datasets, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in peer_datasets.items())):
            raise JobError("peer_datasets maps a host's name to its data set")
        ids = [r.get(doc["key"]) for r in rows]
        if any(i is None for i in ids):
            raise JobError(f"every row needs the key {doc['key']!r}")
        try:
            from appliance.operators.fl.predict import features_of

            x = features_of(doc, pa.Table.from_pylist(
                [{f: r.get(f) for f in doc["features"]} for r in rows]))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise JobError(f"rows do not form a table: {exc}") from None
        except OperatorError as exc:
            raise JobError(str(exc)) from None
        started = time.perf_counter()
        parts = {}
        for node_id, role in doc["parties"].items():
            if role != "host":
                continue
            try:
                peer = self.fed.peers.by_node_id(node_id)
                self.fed.fresh_peer(peer["name"])
                dataset = (peer_datasets or {}).get(peer["name"])
                parts[node_id] = self._ask(peer, {"model": model, "ids": [str(i) for i in ids],
                                                  "dataset": dataset})
            except PeerError as exc:
                raise JobError(f"host {node_id}: {exc}", exc.status) from None
        try:
            p = joint_predict.combine(doc, x, parts)
        except OperatorError as exc:
            raise JobError(str(exc), 502) from None
        classes = doc["classes"]
        return {"model": model, "seconds": round(time.perf_counter() - started, 4),
                "predictions": [{"id": i, "score": float(s),
                                 "prediction": classes[1] if s >= 0.5 else classes[0]}
                                for i, s in zip(ids, p.tolist(), strict=True)]}

    def _ask(self, peer: dict[str, Any], msg: dict[str, Any]) -> dict[str, Any]:
        session = self.fed.open_session(peer, TOPIC, timeout=TIMEOUT)
        try:
            session.send(msg)
            reply = session.recv(timeout=TIMEOUT)
        except Exception as exc:
            raise PeerError(f"no answer from {peer['name']}: {exc}", 502) from None
        finally:
            try:
                session.close()
            except Exception as exc:  # the answer is in; a close that fails changes nothing
                log.debug("closing a predict session: %s", exc)
        if not isinstance(reply, dict):
            raise PeerError(f"{peer['name']} sent a malformed answer", 502)
        if reply.get("error"):
            raise PeerError(f"{peer['name']} refused: {str(reply['error'])[:300]}", 409)
        return reply

    # -- a host -----------------------------------------------------------------------------

    def _serve(self, session: Any, peer: dict[str, Any]) -> None:
        try:
            reply = self._answer(peer, session.recv(timeout=TIMEOUT))
        except (OperatorError, DatasetError, PeerError, ValueError) as exc:
            reply = {"error": str(exc)[:500]}
        session.send(reply)

    def _answer(self, peer: dict[str, Any], msg: Any) -> dict[str, Any]:
        if not (isinstance(msg, dict) and isinstance(msg.get("model"), str)
                and isinstance(msg.get("ids"), list) and 0 < len(msg["ids"]) <= MAX_ROWS
                and all(isinstance(i, str) for i in msg["ids"])
                and (msg.get("dataset") is None or isinstance(msg["dataset"], str))):
            raise ValueError("a malformed online prediction request")
        self.fed.active_peer(peer["node_id"])
        model = msg["model"]
        doc = joint_predict.load_part(self.output_root, model)
        if doc["role"] != "host" or doc["parties"].get(peer["node_id"]) != "guest":
            raise OperatorError(f"{peer['name']} is not the guest of {model} here")
        name = msg.get("dataset") or doc.get("dataset")
        if not name:
            raise OperatorError(f"name this node's data set for {model} (peer_datasets)")
        ds = self.datasets.show(name)
        self.policy().check_use(ds.grade, "fl", {"aggregation": "secure"}, dataset=name)
        index, x = self._indexed(model, doc, name, ds)
        missing = [i for i in msg["ids"] if i not in index]
        if missing:
            raise OperatorError(f"{len(missing)} of the ids are not in data set {name} "
                                f"(e.g. {missing[0][:40]!r})")
        return joint_predict.host_part(doc, x[[index[i] for i in msg["ids"]]])

    def _indexed(self, model: str, doc: dict[str, Any], name: str,
                 ds: Any) -> tuple[dict[str, int], np.ndarray]:
        """The data set's rows by key and the model's feature matrix, kept between requests
        while the data set's fingerprint stays the same."""
        with self._lock:
            cached = self._rows.get((model, name))
        if cached and cached[0] == ds.fingerprint:
            return cached[1], cached[2]
        from appliance.operators.fl.predict import features_of

        table = self.datasets.open(name).read_all()
        if doc["key"] not in table.column_names:
            raise OperatorError(f"data set {name} has no key column {doc['key']!r}")
        x = features_of(doc, table)
        index = {str(v): i for i, v in enumerate(table.column(doc["key"]).to_pylist())}
        with self._lock:
            self._rows[(model, name)] = (ds.fingerprint, index, x)
        return index, x
