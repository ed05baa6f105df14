"""Private query for applications: a Python client of the local daemon's API.

    from appliance.federation.pir_client import PirClient
    pir = PirClient()                                   # $PEC_STATE_DIR or /var/lib/pec
    for r in pir.query("carrier", "risk", ["13800000007", "13900000001"]):
        print(r["key"], r["found"], r["labels"])

The daemon does the cryptography and holds the channel; the peer learns neither the keys nor
which of its records were read (docs/pir.md). The CLI's ``pir`` commands use this class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.client import DaemonClient
from appliance.state.statedir import default_state_dir

#: a first query downloads the service's hint, and publishing encodes a whole data set
TIMEOUT = 600.0


class PirClient:
    def __init__(self, state_dir: str | Path | None = None, timeout: float = TIMEOUT,
                 actor: str | None = None) -> None:
        client = DaemonClient(state_dir or default_state_dir(), timeout)
        self._daemon = client.on_behalf_of(actor) if actor else client

    def query(self, peer: str, service: str, keys: list[Any]) -> list[dict[str, Any]]:
        """``[{"key", "found", "labels"}]`` in the order of ``keys`` (at most 1024)."""
        return self.query_with_cost(peer, service, keys)["results"]

    def query_with_cost(self, peer: str, service: str, keys: list[Any]) -> dict[str, Any]:
        """The daemon's whole answer: results plus the cost (seconds, bytes each way)."""
        return self._daemon.post("/v1/pir/query",
                                 {"peer": peer, "service": service, "keys": list(keys)})

    def peer_services(self, peer: str) -> list[dict[str, Any]]:
        return self._daemon.get(f"/v1/peers/{peer}/pir/services")["services"]

    def services(self) -> list[dict[str, Any]]:
        """This node's published services with their cost figures."""
        return self._daemon.get("/v1/pir/services")["services"]

    def publish(self, name: str, dataset: str, key_column: str, label_columns: list[str],
                rotate_key: bool = False) -> dict[str, Any]:
        return self._daemon.post("/v1/pir/services", {
            "name": name, "dataset": dataset, "key_column": key_column,
            "label_columns": list(label_columns), "rotate_key": rotate_key})

    def unpublish(self, name: str) -> dict[str, Any]:
        return self._daemon.delete(f"/v1/pir/services/{name}")
