"""Both parties of the native PSI in one process, over in-memory sessions: what
`python -m appliance.bench psi` times beside SecretFlow's PSI on the same ids.

The sessions are the channel's real session code (framing, windows, checks) without gRPC, so
the figure is the engine and the protocol, not the network. The ids come as in-memory lists;
the reference engine reads them from CSV inside its timing, so the comparison slightly favours
this side (docs/psi-reference.md).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from appliance.federation.channel import memory_pair
from appliance.operators.base import PartyContext, run_parties
from appliance.operators.psi import PSI


class _Ids:
    """A data set of ids in memory, as an operator reads one (batches and a fingerprint)."""

    id_column = "id"

    def __init__(self, ids: list[str], batch: int = 1 << 16) -> None:
        self._ids, self._batch = ids, batch
        self.fingerprint = f"in-memory:{len(ids)}"

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for i in range(0, len(self._ids), self._batch):
            yield pa.record_batch([pa.array(self._ids[i:i + self._batch])], names=["id"])


def run_local_pair(a_ids: list[str], b_ids: list[str], reveal: str = "both") -> dict[str, Any]:
    """{"wall_s", "cpu_s", "intersection"}: the guest's ids in the intersection."""
    roles = {"guest-a": "guest", "host-b": "host"}
    sa, sb = memory_pair("bench", "job", names=("guest-a", "host-b"))
    with tempfile.TemporaryDirectory(prefix="pec-psi-bench-") as tmp:
        ctxs = [PartyContext(job_id="bench", role=roles[n], node_id=n, parties=dict(roles),
                             sessions={other: s}, params={"reveal": reveal},
                             dataset=_Ids(ids), timeout=600, output_dir=Path(tmp) / n)
                for n, other, s, ids in (("guest-a", "host-b", sa, a_ids),
                                         ("host-b", "guest-a", sb, b_ids))]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        results = run_parties(PSI.run, ctxs)
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        for node, res in results.items():
            if isinstance(res, Exception):
                raise RuntimeError(f"native psi failed at {node}: {res}") from res
        out = results["guest-a"]
        found: set[str] = set()
        if out.get("rows_file"):
            import pyarrow.csv as pacsv

            found = set(pacsv.read_csv(out["rows_file"],
                                       convert_options=pacsv.ConvertOptions(
                                           column_types={"id": pa.string()})
                                       ).column("id").to_pylist())
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "intersection": found,
            "intersection_size": out["intersection_size"]}
