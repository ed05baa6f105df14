"""Private query (appliance.operators.pir): the LWE scheme, the keyword layout, published
services with versions, and the wire protocol between a client and a server session."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from accel import lwe
from appliance.federation.channel import memory_pair
from appliance.operators.pir import layout as lay
from appliance.operators.pir import scheme, wire
from appliance.operators.pir.scheme import PirError
from appliance.operators.pir.service import MAX_BATCH, ServiceStore


class MemorySecrets(dict):
    def store_secret(self, name: str, data: bytes) -> None:
        self[name] = data

    def load_secret(self, name: str) -> bytes | None:
        return self.get(name)


# -- the scheme --------------------------------------------------------------------------------

def test_a_query_reads_exactly_the_column_asked() -> None:
    rng = np.random.default_rng(1)
    db = rng.integers(0, 256, size=(70, 333), dtype=np.uint8)
    m = lwe.Matrix(db)
    a_t = scheme.public_matrix(scheme.new_seed(), 333)
    hint_t = scheme.hint(m, a_t)
    columns = np.array([0, 5, 332, 5, 100])
    s, q = scheme.make_queries(a_t, columns)
    np.testing.assert_array_equal(scheme.decode(m.mul(q), s, hint_t), db[:, columns].T)


def test_a_query_looks_uniform_whatever_the_column() -> None:
    """The server's view: two queries for different columns are LWE samples, their words
    spread over the whole ring and no coordinate stands out (a sanity check of the encoding,
    not a proof)."""
    a_t = scheme.public_matrix(scheme.new_seed(), 4096)
    for col in (0, 4095):
        _, q = scheme.make_queries(a_t, np.array([col]))
        words = q[0].astype(np.float64) / 2**32
        assert 0.45 < words.mean() < 0.55
        assert np.histogram(words, bins=8, range=(0, 1))[0].min() > 4096 / 8 * 0.8


def test_errors_have_the_stated_width() -> None:
    e = scheme.gaussian((200_000,)).astype(np.int32)
    assert abs(e.mean()) < 0.1
    assert abs(e.std() - scheme.SIGMA) < 0.1
    assert np.abs(e).max() <= 64


def test_noise_margin_of_the_widest_database() -> None:
    assert scheme.noise_bound(scheme.MAX_COLS) > 14  # standard deviations below Delta / 2


def test_public_matrix_is_fixed_by_its_seed() -> None:
    seed = bytes(range(16))
    a = scheme.public_matrix(seed, 10)
    assert a.shape == (scheme.N, 10) and a.dtype == np.uint32
    np.testing.assert_array_equal(a, scheme.public_matrix(seed, 10))
    assert not np.array_equal(a, scheme.public_matrix(bytes(16), 10))
    with pytest.raises(PirError, match="16 bytes"):
        scheme.public_matrix(b"short", 10)


def test_wrong_hint_gives_garbage_that_the_layout_refuses() -> None:
    """Decoding with another hint is not a silent wrong answer: the tags do not match."""
    f = np.frombuffer(np.random.default_rng(2).bytes(32 * 50), np.uint8).reshape(50, 32).copy()
    labels, width = lay.encode_labels([[f"v{i}" for i in range(50)]])
    layout, entries = lay.build(f, labels, width)
    m = lwe.Matrix(entries)
    a_t = scheme.public_matrix(scheme.new_seed(), layout.cols)
    wrong_hint = scheme.hint(m, scheme.public_matrix(scheme.new_seed(), layout.cols))
    col = lay.buckets(f[:1], layout.cols)
    s, q = scheme.make_queries(a_t, col)
    column = scheme.decode(m.mul(q), s, wrong_hint)[0]
    assert lay.find(column, layout, f[0]) is None
    right = scheme.decode(m.mul(q), s, scheme.hint(m, a_t))[0]
    assert lay.decode_labels(lay.find(right, layout, f[0]), 1) == ["v0"]


# -- labels ------------------------------------------------------------------------------------

def test_labels_round_trip_with_nulls_and_unicode() -> None:
    cols = [["a", None, "长城", ""], ["1", "2", None, "x" * 300]]
    raw, width = lay.encode_labels(cols)
    assert width == (2 + 0) + (2 + 300)  # the longest record: "" and 300 x
    for i in range(4):
        assert lay.decode_labels(raw[i].tobytes(), 2) == [cols[0][i], cols[1][i]]


@pytest.mark.parametrize(("raw", "match"), [
    (b"\x05\x00ab", "runs past"), (b"\x01", "inside a label length"),
    (b"\x01\x00a\x00\x00\x07", "after its labels"), (b"\x02\x00\xff\xfe", "not UTF-8")])
def test_corrupt_records_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(PirError, match=match):
        lay.decode_labels(raw, 1)


# -- services ----------------------------------------------------------------------------------

def _publish(store: ServiceStore, n: int = 500, name: str = "risk", scale: int = 7,
             keys: Any = None) -> dict[str, Any]:
    keys = keys if keys is not None else pa.array(
        [13800000000 + i for i in range(n)], pa.int64())
    return store.publish(name, keys, {
        "score": pa.array([(i * scale) % 1000 for i in range(n)], pa.int64()),
        "segment": pa.array([None if i % 9 == 0 else f"seg-{i % 4}" for i in range(n)]),
        "rate": pa.array([i / 8 for i in range(n)], pa.float64()),
        "vip": pa.array([i % 2 == 0 for i in range(n)])}, source={"dataset": "customers"})


@pytest.fixture
def store(tmp_path: Path) -> ServiceStore:
    return ServiceStore(tmp_path / "services", MemorySecrets())


class Server:
    """A server thread answering one client session."""

    def __init__(self, store: ServiceStore, allow: Any = None) -> None:
        self.client_side, server_side = memory_pair(topic="pir")
        self.served: list[tuple[str, dict[str, Any]]] = []
        self.thread = threading.Thread(
            target=wire.serve, args=(server_side, store, lambda op, f: self.served.append(
                (op, f)), allow or (lambda op, service, count: None)), daemon=True)
        self.thread.start()
        self.server_side = server_side

    def client(self, cache_dir: Path) -> wire.Client:
        return wire.Client(self.client_side, "node-b", wire.HintCache(cache_dir))


def test_present_and_absent_keys_return_exactly_the_stored_labels(
        store: ServiceStore, tmp_path: Path) -> None:
    info = _publish(store)
    assert info["records"] == 500 and info["version"] == 1 and info["key_type"] == "int"
    assert info["label_types"] == ["int", "string", "float", "bool"]
    srv = Server(store)
    asked = [13800000000, "13800000123", "13800000499", "13899999999", " 13800000009", "-1"]
    results, cost = srv.client(tmp_path / "cache").query("risk", asked)
    assert [r["key"] for r in results] == asked
    assert [r["found"] for r in results] == [True, True, True, False, True, False]
    assert results[0]["labels"] == {"score": 0, "segment": None, "rate": 0.0, "vip": True}
    assert results[1]["labels"] == {"score": 861, "segment": "seg-3", "rate": 15.375,
                                    "vip": False}
    assert results[2]["labels"] == {"score": 493, "segment": "seg-3", "rate": 62.375,
                                    "vip": False}
    assert results[4]["labels"]["segment"] is None
    assert results[3]["labels"] == {}
    assert cost["bytes_received"] >= info["cost"]["hint_bytes"]  # the first query downloads
    assert [op for op, _ in srv.served] == ["hint", "oprf", "query"]
    assert srv.served[2][1] == {"service": "risk", "version": 1, "count": 6}


def test_every_key_of_a_small_service_reads_back(store: ServiceStore, tmp_path: Path) -> None:
    n = 300
    keys = [f"user-{i}" for i in range(n)]
    store.publish("names", pa.array(keys), {"v": pa.array([f"value of {k}" for k in keys])},
                  source={})
    client = Server(store).client(tmp_path / "cache")
    results, _ = client.query("names", [*keys, "user-300", "USER-1"])
    assert all(r["found"] and r["labels"] == {"v": f"value of {r['key']}"}
               for r in results[:n])
    assert not results[n]["found"] and not results[n + 1]["found"]


def test_the_hint_is_downloaded_once_and_cached_on_disk(store: ServiceStore,
                                                        tmp_path: Path) -> None:
    _publish(store)
    srv = Server(store)
    client = srv.client(tmp_path / "cache")
    client.query("risk", [13800000001])
    first = client.received
    client.query("risk", [13800000002])
    assert client.received - first < first / 10
    # a new client process finds it on disk
    srv2 = Server(store)
    fresh = srv2.client(tmp_path / "cache")
    fresh.query("risk", [13800000003])
    assert [op for op, _ in srv2.served] == ["oprf", "query"]


def test_re_encoding_switches_versions_and_the_client_follows(store: ServiceStore,
                                                              tmp_path: Path) -> None:
    _publish(store, scale=7)
    srv = Server(store)
    client = srv.client(tmp_path / "cache")
    assert client.query("risk", [13800000002])[0][0]["labels"]["score"] == 14
    info = _publish(store, scale=11)
    assert info["version"] == 2
    results, cost = client.query("risk", [13800000002])
    assert results[0]["labels"]["score"] == 22 and cost["version"] == 2
    # the version before stays (a query in flight may name it); older ones go
    _publish(store, scale=13)
    names = sorted(p.name for p in (store.root / "risk").iterdir() if p.name.startswith("v"))
    assert names == ["v2", "v3"]


def test_a_stale_version_is_refused_with_409(store: ServiceStore) -> None:
    _publish(store)
    _publish(store)
    with pytest.raises(PirError, match="re-encoded: version 2 is current, not 1") as exc:
        store.answer_oprf("risk", 1, bytes(32))
    assert exc.value.status == 409


def test_queries_are_answered_from_the_old_version_while_a_new_one_is_built(
        store: ServiceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _publish(store)
    client = Server(store).client(tmp_path / "cache")
    client.query("risk", [13800000001])
    gate, building = threading.Event(), threading.Event()
    real_hint = scheme.hint

    def slow_hint(*args: Any) -> Any:
        building.set()
        gate.wait(30)
        return real_hint(*args)

    monkeypatch.setattr(scheme, "hint", slow_hint)
    t = threading.Thread(target=_publish, args=(store,), kwargs={"scale": 3})
    t.start()
    try:
        assert building.wait(30)
        assert client.query("risk", [13800000002])[0][0]["labels"]["score"] == 14
        with pytest.raises(PirError, match="being encoded already") as exc:
            _publish(store)
        assert exc.value.status == 409
        assert store.describe("risk")["encoding"] is True
    finally:
        gate.set()
        t.join(60)
    assert client.query("risk", [13800000002])[0][0]["labels"]["score"] == 6


def test_a_crash_mid_build_leaves_the_current_version_serving(
        store: ServiceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _publish(store)
    monkeypatch.setattr(scheme, "hint", lambda *a: (_ for _ in ()).throw(MemoryError("boom")))
    with pytest.raises(MemoryError):
        _publish(store, scale=3)
    assert store.describe("risk")["version"] == 1
    assert Server(store).client(tmp_path / "c").query("risk", [13800000002])[0][0][
        "labels"]["score"] == 14


@pytest.mark.parametrize(("keys", "labels", "match"), [
    (pa.array([1, 2, 2]), {"v": pa.array(["a", "b", "c"])}, "1 repeated key"),
    (pa.array([1, None]), {"v": pa.array(["a", "b"])}, "null id"),
    (pa.array([1.5, 2.5]), {"v": pa.array(["a", "b"])}, "not supported"),
    (pa.array([1, 2]), {}, "at least one label"),
    (pa.array([1]), {"v": pa.array(["x" * 5000])}, "over 4096"),
    (pa.array(["a", ""]), {"v": pa.array(["a", "b"])}, "1 empty key"),
])
def test_bad_services_are_refused(store: ServiceStore, keys: pa.Array,
                                  labels: dict[str, pa.Array], match: str) -> None:
    with pytest.raises(Exception, match=match):
        store.publish("bad", keys, labels, source={})
    assert store.names() == []


@pytest.mark.parametrize(("keys", "match"), [
    ([], "no keys"), (["1"] * (MAX_BATCH + 1), "split them"),
    (["12a"], "not an integer"), ([1.5], "float, not text"), ([True], "bool, not text"),
    (["9" * 30], "not an integer")])
def test_bad_keys_are_refused_before_anything_is_sent(store: ServiceStore, tmp_path: Path,
                                                      keys: list[Any], match: str) -> None:
    _publish(store)
    srv = Server(store)
    with pytest.raises(PirError, match=match):
        srv.client(tmp_path / "c").query("risk", keys)
    assert [op for op, _ in srv.served] == ["hint"]


def test_unknown_service(store: ServiceStore, tmp_path: Path) -> None:
    with pytest.raises(PirError, match="no service named nope") as exc:
        Server(store).client(tmp_path / "c").query("nope", ["1"])
    assert exc.value.status == 404


# -- malformed requests from a peer --------------------------------------------------------------

@pytest.mark.parametrize(("request_", "payload", "match"), [
    ("not a dict", None, "a request is"),
    ({"op": "drop"}, None, "op one of"),
    ({"op": "info", "service": "../x"}, None, "service name"),
    ({"op": "query", "service": "risk", "version": 1, "count": 2}, b"\x00" * 7,
     "malformed query"),
    ({"op": "query", "service": "risk", "version": 1, "count": 0}, b"", "a batch is"),
    ({"op": "query", "service": "risk", "version": 1, "count": MAX_BATCH + 1}, b"x",
     "a batch is"),
    ({"op": "oprf", "service": "risk", "version": 1, "count": 1}, b"\x01" * 32,
     "not a valid|refused"),
    ({"op": "oprf", "service": "risk", "version": 1, "count": 2}, b"\x01" * 32, "64 bytes"),
    ({"op": "hint", "service": "risk", "version": "1"}, None, "re-encoded"),
])
def test_malformed_requests_get_a_clear_refusal_and_the_session_goes_on(
        store: ServiceStore, request_: Any, payload: bytes | None, match: str) -> None:
    _publish(store)
    srv = Server(store)
    s = srv.client_side
    s.send(request_)
    if payload is not None:
        s.send_bytes(payload)
    reply = s.recv(timeout=30)
    assert reply["code"] >= 400 and reply["data"] is None
    import re

    assert re.search(match, reply["msg"]), reply["msg"]
    s.send({"op": "info", "service": "risk"})
    assert s.recv(timeout=30)["data"]["records"] == 500  # still serving
    assert srv.thread.is_alive()


def test_a_client_that_vanishes_mid_answer_ends_only_its_session(store: ServiceStore,
                                                                 tmp_path: Path) -> None:
    _publish(store)
    srv = Server(store)
    srv.client_side.send({"op": "hint", "service": "risk", "version": 1})
    srv.client_side.abort("client killed")
    srv.thread.join(30)
    assert not srv.thread.is_alive()
    # the store serves the next client
    assert Server(store).client(tmp_path / "c").query("risk", [13800000001])[0][0]["found"]


def test_a_server_that_vanishes_mid_answer_is_a_clear_error(store: ServiceStore,
                                                            tmp_path: Path) -> None:
    _publish(store)
    srv = Server(store)
    client = srv.client(tmp_path / "c")
    real = store.answer_queries

    def die(*args: Any) -> bytes:
        srv.server_side.abort("server killed")
        return real(*args)

    store.answer_queries = die  # type: ignore[method-assign]
    with pytest.raises(PirError, match="lost mid-request") as exc:
        client.query("risk", [13800000001])
    assert exc.value.status == 502


def test_a_corrupt_hint_download_is_refused(store: ServiceStore, tmp_path: Path) -> None:
    _publish(store)
    path = store.root / "risk" / "v1" / "hint.u32"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(PirError, match="does not match its description"):
        Server(store).client(tmp_path / "c").query("risk", [13800000001])


def test_a_truncated_matrix_is_refused_not_read(store: ServiceStore) -> None:
    _publish(store)
    path = store.root / "risk" / "v1" / "matrix.u8"
    path.write_bytes(path.read_bytes()[:-1])
    store._loaded.clear()
    with pytest.raises(PirError, match="missing or truncated") as exc:
        store.loaded("risk")
    assert exc.value.status == 500


def test_the_server_asks_before_every_request_and_a_refusal_is_clear(
        store: ServiceStore, tmp_path: Path) -> None:
    _publish(store)
    asked: list[tuple[str, str | None, int]] = []

    def allow(op: str, service: str | None, count: int) -> None:
        asked.append((op, service, count))
        if op == "query":
            raise PirError("peer node-a has used its key budget (10 per hour)", 429)

    with pytest.raises(PirError, match="used its key budget") as exc:
        Server(store, allow).client(tmp_path / "c").query("risk", [13800000001, 13800000002])
    assert exc.value.status == 429
    assert asked == [("info", "risk", 0), ("hint", "risk", 0), ("oprf", "risk", 2),
                     ("query", "risk", 2)]


def test_big_batches_are_split_to_what_one_message_holds(
        store: ServiceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.operators.pir import service as svc

    shape = _publish(store)
    # 7 keys a request at this shape (the next version has the same one: same records)
    monkeypatch.setattr(svc, "MAX_MESSAGE", 4 * max(shape["rows"], shape["cols"]) * 7)
    info = _publish(store)
    assert (info["rows"], info["cols"]) == (shape["rows"], shape["cols"])
    assert info["max_batch"] == 7 < 20
    srv = Server(store)
    keys = [13800000000 + i for i in range(20)]
    results, _ = srv.client(tmp_path / "c").query("risk", keys)
    assert all(r["found"] for r in results)
    assert [f["count"] for op, f in srv.served if op == "query"] == [7, 7, 6]
    with pytest.raises(PirError, match=r"a batch of service risk is 1\.\.7"):
        store.answer_queries("risk", 2, 8, bytes(8 * info["cols"] * 4))


def test_unpublish_rotates_the_key_and_versions_are_never_reused(store: ServiceStore,
                                                                 tmp_path: Path) -> None:
    first = _publish(store)
    store.remove("risk")
    assert store.names() == []
    again = _publish(store)
    assert again["version"] == first["version"] + 1
    assert again["oprf"]["key_public"] != first["oprf"]["key_public"]
    assert again["oprf"]["key_version"] == first["oprf"]["key_version"] + 1
    rotated = store.publish("risk", pa.array([5, 6]), {"v": pa.array(["a", "b"])}, source={},
                            rotate_key=True)
    assert rotated["oprf"]["key_version"] == again["oprf"]["key_version"] + 1
    assert Server(store).client(tmp_path / "c").query("risk", [6])[0][0]["labels"] == {"v": "b"}


def test_a_left_over_version_directory_does_not_block_publishing(store: ServiceStore) -> None:
    _publish(store)
    (store.root / "risk" / "v2").mkdir()  # as if a build crashed after its rename
    (store.root / "risk" / "LAST_VERSION").write_text("1\n")
    assert _publish(store)["version"] == 3


@pytest.mark.parametrize(("change", "match"), [
    ({"protocol": 2}, "protocol 2"),
    ({"lwe": {"n": 512, "log_q": 32, "p": 256, "sigma": 6.4}}, "LWE parameters"),
    ({"version": "1"}, "not a positive integer"),
    ({"name": "../etc"}, "a bad name"),
    ({"label_types": ["int"]}, "do not match"),
    ({"label_types": ["int", "string", "float", "date"]}, "do not match"),
    ({"seed": "zz" * 16}, "malformed seed"),
    ({"rows": 7}, "bad shape"),
    ({"max_batch": 5000}, "batches of 5000"),
    ({"cost": {"hint_bytes": "big"}}, "cost figures"),
])
def test_a_malformed_service_description_is_refused(store: ServiceStore, change: dict,
                                                    match: str) -> None:
    info = {**store.public_info(_publish(store)["name"]), **change}
    with pytest.raises(PirError, match=match) as exc:
        wire.check_info(info, "node-b")
    assert exc.value.status == 502


def test_labels_that_do_not_parse_as_their_type_are_an_error_not_a_value() -> None:
    from appliance.operators.pir.service import typed

    assert typed("42", "int") == 42 and typed("false", "bool") is False
    for value, kind in (("4x", "int"), ("yes", "bool"), ("nan?", "float"), ("1", "date")):
        with pytest.raises(PirError, match=f"is not a {kind}"):
            typed(value, kind)


def test_text_keys_are_taken_exactly(store: ServiceStore, tmp_path: Path) -> None:
    store.publish("names", pa.array(["a", " a", "b "]),
                  {"v": pa.array(["plain", "leading", "trailing"])}, source={})
    results, _ = Server(store).client(tmp_path / "c").query("names", ["a", " a", "b ", "b"])
    assert [r["labels"].get("v") for r in results] == ["plain", "leading", "trailing", None]
