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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
#: a server attested longer ago than this is attested again before a query
ATTEST_MAX_AGE = 300.0


class PrivateQuery:
    def __init__(self, fed: Federation, datasets: Any, policy: Callable[[], GradePolicy],
                 state_dir: Path, secrets: SecretStore) -> None:
        self.fed, self.datasets, self.policy = fed, datasets, policy
        self.secrets = secrets
        self.store = ServiceStore(state_dir / "pir" / "services", secrets)
        self.cache = wire.HintCache(state_dir / "pir" / "peers")
        self._attested: dict[str, float] = {}
        fed.topics[wire.TOPIC] = self._serve

    # -- this node's services --------------------------------------------------------------

    def publish(self, name: str, dataset: str, key_column: str, label_columns: list[str],
                actor: str) -> dict[str, Any]:
        check_name(name)
        if not isinstance(label_columns, list) or not label_columns or not all(
                isinstance(c, str) and c for c in label_columns):
            raise PirError("pir: label_columns is a non-empty list of column names")
        if key_column in label_columns:
            raise PirError(f"pir: the key column {key_column} cannot also be a label")
        ds = self.datasets.show(dataset)
        policy = self.policy()
        # serving records is the grade's question; each label column is asked on its own, so
        # an override can allow records but keep a column back (docs/datasets.md)
        for column in label_columns:
            policy.check_use(ds.grade, "pir", {"serve": "records", "column": column},
                             dataset=dataset)
        table = self.datasets.open(dataset, [key_column, *label_columns]).read_all()
        try:
            info = self.store.publish(
                name, table.column(key_column), {c: table.column(c) for c in label_columns},
                source={"dataset": dataset, "fingerprint": ds.fingerprint,
                        "key_column": key_column})
        except PirError:
            raise
        except OperatorError as exc:  # e.g. null keys: the data set's fault, said as such
            raise PirError(f"pir: data set {dataset}: {exc}") from None
        audit.record(actor, "pir.publish", f"pir:{name}", {
            "dataset": dataset, "fingerprint": ds.fingerprint, "key_column": key_column,
            "label_columns": label_columns, "version": info["version"],
            "records": info["records"], "setup_seconds": info["cost"]["setup_seconds"]})
        return info

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

        wire.serve(session, self.store, served)

    # -- peers' services -------------------------------------------------------------------

    def _client(self, peer_name: str) -> tuple[dict[str, Any], wire.Client]:
        peer = self.fed.peers.require_active(peer_name)
        if time.monotonic() - self._attested.get(peer_name, -1e9) > ATTEST_MAX_AGE:
            verdict = self.fed.attest_peer(peer_name)
            if not verdict["ok"]:
                raise PeerError(f"peer {peer_name} failed attestation and is quarantined: "
                                f"{verdict['reason']}", 403)
            self._attested[peer_name] = time.monotonic()
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
        secret = self.secrets.load_secret(AUDIT_KEY)
        if secret is None:
            secret = os.urandom(32)
            self.secrets.store_secret(AUDIT_KEY, secret)
        text = json.dumps([str(k) for k in keys], separators=(",", ":")).encode()
        return hmac.new(secret, text, hashlib.sha256).hexdigest()
