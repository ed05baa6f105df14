"""Unbalanced PSI (ECDH-OPRF on ristretto255): exact results against Python sets, the offline
table built once and reused, rebuilt when the server set or key changes, the client's cache,
and refusal of bad points and bad wire sizes."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from appliance.federation.channel import memory_pair
from appliance.federation.datasets import DatasetRegistry
from appliance.operators.base import OperatorError, PartyContext, run_parties
from appliance.operators.psi import PSI, r255, stated_for, unbalanced_job
from appliance.operators.psi.unbalanced import (
    Client,
    OprfKey,
    Server,
    ServerTable,
    TableCache,
    fingerprint_of,
)

SERVER_SIZES = (0, 1, 20_000, 200_000)
QUERY_SIZES = (0, 1, 1_000)


class MemorySecrets:
    """The two methods of the appliance's TrustRoot that the key needs, in memory."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def store_secret(self, name: str, data: bytes) -> None:
        self.blobs[name] = bytes(data)

    def load_secret(self, name: str) -> bytes | None:
        return self.blobs.get(name)


def server_ids(n: int) -> list[str]:
    return [f"cust-{i:09d}" for i in range(n)]


def query_ids(server: list[str], n: int) -> list[str]:
    """n queries: about a third from the server's set (its first, last and middle ids), the
    rest ids it does not hold."""
    inside = server[:: max(1, len(server) // max(1, n // 3))][: n // 3] if n > 1 else server[:n]
    outside = [f"other-{i}" for i in range(n - len(inside))]
    mixed = inside + outside
    return [mixed[i] for i in np.random.default_rng(n).permutation(len(mixed))]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One key per server set and each table built once for the whole module."""
    out = tmp_path_factory.mktemp("tables")
    secrets = MemorySecrets()
    tables: dict[int, ServerTable] = {}
    keys: dict[int, OprfKey] = {}
    for n in SERVER_SIZES:
        keys[n] = OprfKey.load_or_create(secrets, f"set{n}")
        tables[n] = ServerTable.build(server_ids(n), keys[n], out)
        assert tables[n].built and tables[n].count == n
    big = tables[200_000]
    print(f"\noffline build of 200,000 server ids: {big.seconds:.2f} s "
          f"({r255.threads()} threads); 20,000: {tables[20_000].seconds:.2f} s")
    return {"out": out, "secrets": secrets, "keys": keys, "tables": tables,
            "mtimes": {n: t.path.stat().st_mtime_ns for n, t in tables.items()}}


@pytest.mark.parametrize("m", QUERY_SIZES)
@pytest.mark.parametrize("n", SERVER_SIZES)
def test_exact_against_python_sets(world: dict[str, Any], n: int, m: int) -> None:
    sids = server_ids(n)
    queries = query_ids(sids, m)
    server = Server(world["keys"][n])
    got = Client().query(queries, world["tables"][n], server.answer)
    members = set(sids)
    want = [q for q in queries if q in members]
    assert got == want
    if m == 1_000 and n >= 1_000:
        assert len(want) == 333  # the overlap the query set was made with
    assert server.queries_answered == m  # what the server learns: the count


def test_online_time_printed(world: dict[str, Any]) -> None:
    sids = server_ids(200_000)
    queries = query_ids(sids, 1_000)
    server = Server(world["keys"][200_000])
    start = time.perf_counter()
    got = Client().query(queries, world["tables"][200_000], server.answer)
    online = time.perf_counter() - start
    assert set(got) == set(queries) & set(sids)
    print(f"\nonline: 1,000 queries against 200,000 server ids: {online * 1000:.0f} ms "
          "(blind, answer, unblind, hash, look up; both sides in this process)")


def test_table_built_once_and_reused(world: dict[str, Any]) -> None:
    for n in SERVER_SIZES:
        again = ServerTable.build(server_ids(n), world["keys"][n], world["out"])
        assert not again.built and again.seconds == 0.0
        assert again.path == world["tables"][n].path
        # the file the first build wrote, untouched by every query test and by this call
        assert again.path.stat().st_mtime_ns == world["mtimes"][n]
    # one table per server set, named by its data set fingerprint and key version
    names = sorted(p.name for p in Path(world["out"]).glob("*.tbl"))
    assert len(names) == len(SERVER_SIZES)
    fp = fingerprint_of(pa.array(server_ids(20_000)))
    assert f"oprf-set20000-{fp}-k1.tbl" in names


def test_changed_server_set_forces_rebuild(tmp_path: Path) -> None:
    secrets = MemorySecrets()
    key = OprfKey.load_or_create(secrets, "crm")
    first = server_ids(2_000)
    t1 = ServerTable.build(first, key, tmp_path)
    assert t1.built and not ServerTable.build(first, key, tmp_path).built
    changed = [*first[1:], "cust-new"]
    t2 = ServerTable.build(changed, key, tmp_path)
    assert t2.built and t2.fingerprint != t1.fingerprint
    assert not t1.path.exists()  # the stale table is gone
    got = Client().query(["cust-new", first[0], first[1]], t2, Server(key).answer)
    assert got == ["cust-new", first[1]]
    # a data set fingerprint given by the caller (the registry's) names the table
    t3 = ServerTable.build(changed, key, tmp_path, fingerprint="ab" * 32)
    assert t3.built and t3.fingerprint == "ab" * 32
    assert not ServerTable.build(changed, key, tmp_path, fingerprint="ab" * 32).built
    # another data set whose key name starts the same keeps its table
    other = ServerTable.build(first, OprfKey.load_or_create(secrets, "crm-2"), tmp_path)
    ServerTable.build(first, key, tmp_path)
    assert other.path.exists()


def test_key_sealed_and_rotation_forces_rebuild(tmp_path: Path) -> None:
    secrets = MemorySecrets()
    key = OprfKey.load_or_create(secrets, "crm")
    assert list(secrets.blobs) == ["psi-oprf.crm"]
    assert OprfKey.load_or_create(secrets, "crm") == key  # the same key on the next start
    assert key.scalar.hex() not in repr(key)
    ids = server_ids(500)
    t1 = ServerTable.build(ids, key, tmp_path)
    new = OprfKey.rotate(secrets, "crm")
    assert new.version == 2 and new.scalar != key.scalar
    t2 = ServerTable.build(ids, new, tmp_path)
    assert t2.built and t2.key_version == 2 and not t1.path.exists()
    assert Client().query(ids[:3], t2, Server(new).answer) == ids[:3]
    # the old table with the new key finds nothing: the client must download again
    assert Client().query(ids[:3], t2, Server(key).answer) == []


def test_client_cache_download_once(world: dict[str, Any], tmp_path: Path) -> None:
    table = world["tables"][20_000]
    key = world["keys"][20_000]
    cache = TableCache(tmp_path / "cache")
    assert cache.get(table.fingerprint, table.key_version, table.key_public) is None
    downloads = 0

    def download() -> Any:
        nonlocal downloads
        downloads += 1
        return table.chunks(size=50_000)

    for _ in range(3):
        cached = cache.get(table.fingerprint, key.version, key.public)
        if cached is None:
            cached = cache.receive(download(), table.fingerprint, key.version, key.public,
                                   table.count)
        assert Client().query(["cust-000000007", "x"], cached, Server(key).answer) == [
            "cust-000000007"]
    assert downloads == 1
    # another key version is another cache entry
    assert cache.get(table.fingerprint, key.version + 1, key.public) is None


def test_damaged_download_refused(world: dict[str, Any], tmp_path: Path) -> None:
    table = world["tables"][20_000]
    data = bytearray(b"".join(table.chunks()))
    data[200] ^= 1
    cache = TableCache(tmp_path)
    with pytest.raises(OperatorError, match="does not match its hash"):
        cache.receive([bytes(data)], table.fingerprint, table.key_version, table.key_public)
    with pytest.raises(OperatorError, match="another data set or key"):
        cache.receive(table.chunks(), "cd" * 32, table.key_version, table.key_public)
    with pytest.raises(OperatorError, match="bytes; its header says"):
        cache.receive([bytes(data[:-12 * 5])], table.fingerprint, table.key_version,
                      table.key_public)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_invalid_point_from_client_refused(world: dict[str, Any]) -> None:
    server = Server(world["keys"][1])
    good = r255.hash_to_group(pa.array(["a", "b", "c"]))
    for bad, reason in ((b"\xff" * 32, "not a canonical ristretto255 encoding"),
                        (bytes(32), "is the identity")):
        sent = good.copy()
        sent[1] = np.frombuffer(bad, np.uint8)
        with pytest.raises(r255.InvalidPoint, match=f"point 1 of the client's query.*{reason}"
                           ) as info:
            server.answer(sent.tobytes())
        assert info.value.index == 1
    with pytest.raises(OperatorError, match="not a whole number of 32-byte points"):
        server.answer(good.tobytes()[:-1])
    assert server.queries_answered == 0
    small = Server(world["keys"][1], max_batch=2)
    with pytest.raises(OperatorError, match="over this server's 2 per request"):
        small.answer(good.tobytes())


def test_bad_server_answers_refused(world: dict[str, Any]) -> None:
    table, server = world["tables"][20_000], Server(world["keys"][20_000])
    with pytest.raises(OperatorError, match="answered 2 points to 3 queries"):
        Client().query(["a", "b", "c"], table, lambda q: server.answer(q)[:64])
    with pytest.raises(OperatorError, match="not a whole number"):
        Client().query(["a"], table, lambda q: server.answer(q)[:31])

    def corrupt(q: bytes) -> bytes:
        a = bytearray(server.answer(q))
        a[32:64] = b"\xff" * 32
        return bytes(a)

    with pytest.raises(r255.InvalidPoint, match="point 1 of the server's answer"):
        Client().query(["a", "b"], table, corrupt)


def test_id_forms_and_batches(world: dict[str, Any]) -> None:
    key = OprfKey.load_or_create(MemorySecrets(), "ints")
    table = ServerTable.build([1, 42, 7_000], key, world["out"] / "ints")
    server = Server(key)
    # integers and their decimal text are the same id (the balanced mode's rule)
    assert Client().query(["42", "43"], table, server.answer) == ["42"]
    got = Client().query(pa.array([7_000, 5, 1]), table, server.answer)
    assert got.to_pylist() == [7_000, 1]
    # a query set larger than one request goes in several, each answered
    server.queries_answered = 0
    queries = [1, 2, 42, 42, 7_000]
    assert Client(max_batch=2).query(queries, table, server.answer) == [1, 42, 42, 7_000]
    assert server.queries_answered == 5


def test_blinding_unblinds_and_hides() -> None:
    ids = pa.array(["x", "x", "y"])
    points = r255.hash_to_group(ids)
    r, r_inv = r255.blinds(3)
    blinded = r255.mul_each(points, r)
    # the same id twice looks like two unrelated points on the wire
    assert not np.array_equal(blinded[0], blinded[1])
    assert np.array_equal(r255.mul_each(blinded, r_inv), points)
    k = r255.new_scalar()
    direct = r255.mul(points, k)
    assert np.array_equal(r255.mul_each(r255.mul(blinded, k), r_inv), direct)


# -- as a job: psi mode=unbalanced over the job session ---------------------------------------

GUEST, HOST = "bank-a", "carrier-b"
ROLES = {GUEST: "guest", HOST: "host"}


class Reader:
    """A registered data set as the daemon hands it to an operator (name, fingerprint)."""

    def __init__(self, registry: DatasetRegistry, name: str) -> None:
        self.registry, self.name = registry, name
        ds = registry.show(name)
        self.fingerprint, self.id_column = ds.fingerprint, ds.id_column

    def batches(self, columns: list[str] | None = None) -> Any:
        yield from self.registry.open(self.name, columns)


def dataset(where: Path, name: str, ids: list[str]) -> Reader:
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.csv"
    path.write_text("id\n" + "".join(f"{v}\n" for v in ids))
    registry = DatasetRegistry(sqlite3.connect(where / f"{name}.db", check_same_thread=False))
    registry.add(name, str(path), "id", actor="test")
    return Reader(registry, name)


def job(tmp_path: Path, guest: Reader, host: Reader, secrets: MemorySecrets,
        params: dict[str, Any] | None = None) -> dict[str, Any]:
    a, b = memory_pair("job:9:ab", "psi", names=(GUEST, HOST))
    ctxs = []
    for node, session, data in ((GUEST, a, guest), (HOST, b, host)):
        ctx = PartyContext(job_id="job:9:ab", role=ROLES[node], node_id=node,
                           parties=dict(ROLES), sessions={p: session for p in ROLES if p != node},
                           params={"mode": "unbalanced", **(params or {})}, dataset=data,
                           timeout=20)
        # the node's own directories and trust root, never job parameters
        ctx.output_dir = tmp_path / node / "out"
        ctx.state_dir = tmp_path / node / "state"  # type: ignore[attr-defined]
        if node == HOST:
            ctx.secrets = secrets  # type: ignore[attr-defined]
        ctxs.append(ctx)
    return run_parties(PSI.run, ctxs, timeout=60)


def rows_of(result: dict[str, Any]) -> list[str]:
    lines = Path(result["rows_file"]).read_text().splitlines()
    assert lines[0].strip('"') == "id"
    return [v.strip('"') for v in lines[1:]]


def test_job_downloads_once_then_uses_cache(tmp_path: Path) -> None:
    secrets = MemorySecrets()
    sids = server_ids(20_000)
    host = dataset(tmp_path / "h1", "crm", sids)
    queries = query_ids(sids, 1_000)
    guest = dataset(tmp_path / "g", "list", queries)
    members = set(sids)
    want = [q for q in queries if q in members]
    first = job(tmp_path, guest, host, secrets, {"batch_size": 300})
    g, h = first[GUEST], first[HOST]
    assert not isinstance(g, Exception) and not isinstance(h, Exception), first
    assert g["intersection_size"] == h["intersection_size"] == len(want) == 333
    assert rows_of(g) == want
    assert (g["table_downloaded"], h["table_built"], h["learned"]) == (True, True, "size")
    again = job(tmp_path, guest, host, secrets)
    assert (again[GUEST]["table_downloaded"], again[HOST]["table_built"]) == (False, False)
    assert rows_of(again[GUEST]) == want
    # the host's data set changed: rebuilt, downloaded again, the new answer
    changed = dataset(tmp_path / "h2", "crm", [*sids[1:], "other-0"])
    third = job(tmp_path, guest, changed, secrets)
    assert (third[GUEST]["table_downloaded"], third[HOST]["table_built"]) == (True, True)
    new = set(sids[1:]) | {"other-0"}
    assert rows_of(third[GUEST]) == [q for q in queries if q in new]
    assert stated_for("guest", {"mode": "unbalanced"}) == {"reveal": "self"}
    assert stated_for("host", {"mode": "unbalanced"}) == {"reveal": "peer"}


def test_job_refuses_bad_params_and_points(tmp_path: Path) -> None:
    secrets = MemorySecrets()
    host = dataset(tmp_path / "h", "crm", server_ids(50))
    guest = dataset(tmp_path / "g", "list", ["cust-000000001"])
    res = job(tmp_path, guest, host, secrets, {"reveal": "both"})
    assert all(isinstance(r, OperatorError) and "reveal=initiator only" in str(r)
               for r in res.values())
    # a dishonest guest: a proper handshake, then a point that is not on the group
    a, b = memory_pair("job:9:ab", "psi", names=(GUEST, HOST))
    ctx = PartyContext(job_id="job:9:ab", role="host", node_id=HOST, parties=dict(ROLES),
                       sessions={GUEST: b}, params={"mode": "unbalanced"}, dataset=host,
                       timeout=10)
    ctx.state_dir = tmp_path / "hs"  # type: ignore[attr-defined]
    ctx.secrets = secrets  # type: ignore[attr-defined]
    out: dict[str, Any] = {}

    def host_side() -> None:
        try:
            out["r"] = PSI.run(ctx)
        except Exception as exc:
            out["r"] = exc

    t = threading.Thread(target=host_side)
    t.start()
    hello = a.recv(timeout=10)
    a.send({**{k: hello[k] for k in unbalanced_job.HELLO}, "role": "guest", "rows": 2,
            "need_table": False})
    good = r255.hash_to_group(pa.array(["x"])).tobytes()
    a.send_bytes(good + b"\xff" * 32)
    t.join(20)
    assert isinstance(out["r"], OperatorError)
    assert "point 1 of the client's query is not a canonical ristretto255 encoding" in str(
        out["r"])
