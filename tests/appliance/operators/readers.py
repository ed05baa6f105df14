"""The data sets operator tests hand their parties: a registered file read through the
registry, as a daemon does, or an in-memory table (what the registry would refuse: NaN, which
a CSV reads as null, and the empty set)."""

from __future__ import annotations

import pyarrow as pa

from appliance.federation.datasets import DatasetRegistry


class Reader:
    def __init__(self, registry: DatasetRegistry, name: str) -> None:
        self.registry, self.name = registry, name
        ds = registry.show(name)
        self.fingerprint, self.id_column = ds.fingerprint, ds.id_column

    def batches(self, columns=None):
        yield from self.registry.open(self.name, columns)


class TableReader:
    fingerprint, id_column = "0" * 64, "id"

    def __init__(self, table: pa.Table | None) -> None:
        self.table = table

    def batches(self, columns=None):
        if self.table is None:
            return iter(())
        return iter(self.table.select(columns or self.table.column_names).to_batches())
