"""Published private-query services: the server's side, on disk and in memory (docs/pir.md).

A service is one data set's key column and label columns, encoded for the LWE scheme. Each
publication is a new **version** in its own directory, built aside and switched to with one
atomic write of ``CURRENT``: queries keep being answered from the old version until the new
one is complete, and a version is never seen half-written. The version before the current one
stays on disk (a client that asked just before a switch gets a clear "re-encoded" answer, not a
vanished file); older ones are removed.

    <root>/<name>/CURRENT            the current version number
    <root>/<name>/v<N>/service.json  what peers are told, plus the build's figures
    <root>/<name>/v<N>/matrix.u8     the encoded database, rows x cols bytes
    <root>/<name>/v<N>/hint.u32      H^T, N x rows little-endian words (the client's download)

The OPRF key of a service is sealed through the node's secret store (the trust root), under
``pir-<name>``; it survives re-publication, so a version change does not change F.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from accel import lwe
from appliance.operators.pir import layout as lay
from appliance.operators.pir import scheme
from appliance.operators.pir.scheme import PirError
from appliance.operators.psi import r255
from appliance.operators.psi.ecdh_engine import id_bytes
from appliance.operators.psi.unbalanced import OprfKey, SecretStore
from appliance.operators.psi.unbalanced import Server as OprfServer
from appliance.state.atomicfile import write_atomic, write_json

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: most keys one request may ask (a batch is one pass over the database)
MAX_BATCH = 1024
#: a query or an answer batch stays below the channel's 64 MiB message limit
MAX_MESSAGE = 60 << 20
HINT_CHUNK = 1 << 20
#: what a client checks the description against (a server of another version is refused)
PROTOCOL = 1


def oprf_key_name(service: str) -> str:
    """The sealed OPRF key's name: the dot keeps it apart from unbalanced PSI's keys, which are
    named by data sets (whose names have no dot)."""
    return f"pir.{service}"


def max_batch(rows: int, cols: int) -> int:
    """Keys per request for a database of this shape: at most MAX_BATCH, and few enough that
    the queries (4 bytes a column each) and the answers (4 bytes a row) fit one message."""
    return max(1, min(MAX_BATCH, MAX_MESSAGE // (4 * max(rows, cols))))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PirError(f"pir: service name {name!r} must be 1..64 of a-z 0-9 _ - (starting "
                       "with a letter or digit)", 400)
    return name


def key_type_of(t: pa.DataType) -> str:
    """How a client must spell keys: ``int`` for integer columns (decimal text, so 0042 is 42),
    ``string`` for text and binary ones."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    raise PirError(f"pir: a key column of type {t} is not supported (integers or text)", 400)


