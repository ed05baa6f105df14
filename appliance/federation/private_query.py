"""Private query on the node: publishing this node's services from its data sets, answering
peers on the interconnect (topic ``pir``), and asking peers' services (docs/pir.md).

Both sides keep the act in their signed ledger without the key: the server records that a peer
asked (service, version, how many keys); the client records what it asked as an HMAC of the
keys under a node-local secret sealed by the trust root, so an auditor holding this node's
keys can check a claimed query against the ledger while the ledger itself names no key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.federation.datasets import DatasetError
from appliance.federation.grade_policy import GradePolicy
from appliance.federation.peers import PeerError
from appliance.federation.service import Federation
from appliance.operators.base import OperatorError
from appliance.operators.pir import wire
from appliance.operators.pir.scheme import PirError
from appliance.operators.pir.service import ServiceStore, check_name
from appliance.operators.psi.unbalanced import SecretStore
from appliance.trust import audit

log = logging.getLogger("pec.pir")

AUDIT_KEY = "pir-audit-hmac"
#: keys (OPRF evaluations) one peer may ask of this node per rolling hour, unless the node's
#: setting ``pir_key_budget_per_hour`` says otherwise: each key is a guess a client can test
BUDGET_SETTING = "pir_key_budget_per_hour"
DEFAULT_KEY_BUDGET = 100_000
BUDGET_WINDOW_S = 3600.0


class PrivateQuery:
    def __init__(self, fed: Federation, datasets: Any, policy: Callable[[], GradePolicy],
                 state_dir: Path, secrets: SecretStore,
                 budget: Callable[[], int] = lambda: DEFAULT_KEY_BUDGET) -> None:
        self.fed, self.datasets, self.policy = fed, datasets, policy
        self.secrets = secrets
        self.budget = budget
        self.store = ServiceStore(state_dir / "pir" / "services", secrets)
        self.cache = wire.HintCache(state_dir / "pir" / "peers")
        self._spent: dict[str, deque[tuple[float, int]]] = {}
        self._audit_secret: bytes | None = None
        self._lock = threading.Lock()
        fed.topics[wire.TOPIC] = self._serve

    # -- this node's services --------------------------------------------------------------

    def publish(self, name: str, dataset: str, key_column: str, label_columns: list[str],
                actor: str, rotate_key: bool = False) -> dict[str, Any]:
        check_name(name)
        if not isinstance(label_columns, list) or not label_columns or not all(
                isinstance(c, str) and c for c in label_columns):
            raise PirError("pir: label_columns is a non-empty list of column names")
        if key_column in label_columns:
            raise PirError(f"pir: the key column {key_column} cannot also be a label")
        ds = self._servable(dataset, label_columns)
        table = self.datasets.open(dataset, [key_column, *label_columns]).read_all()
        try:
            info = self.store.publish(
                name, table.column(key_column), {c: table.column(c) for c in label_columns},
                source={"dataset": dataset, "fingerprint": ds.fingerprint,
                        "key_column": key_column}, rotate_key=bool(rotate_key))
        except PirError:
            raise
        except OperatorError as exc:  # e.g. null keys: the data set's fault, said as such
            raise PirError(f"pir: data set {dataset}: {exc}") from None
        audit.record(actor, "pir.publish", f"pir:{name}", {
            "dataset": dataset, "fingerprint": ds.fingerprint, "key_column": key_column,
            "label_columns": label_columns, "version": info["version"],
            "records": info["records"], "setup_seconds": info["cost"]["setup_seconds"],
            "key_rotated": bool(rotate_key), "oprf_key_version": info["oprf"]["key_version"]})
        return info

    def _servable(self, dataset: str, label_columns: list[str]) -> Any:
        """The data set, if the grade policy lets this node serve each of the label columns:
        asked at publication and again before every request a peer makes, so that a data set
        regraded or a policy tightened stops a published service at once."""
        ds = self.datasets.show(dataset)
        policy = self.policy()
        # serving records is the grade's question; each label column is asked on its own, so
        # an override can allow records but keep a column back (docs/datasets.md)
        for column in label_columns:
            policy.check_use(ds.grade, "pir", {"serve": "records", "column": column},
                             dataset=dataset)
        return ds

    def unpublish(self, name: str, actor: str) -> dict[str, Any]:
        info = self.store.remove(name)
        audit.record(actor, "pir.unpublish", f"pir:{name}", {"version": info["version"]})
        return info

    def services(self) -> list[dict[str, Any]]:
        return self.store.list()

    def _serve(self, session: Any, peer: dict[str, Any]) -> None:
        def served(op: str, facts: dict[str, Any]) -> None:
            audit.record(f"peer:{peer['name']}", f"pir.{op}.served",
                         f"pir:{facts['service']}", {"node_id": peer["node_id"], **facts})

        def allow(op: str, service: str | None, count: int) -> None:
            try:
                try:
                    self.fed.active_peer(peer["node_id"])
                except PeerError as exc:  # said as it is, without the refusal's prefix
                    raise PirError(str(exc), 403) from None
                if service is not None:
                    info = self.store.loaded(service).info
                    self._servable(info["source"]["dataset"], info["label_columns"])
            except (PeerError, DatasetError) as exc:
                raise PirError(f"private query refused: {exc}", exc.status) from None
            if count:
                self._charge(peer["name"], count)

        wire.serve(session, self.store, served, allow)

    def _charge(self, peer: str, count: int) -> None:
        """Count ``count`` keys against the peer's budget for the last hour, or refuse (429)."""
        limit = int(self.budget())
        now = time.monotonic()
        with self._lock:
            spent = self._spent.setdefault(peer, deque())
            while spent and spent[0][0] < now - BUDGET_WINDOW_S:
                spent.popleft()
            used = sum(n for _, n in spent)
            if used + count > limit:
                raise PirError(f"private query refused: peer {peer} has asked {used} keys in "
                               f"the last hour; this node allows {limit} "
                               f"(setting {BUDGET_SETTING})", 429)
            spent.append((now, count))

    # -- peers' services -------------------------------------------------------------------

    def _client(self, peer_name: str) -> tuple[dict[str, Any], wire.Client]:
        peer = self.fed.fresh_peer(peer_name)
        session = self.fed.open_session(peer, wire.TOPIC, timeout=wire.TIMEOUT)
        return peer, wire.Client(session, peer["node_id"], self.cache)

    def peer_services(self, peer_name: str) -> list[dict[str, Any]]:
        _, client = self._client(peer_name)
        try:
            return client.services()
        finally:
            client.session.close()

    def query(self, peer_name: str, service: str, keys: list[Any],
              actor: str) -> dict[str, Any]:
        check_name(service)
        if not isinstance(keys, list):
            raise PirError("pir: keys is a list")
        peer, client = self._client(peer_name)
        try:
            results, cost = client.query(service, keys)
        finally:
            try:
                client.session.close()
            except Exception:
                log.debug("closing the private query session failed", exc_info=True)
        found = sum(1 for r in results if r["found"])
        audit.record(actor, "pir.query", f"pir:{peer_name}/{service}", {
            "node_id": peer["node_id"], "version": cost["version"], "count": len(keys),
            "keys_hmac": self._keys_hmac(keys), "found": found})
        return {"peer": peer_name, "service": service, "results": results, "cost": cost}

    def _keys_hmac(self, keys: list[Any]) -> str:
        with self._lock:  # two first queries at once must not each make a secret
            if self._audit_secret is None:
                # unsealed once: the HSM is not asked again for every query
                secret = self.secrets.load_secret(AUDIT_KEY)
                if secret is None:
                    secret = os.urandom(32)
                    self.secrets.store_secret(AUDIT_KEY, secret)
                self._audit_secret = secret
            secret = self._audit_secret
        text = json.dumps([str(k) for k in keys], separators=(",", ":")).encode()
        return hmac.new(secret, text, hashlib.sha256).hexdigest()