def label_type_of(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    return "string"


LABEL_TYPES = ("bool", "int", "float", "string")


def typed(value: str | None, kind: str) -> Any:
    """A label's text back as the JSON value of its column's type; PirError when the text is
    not one of that type (a corrupt record or a server that lies about its types)."""
    if value is None or kind == "string":
        return value
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise PirError(f"pir: label {value[:40]!r} is not a {kind}", 502) from None
    if kind == "bool" and value in ("true", "false"):
        return value == "true"
    raise PirError(f"pir: label {value[:40]!r} is not a {kind}", 502)


@dataclass
class Loaded:
    """One version in memory: the matrix (memory-mapped) and the OPRF server."""

    info: dict[str, Any]
    matrix: lwe.Matrix
    oprf: OprfServer
    served: int = 0
    server_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class ServiceStore:
    def __init__(self, root: str | Path, secrets: SecretStore) -> None:
        self.root = Path(root)
        self.secrets = secrets
        self._lock = threading.Lock()
        self._loaded: dict[str, Loaded] = {}
        self._building: set[str] = set()

    # -- publication ---------------------------------------------------------------------

    def publish(self, name: str, keys: pa.Array | pa.ChunkedArray,
                labels: dict[str, pa.Array | pa.ChunkedArray], *,
                source: dict[str, Any], rotate_key: bool = False) -> dict[str, Any]:
        """Encode ``keys`` with their ``labels`` as the next version of service ``name`` and
        make it current; returns its description. ``source`` (data set, fingerprint, key
        column) is kept for this node's administrators and never sent to peers.
        ``rotate_key`` replaces the service's OPRF key first (clients' F values change)."""
        check_name(name)
        with self._lock:
            if name in self._building:
                raise PirError(f"pir: service {name} is being encoded already; wait for it", 409)
            self._building.add(name)
        try:
            return self._publish(name, keys, labels, source, rotate_key)
        finally:
            with self._lock:
                self._building.discard(name)

    def _publish(self, name: str, keys: pa.Array | pa.ChunkedArray,
                 labels: dict[str, pa.Array | pa.ChunkedArray],
                 source: dict[str, Any], rotate_key: bool) -> dict[str, Any]:
        started = time.perf_counter()
        if not labels:
            raise PirError("pir: a service needs at least one label column", 400)
        key_type = key_type_of(keys.type)
        ids = id_bytes(keys)  # refuses null keys
        repeated = len(ids) - len(pc.unique(ids))
        if repeated:
            raise PirError(f"pir: the key column has {repeated} repeated key(s); a key must "
                           "name one record", 400)
        empty = len(ids) - pc.sum(pc.greater(pc.binary_length(ids), 0)).as_py() if len(ids) else 0
        if empty:
            raise PirError(f"pir: the key column has {empty} empty key(s)", 400)
        key = (OprfKey.rotate if rotate_key else OprfKey.load_or_create)(
            self.secrets, oprf_key_name(name))
        f = key.evaluate(ids, lay.F_BYTES)
        texts = [_texts(col) for col in labels.values()]
        encoded, width = lay.encode_labels(texts)
        layout, entries = lay.build(f, encoded, width)
        shape = layout.shape
        shape.check()
        seed = scheme.new_seed()
        matrix = lwe.Matrix(entries)
        hint_t = scheme.hint(matrix, scheme.public_matrix(seed, shape.cols))

        service_dir = self.root / name
        service_dir.mkdir(parents=True, exist_ok=True)
        version = self._next_version(name)
        final = service_dir / f"v{version}"
        tmp = service_dir / f".v{version}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_atomic(tmp / "matrix.u8", entries.tobytes())
        hint_bytes = hint_t.astype("<u4").tobytes()
        write_atomic(tmp / "hint.u32", hint_bytes)
        info = {
            "protocol": PROTOCOL,
            "name": name,
            "version": version,
            "key_type": key_type,
            "label_columns": list(labels),
            "label_types": [label_type_of(c.type) for c in labels.values()],
            "records": len(ids),
            "layout": layout.to_dict(),
            "rows": shape.rows,
            "cols": shape.cols,
            "seed": seed.hex(),
            "lwe": scheme.PARAMS,
            "oprf": {"group": "ristretto255", "key_version": key.version,
                     "key_public": key.public.hex()},
            "hint_sha256": hashlib.sha256(hint_bytes).hexdigest(),
            "max_batch": max_batch(shape.rows, shape.cols),
            "cost": {
                "setup_seconds": round(time.perf_counter() - started, 3),
                "database_bytes": shape.rows * shape.cols,
                "hint_bytes": shape.hint_bytes,
                "query_bytes": shape.query_bytes + r255.POINT_BYTES,
                "answer_bytes": shape.answer_bytes + r255.POINT_BYTES,
            },
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(tmp / "service.json", {**info, "source": source})
        tmp.rename(final)
        write_atomic(service_dir / "CURRENT", f"{version}\n".encode())
        # keep the previous version (a query in flight may name it); remove older ones
        for old in service_dir.glob("v*"):
            if old.name[1:].isdigit() and int(old.name[1:]) < version - 1:
                shutil.rmtree(old, ignore_errors=True)
        with self._lock:
            self._loaded.pop(name, None)
        return self.describe(name)

    def remove(self, name: str) -> dict[str, Any]:
        """Stop serving ``name``: its encodings go, its OPRF key is replaced (F values clients
        learnt no longer match anything) and its version count is kept, so that a service
        published again under the name never reuses a version a client may have cached."""
        info = self.describe(check_name(name))
        with self._lock:
            if name in self._building:
                raise PirError(f"pir: service {name} is being encoded; remove it after", 409)
            self._loaded.pop(name, None)
            for part in (self.root / name).iterdir():
                if part.name != "LAST_VERSION":
                    shutil.rmtree(part) if part.is_dir() else part.unlink()
        OprfKey.rotate(self.secrets, oprf_key_name(name))
        return info

    def _next_version(self, name: str) -> int:
        """One more than any version this name ever had, recorded before the build starts."""
        path = self.root / name / "LAST_VERSION"
        try:
            last = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            last = 0
        versions = [int(p.name[1:]) for p in (self.root / name).glob("v*") if p.name[1:].isdigit()]
        version = max([last, self._current_version(name), *versions]) + 1
        write_atomic(path, f"{version}\n".encode())
        return version

    # -- reading -------------------------------------------------------------------------

    def _current_version(self, name: str) -> int:
        try:
            return int((self.root / name / "CURRENT").read_text().strip())
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise PirError(f"pir: service {name}'s CURRENT file is corrupt ({exc})", 500) from None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if NAME.fullmatch(p.name) and (p / "CURRENT").exists())

    def _read_info(self, name: str, version: int) -> dict[str, Any]:
        path = self.root / name / f"v{version}" / "service.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise PirError(f"pir: service {name} version {version} is gone", 409) from None
        except ValueError as exc:
            raise PirError(f"pir: service {name} version {version} is corrupt: {exc}",
                           500) from None

    def loaded(self, name: str) -> Loaded:
        """The current version of ``name`` in memory (loaded once per version)."""
        check_name(name)
        version = self._current_version(name)
        if version == 0:
            raise PirError(f"pir: no service named {name} is published here", 404)
        with self._lock:
            cached = self._loaded.get(name)
            if cached is not None and cached.info["version"] == version:
                return cached
        info = self._read_info(name, version)
        shape = scheme.Shape(info["rows"], info["cols"])
        path = self.root / name / f"v{version}" / "matrix.u8"
        if not path.exists() or path.stat().st_size != shape.rows * shape.cols:
            raise PirError(f"pir: service {name} version {version}'s matrix is missing or "
                           "truncated: publish it again", 500)
        entries = np.memmap(path, dtype=np.uint8, mode="r", shape=(shape.rows, shape.cols))
        key = OprfKey.load_or_create(self.secrets, oprf_key_name(name))
        if key.public.hex() != info["oprf"]["key_public"]:
            raise PirError(f"pir: service {name}'s OPRF key changed since it was encoded: "
                           "publish it again", 500)
        loaded = Loaded(info, lwe.Matrix(entries), OprfServer(key, max_batch=info["max_batch"]))
        with self._lock:
            self._loaded[name] = loaded
        return loaded

    def describe(self, name: str) -> dict[str, Any]:
        """What this node's administrators see of a service (peers see ``public_info``)."""
        loaded = self.loaded(name)
        info = dict(loaded.info)
        info["queries_served"] = loaded.served
        info["mean_server_seconds"] = (round(loaded.server_seconds / loaded.served, 6)
                                       if loaded.served else None)
        info["encoding"] = name in self._building
        return info

    def list(self) -> list[dict[str, Any]]:
        return [self.describe(n) for n in self.names()]

    def public_info(self, name: str) -> dict[str, Any]:
        info = dict(self.loaded(name).info)
        info.pop("source", None)
        return info

    def hint_chunks(self, name: str, version: int) -> Iterator[bytes]:
        path = self.root / check_name(name) / f"v{version}" / "hint.u32"
        try:
            f = open(path, "rb")  # noqa: SIM115 - the generator closes it
        except FileNotFoundError:
            raise PirError(f"pir: service {name} version {version} is gone", 409) from None

        def chunks() -> Iterator[bytes]:
            with f:
                while True:
                    chunk = f.read(HINT_CHUNK)
                    if not chunk:
                        return
                    yield chunk

        return chunks()

    # -- answering -----------------------------------------------------------------------

    def current(self, name: str, version: Any) -> Loaded:
        """The loaded service, if ``version`` is still its current one."""
        loaded = self.loaded(name)
        if version != loaded.info["version"]:
            raise PirError(f"pir: service {name} was re-encoded: version "
                           f"{loaded.info['version']} is current, not {version!r}", 409)
        return loaded

    def answer_oprf(self, name: str, version: Any, blinded: bytes) -> bytes:
        return self.current(name, version).oprf.answer(blinded)

    def answer_queries(self, name: str, version: Any, count: int, data: bytes) -> bytes:
        loaded = self.current(name, version)
        cols = loaded.info["cols"]
        most = loaded.info["max_batch"]
        if isinstance(count, bool) or not (isinstance(count, int) and 1 <= count <= most):
            raise PirError(f"pir: a batch of service {name} is 1..{most} queries, not "
                           f"{count!r}", 400)
        if len(data) != count * cols * 4:
            raise PirError(f"pir: {count} queries are {count * cols * 4} bytes, got "
                           f"{len(data)}: a malformed query", 400)
        queries = np.frombuffer(data, dtype="<u4").astype(np.uint32, copy=False)
        started = time.perf_counter()
        answers = loaded.matrix.mul(queries.reshape(count, cols))
        with loaded.lock:
            loaded.served += count
            loaded.server_seconds += time.perf_counter() - started
        return answers.astype("<u4", copy=False).tobytes()


def _texts(column: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """A label column as texts (booleans as true/false, numbers in their shortest form)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_boolean(column.type):
        return [None if v is None else ("true" if v else "false") for v in column.to_pylist()]
    if pa.types.is_floating(column.type):
        return [None if v is None else repr(float(v)) for v in column.to_pylist()]
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [None if v is None else v.hex() for v in column.to_pylist()]
    return column.cast(pa.string()).to_pylist()
