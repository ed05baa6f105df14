"""The pec ECDH-PSI operator with both parties in one process over in-memory sessions (the real
session code), real data sets, and a hand-driven dishonest peer for the fault cases."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
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
from appliance.operators.base import REGISTRY, OperatorError, PartyContext, run_parties
from appliance.operators.psi import PSI, ecdh_engine, stated_for
from appliance.operators.psi.protocol import HELLO, encode_batch
from tests.appliance.operators.readers import Reader

GUEST, HOST = "bank-a", "carrier-b"
ROLES = {GUEST: "guest", HOST: "host"}


class EmptyReader:
    """A set with no rows (the registry refuses empty files, an operator must not)."""

    fingerprint, id_column = "0" * 64, "id"

    def batches(self, columns=None):
        return iter(())


def dataset(tmp_path: Path, name: str, ids: list[Any]) -> Reader | EmptyReader:
    if not ids:
        return EmptyReader()
    path = tmp_path / f"{name}.csv"
    path.write_text("id,x\n" + "".join(f"{v},{i}\n" for i, v in enumerate(ids)))
    registry = DatasetRegistry(sqlite3.connect(tmp_path / f"{name}.db", check_same_thread=False))
    registry.add(name, str(path), "id", actor="test")
    return Reader(registry, name)


def context(node: str, session: Any, data: Any, params: dict[str, Any], out: Path | None,
            parties: dict[str, str] | None = None) -> PartyContext:
    parties = parties or ROLES
    ctx = PartyContext(job_id="job:7:ab", role=parties[node], node_id=node,
                       parties=dict(parties), sessions={p: session for p in parties if p != node},
                       params=dict(params), dataset=data, timeout=20)
    ctx.output_dir = out  # type: ignore[attr-defined]  # the node's own, not a job parameter
    return ctx


def run_two(ctxs: list[PartyContext]) -> dict[str, Any]:
    return run_parties(PSI.run, ctxs, timeout=60)


def sets(n_guest: int, n_host: int, overlap: int, seed: int) -> tuple[list[str], list[str]]:
    rnd = random.Random(seed)
    pool = [f"c{v:012x}" for v in rnd.sample(range(1 << 40), n_guest + n_host - overlap)]
    common = pool[:overlap]
    guest = common + pool[overlap:n_guest]
    host = common + pool[n_guest:]
    rnd.shuffle(guest)
    rnd.shuffle(host)
    return guest, host


def psi(tmp_path: Path, guest_ids: list[Any], host_ids: list[Any], params: dict[str, Any]):
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    ctxs = [context(GUEST, a, dataset(tmp_path, "guest", guest_ids), params, tmp_path / "g"),
            context(HOST, b, dataset(tmp_path, "host", host_ids), params, tmp_path / "h")]
    return run_two(ctxs)


def read_rows(result: dict[str, Any]) -> list[str]:
    path = Path(result["rows_file"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result["rows_sha256"]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id"]
    return [r[0] for r in rows[1:]]


@pytest.mark.parametrize("reveal", ["both", "initiator", "cardinality"])
@pytest.mark.parametrize(
    ("n_guest", "n_host", "overlap"),
    [(0, 5, 0), (7, 0, 0), (1, 1, 1), (1, 1, 0), (1000, 1200, 300), (20_000, 20_000, 5_000)],
)
def test_exact_intersection(tmp_path, reveal, n_guest, n_host, overlap):
    guest, host = sets(n_guest, n_host, overlap, seed=n_guest * 31 + n_host)
    started = time.perf_counter()
    res = psi(tmp_path, guest, host, {"reveal": reveal, "batch_size": 4096})
    took = time.perf_counter() - started
    for node, r in res.items():
        assert not isinstance(r, Exception), (node, r)
        assert r["intersection_size"] == overlap
    want = set(guest) & set(host)
    g, h = res[GUEST], res[HOST]
    assert (g["own_rows"], g["peer_rows"]) == (n_guest, n_host)
    if reveal == "cardinality":
        assert g["learned"] == h["learned"] == "size"
        assert "rows_file" not in g and "rows_file" not in h
    else:
        got = read_rows(g)
        assert set(got) == want and len(got) == overlap
        assert got == [v for v in guest if v in want]  # in the data set's own order
    if reveal == "both":
        got = read_rows(h)
        assert set(got) == want and len(got) == overlap
    elif reveal == "initiator":
        assert h["learned"] == "size" and "rows_file" not in h
    if n_guest >= 20_000:
        print(f"\npsi {reveal} {n_guest}x{n_host}: {took:.2f} s (both parties, one process)")


def test_integer_and_string_ids_match_by_their_text(tmp_path):
    res = psi(tmp_path, [1, 2, 3, 40], ["3", "40", "500"], {"reveal": "both"})
    assert res[GUEST]["intersection_size"] == 2, res
    assert read_rows(res[GUEST]) == ["3", "40"]
    assert read_rows(res[HOST]) == ["3", "40"]


# -- join: payload columns aligned row for row -----------------------------------------------

def payload_dataset(tmp_path: Path, name: str, header: list[str], rows: list[list[Any]]):
    path = tmp_path / f"{name}.csv"
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n"
                                                       for r in rows))
    registry = DatasetRegistry(sqlite3.connect(tmp_path / f"{name}.db", check_same_thread=False))
    registry.add(name, str(path), "id", actor="test")
    return Reader(registry, name)


def read_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    path = Path(result["rows_file"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == result["rows_sha256"]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize(("n_guest", "n_host", "overlap"),
                         [(1, 1, 1), (50, 40, 0), (3000, 2500, 700)])
def test_join_writes_payload_rows_aligned_row_for_row(tmp_path, n_guest, n_host, overlap):
    guest, host = sets(n_guest, n_host, overlap, seed=n_guest + 7)
    g_rows = {v: [i * 3, f"city{i % 17}"] for i, v in enumerate(guest)}
    h_rows = {v: [f"s{i}"] for i, v in enumerate(host)}
    g_data = payload_dataset(tmp_path, "guest", ["id", "age", "city", "other"],
                             [[v, *g_rows[v], "x"] for v in guest])
    h_data = payload_dataset(tmp_path, "host", ["score", "id"], [[*h_rows[v], v] for v in host])
    # the CLI's form: comma-separated strings; the host's id named again is written once
    params = {"reveal": "both", "join": "age,city", "peer_join": "score,id", "batch_size": 512}
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, g_data, params, tmp_path / "g"),
                   context(HOST, b, h_data, params, tmp_path / "h")])
    for node, r in res.items():
        assert not isinstance(r, Exception), (node, r)
        assert r["intersection_size"] == overlap and r["order"] == "aligned"
    g_head, g_body = read_table(res[GUEST])
    h_head, h_body = read_table(res[HOST])
    assert g_head == res[GUEST]["columns"] == ["id", "age", "city"]
    assert h_head == res[HOST]["columns"] == ["id", "score"]
    g_ids, h_ids = [r[0] for r in g_body], [r[0] for r in h_body]
    assert g_ids == h_ids  # row k is the same id on both sides
    assert set(g_ids) == set(guest) & set(host) and len(g_ids) == overlap
    assert all([int(r[1]), r[2]] == g_rows[r[0]] for r in g_body)
    assert all([r[1]] == h_rows[r[0]] for r in h_body)


def test_join_with_only_the_hosts_columns_gives_the_guest_its_ids_aligned(tmp_path):
    guest, host = sets(300, 200, 120, seed=5)
    g_data = dataset(tmp_path, "guest", guest)
    h_data = payload_dataset(tmp_path, "host", ["id", "score"],
                             [[v, i] for i, v in enumerate(host)])
    params = {"reveal": "both", "peer_join": ["score"]}  # the API's form: a list
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, g_data, params, tmp_path / "g"),
                   context(HOST, b, h_data, params, tmp_path / "h")])
    g_head, g_body = read_table(res[GUEST])
    h_head, h_body = read_table(res[HOST])
    assert (g_head, h_head) == (["id"], ["id", "score"])
    assert [r[0] for r in g_body] == [r[0] for r in h_body]
    assert len(g_body) == 120
    # without join the rows keep the data set's order; with it, the shared order
    assert [r[0] for r in g_body] != [v for v in guest if v in set(host)]


def test_join_with_an_empty_set_gives_empty_files_with_the_columns(tmp_path):
    h_data = payload_dataset(tmp_path, "host", ["id", "score"], [["a", 1], ["b", 2]])
    params = {"reveal": "both", "join": "age", "peer_join": "score"}
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, EmptyReader(), params, tmp_path / "g"),
                   context(HOST, b, h_data, params, tmp_path / "h")])
    assert read_table(res[GUEST]) == (["id", "age"], [])
    assert read_table(res[HOST]) == (["id", "score"], [])


def test_join_naming_a_column_the_data_set_lacks_is_refused_by_name(tmp_path):
    a, _ = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    data = payload_dataset(tmp_path, "guest", ["id", "age"], [["a", 1], ["b", 2]])
    ctx = context(GUEST, a, data, {"reveal": "both", "join": "age,income"}, tmp_path / "g")
    with pytest.raises(OperatorError, match=r"join columns age, income: .*no column \"income\""):
        PSI.run(ctx)
    assert not (tmp_path / "g").exists()  # failed before the exchange, no output


def test_join_on_one_side_only_is_refused_by_the_other(tmp_path):
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, dataset(tmp_path, "guest", ["a", "b"]),
                           {"reveal": "both", "join": "x"}, tmp_path / "g"),
                   context(HOST, b, dataset(tmp_path, "host", ["a"]), {"reveal": "both"},
                           tmp_path / "h")])
    assert isinstance(res[GUEST], OperatorError), res
    assert "runs without join, this node with" in str(res[GUEST])
    assert "runs with join, this node without" in str(res[HOST])


def test_the_operator_is_registered_and_states_what_leaves():
    assert REGISTRY["psi"] is PSI
    assert PSI.family == "psi" and PSI.roles == ("guest", "host")
    assert PSI.stated(None, {"reveal": "both"}) == {"reveal": "both"}
    assert PSI.stated(None, {"reveal": "cardinality"}) == {"reveal": "count"}
    # without the role, the more revealing side's view
    assert PSI.stated(None, {"reveal": "initiator"}) == {"reveal": "peer"}
    assert stated_for("guest", {"reveal": "initiator"}) == {"reveal": "self"}
    assert stated_for("host", {"reveal": "initiator"}) == {"reveal": "peer"}
    assert PSI.stated(None, {}) == {"reveal": "both"}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"reveal": "everything"}, "reveal must be one of"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"output_dir": "/etc"}, "not a job parameter"),
        ({"join": "x", "reveal": "initiator"}, "join needs reveal=both"),
        ({"peer_join": "x", "reveal": "cardinality"}, "join needs reveal=both"),
        ({"join": 5}, "join must be a comma-separated list"),
        ({"join": "a,,b"}, "join has an empty column name"),
        ({"colour": 1}, "unknown parameter"),
    ],
)
def test_bad_parameters_are_refused(tmp_path, params, needle):
    a, _ = memory_pair("j", "psi", names=(GUEST, HOST))
    ctx = context(GUEST, a, EmptyReader(), params, tmp_path)
    with pytest.raises(OperatorError, match=needle):
        PSI.run(ctx)


def test_three_parties_are_refused(tmp_path):
    a, _ = memory_pair("j", "psi", names=(GUEST, HOST))
    parties = {GUEST: "guest", HOST: "host", "hospital-c": "host"}
    ctx = context(GUEST, a, EmptyReader(), {}, tmp_path, parties)
    with pytest.raises(OperatorError, match="exactly two parties; this job has 3"):
        PSI.run(ctx)


def test_a_session_without_byte_messages_is_refused(tmp_path):
    class JsonOnly:
        def send(self, obj): ...
        def recv(self, timeout=None): ...

    ctx = context(GUEST, JsonOnly(), EmptyReader(), {}, tmp_path)
    with pytest.raises(OperatorError, match="cannot carry byte messages"):
        PSI.run(ctx)


# -- a dishonest or broken peer, driven by hand -------------------------------------------------

def honest_guest(tmp_path: Path, ids: list[str], reveal: str = "both"):
    """Starts the honest guest; returns the fake host's session and a way to get the outcome."""
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    ctx = context(GUEST, a, dataset(tmp_path, "guest", ids), {"reveal": reveal}, tmp_path / "g")
    ctx.timeout = 10
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["result"] = PSI.run(ctx)
        except Exception as exc:
            out["result"] = exc

    t = threading.Thread(target=go)
    t.start()

    def outcome() -> Any:
        t.join(20)
        assert not t.is_alive()
        return out["result"]

    hello = b.recv(timeout=10)
    assert hello["rows"] == len(ids) and hello["reveal"] == reveal
    return b, outcome


def fake_hello(b, n: int, **changes) -> None:
    b.send({**HELLO, "reveal": "both", "role": "host", "rows": n, **changes})
    b.send({"bucket": 0, "rows": n})  # one bucket: the whole set


def honest_points(ids: list[str]) -> np.ndarray:
    return ecdh_engine.mul(ecdh_engine.hash_to_point(pa.array(ids)), ecdh_engine.new_scalar())


@pytest.mark.parametrize(
    ("batches", "rows", "needle"),
    [
        # a low-order point (u = 0): not the hash of an id
        ([encode_batch(1, 0, np.zeros((3, 32), np.uint8), True)], 3,
         r"low-order point \(stage-1 batch 0, item 0\)"),
        # the header says 3 points, the batch carries 2
        ([encode_batch(1, 0, honest_points(["x", "y"]), True)[:16].replace(
            b"\x02\x00\x00\x00", b"\x03\x00\x00\x00") + honest_points(["x", "y"]).tobytes()],
         3, "says 3 values but carries 64 bytes"),
        # 5 points announced, 3 sent
        ([encode_batch(1, 0, honest_points(["x", "y", "z"]), True)], 5,
         "announced 5 points but sent 3"),
        # a ragged length: 40 bytes for one point
        ([encode_batch(1, 0, honest_points(["x"]), True) + b"\x01" * 8], 1,
         "carries 40 bytes, not 32"),
        # batch 1 before batch 0
        ([encode_batch(1, 1, honest_points(["x"]), True)], 1, "batch 1 where batch 0 was due"),
        # more points than announced
        ([encode_batch(1, 0, honest_points(["x", "y"]), True)], 1, "more than the 1 points"),
        # an empty batch from a party that announced rows
        ([encode_batch(1, 0, b"", False)], 1, "empty stage-1 batch 0"),
        # a header that is not ours
        ([b"JUNK" + b"\x00" * 20], 1, "malformed batch header"),
        ([b"PSI"], 1, "shorter than its header"),
    ],
)
def test_a_bad_stage_one_batch_fails_the_receiver(tmp_path, batches, rows, needle):
    b, outcome = honest_guest(tmp_path, ["x", "y", "z"])
    fake_hello(b, rows)
    for raw in batches:
        b.send_bytes(raw)
    res = outcome()
    assert isinstance(res, OperatorError), res
    assert re.search(needle, str(res)), str(res)
    assert f"party {HOST}" in str(res) or "low-order" in str(res)


def test_a_short_stage_two_answer_fails_the_learner(tmp_path):
    b, outcome = honest_guest(tmp_path, ["x", "y", "z"])
    fake_hello(b, 1)
    b.send_bytes(encode_batch(1, 0, honest_points(["x"]), True))
    # answer the guest's 3 points with 2 values
    b.send_bytes(encode_batch(2, 0, np.zeros((2, 12), np.uint8), True))
    res = outcome()
    assert isinstance(res, OperatorError), res
    assert "answered stage-1 batch 0 of 3 points with 2 values" in str(res)


def test_a_stage_two_batch_not_marked_last_fails_the_learner(tmp_path):
    b, outcome = honest_guest(tmp_path, ["x", "y", "z"])
    fake_hello(b, 1)
    b.send_bytes(encode_batch(1, 0, honest_points(["x"]), True))
    b.send_bytes(encode_batch(2, 0, np.zeros((3, 12), np.uint8), False))
    res = outcome()
    assert isinstance(res, OperatorError) and "marked stage-2 batch 0 not last" in str(res), res


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"reveal": "cardinality"}, "reveal='cardinality', this node reveal='both'"),
        ({"curve": "secp256k1"}, "curve='secp256k1'"),
        ({"role": "guest"}, "claims role 'guest'; the job made it the host"),
        ({"rows": -1}, "impossible row count"),
    ],
)
def test_a_handshake_that_disagrees_is_refused(tmp_path, changes, needle):
    b, outcome = honest_guest(tmp_path, ["x"])
    fake_hello(b, 1, **changes)
    res = outcome()
    assert isinstance(res, OperatorError) and needle in str(res), res


def test_a_control_message_in_place_of_a_batch_is_refused(tmp_path):
    b, outcome = honest_guest(tmp_path, ["x"])
    fake_hello(b, 1)
    b.send({"batch": 0})
    res = outcome()
    assert isinstance(res, OperatorError) and "control message where a batch" in str(res), res


def test_a_result_nobody_could_have_is_refused(tmp_path):
    # reveal=initiator seen from the host: the guest tells a size larger than either set
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    ctx = context(HOST, b, dataset(tmp_path, "host", ["x", "y"]), {"reveal": "initiator"},
                  tmp_path / "h")
    ctx.timeout = 10
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(r=_catch(PSI.run, ctx)))
    t.start()
    a.recv(timeout=10)
    a.send({**HELLO, "reveal": "initiator", "role": "guest", "rows": 1})
    a.send({"bucket": 0, "rows": 1})
    a.send_bytes(encode_batch(1, 0, honest_points(["x"]), True))
    a.send({"intersection_size": 5})
    t.join(20)
    assert isinstance(out["r"], OperatorError) and "impossible intersection size 5" in str(
        out["r"]), out


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        return exc


# -- the engine ---------------------------------------------------------------------------------

def test_hash_to_point_is_deterministic_and_canonical():
    ids = pa.array([f"id{i}" for i in range(1000)])
    p1, p2 = ecdh_engine.hash_to_point(ids), ecdh_engine.hash_to_point(ids)
    assert p1.shape == (1000, 32) and (p1 == p2).all()
    assert (p1[:, 31] & 0x80 == 0).all()  # bit 255 cleared
    want = hashlib.sha256(ecdh_engine.DOMAIN + b"id7").digest()
    assert p1[7].tobytes() == want[:31] + bytes([want[31] & 0x7F])
    # integers hash as their decimal text; a slice of an array hashes like a fresh array
    assert (ecdh_engine.hash_to_point(pa.array([42, 7])) ==
            ecdh_engine.hash_to_point(pa.array(["42", "7"]))).all()
    assert (ecdh_engine.hash_to_point(ids.slice(5, 3)) == p1[5:8]).all()
    assert ecdh_engine.hash_to_point(pa.array(["", "a"])).shape == (2, 32)


def test_multiplication_commutes_and_refuses_low_order_points():
    pts = ecdh_engine.hash_to_point(pa.array([f"u{i}" for i in range(2000)]))
    a, b = ecdh_engine.new_scalar(), ecdh_engine.new_scalar()
    ab = ecdh_engine.mul(ecdh_engine.mul(pts, a), b)
    ba = ecdh_engine.mul(ecdh_engine.mul(pts, b), a)
    assert (ab == ba).all()
    assert not (ab == ecdh_engine.mul(pts, a)).all()
    bad = pts.copy()
    bad[1500] = 0  # u = 0
    with pytest.raises(ecdh_engine.LowOrderPoint, match="point 1500 is of low order") as info:
        ecdh_engine.mul(bad, a)
    assert info.value.index == 1500
    one = pts[:3].copy()
    one[2] = 0
    one[2, 0] = 1  # u = 1, another small-order point
    with pytest.raises(ecdh_engine.LowOrderPoint, match="point 2 "):
        ecdh_engine.mul(one, a)


def test_members_is_exact_on_96_bits():
    rng = np.random.default_rng(1)
    theirs = rng.integers(0, 256, (5000, 12), dtype=np.uint8)
    mine = rng.integers(0, 256, (3000, 12), dtype=np.uint8)
    mine[::3] = theirs[:1000]
    near = theirs[1000:1010].copy()
    near[:, 11] ^= 1  # same 64-bit head, different tail: not a member
    mine = np.concatenate([mine, near])
    want = {bytes(r) for r in theirs}
    got = ecdh_engine.members(mine, theirs)
    assert got.tolist() == [bytes(r) in want for r in mine]
    assert ecdh_engine.members(mine[:0], theirs).shape == (0,)
    assert not ecdh_engine.members(mine, theirs[:0]).any()


def test_engine_speed_print():
    n = 20_000
    ids = pa.array([f"s{i}" for i in range(n)])
    t0 = time.perf_counter()
    pts = ecdh_engine.hash_to_point(ids)
    t1 = time.perf_counter()
    ecdh_engine.mul(pts, ecdh_engine.new_scalar())
    t2 = time.perf_counter()
    print(f"\nengine n={n} threads={ecdh_engine.threads()}: hash {t1 - t0:.3f} s, "
          f"mul {t2 - t1:.3f} s ({(t2 - t1) / n * 1e6:.1f} us/point)")


def test_the_fast_backend_agrees_with_libsodium():
    """crypto_mb's 8-lane X25519 (where the CPU and library are) gives libsodium's products,
    edge encodings and refusals included; without it libsodium serves alone."""
    rng = np.random.default_rng(3)
    pts = rng.integers(0, 256, (1003, 32), dtype=np.uint8)
    pts[5] = 0xFF  # bit 255 set and u >= p
    pts[6] = 0xFF
    pts[6, 0], pts[6, 31] = 0xEF, 0x7F  # u = p + 2, a non-canonical encoding of 2
    k = ecdh_engine.new_scalar()
    in_use = ecdh_engine.backend()
    try:
        ecdh_engine.use_backend("libsodium")
        want = ecdh_engine.mul(pts, k)
        fast = ecdh_engine.use_backend("auto")
        assert (ecdh_engine.mul(pts, k) == want).all()
        bad = pts.copy()
        bad[997] = 0
        with pytest.raises(ecdh_engine.LowOrderPoint, match="point 997 "):
            ecdh_engine.mul(bad, k)
        print(f"\nX25519 backend: {fast}")
    finally:
        ecdh_engine.use_backend("libsodium" if in_use == "libsodium" else "auto")


def test_the_benchmarks_local_pair_gives_the_exact_intersection():
    from appliance.operators.psi import run_local_pair

    guest, host = sets(3000, 2000, 700, seed=5)
    out = run_local_pair(guest, host)
    assert out["intersection"] == set(guest) & set(host)
    assert out["intersection_size"] == 700 and out["wall_s"] > 0


# -- buckets: bounded memory, and a job that resumes at a bucket --------------------------------

@pytest.mark.parametrize("reveal", ["both", "initiator", "cardinality"])
def test_buckets_give_the_exact_intersection(tmp_path, reveal):
    guest, host = sets(3000, 2500, 900, seed=5)
    res = psi(tmp_path, guest, host, {"reveal": reveal, "buckets": 7, "batch_size": 256})
    want = set(guest) & set(host)
    for r in res.values():
        assert not isinstance(r, Exception), r
        assert r["intersection_size"] == 900 and r["buckets"] == 7
    if reveal != "cardinality":
        got = read_rows(res[GUEST])
        assert got == [v for v in guest if v in want]  # the data set's order, as unbucketed
    assert not (tmp_path / "g" / "psi-checkpoint.json").exists()  # done: nothing to resume


def test_buckets_are_chosen_from_the_larger_set(tmp_path, monkeypatch):
    from appliance.operators.psi import protocol

    monkeypatch.setattr(protocol, "BUCKET_ROWS", 500)
    guest, host = sets(1200, 2100, 400, seed=6)
    res = psi(tmp_path, guest, host, {"reveal": "both"})
    assert res[GUEST]["buckets"] == res[HOST]["buckets"] == 5
    assert set(read_rows(res[HOST])) == set(guest) & set(host)


def test_join_with_buckets_stays_aligned_row_for_row(tmp_path):
    guest, host = sets(800, 900, 300, seed=7)
    gpay = payload_dataset(tmp_path, "g", ["id", "age"], [[v, len(v) + i]
                                                          for i, v in enumerate(guest)])
    hpay = payload_dataset(tmp_path, "h", ["id", "score"], [[v, i] for i, v in enumerate(host)])
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    params = {"reveal": "both", "join": "age", "peer_join": "score", "buckets": 4}
    res = run_two([context(GUEST, a, gpay, params, tmp_path / "g"),
                   context(HOST, b, hpay, params, tmp_path / "h")])
    (_, grows), (_, hrows) = read_table(res[GUEST]), read_table(res[HOST])
    assert [r[0] for r in grows] == [r[0] for r in hrows] and len(grows) == 300


def test_a_peer_lost_in_a_bucket_fails_both_and_the_job_resumes_there(tmp_path):
    guest, host = sets(2000, 2000, 700, seed=8)
    params = {"reveal": "both", "buckets": 5, "batch_size": 128}
    gdata, hdata = dataset(tmp_path, "guest", guest), dataset(tmp_path, "host", host)
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    gctx = context(GUEST, a, gdata, params, tmp_path / "job-1g")
    hctx = context(HOST, b, hdata, params, tmp_path / "job-1h")
    class Dies:
        def __getattr__(self, name: str) -> Any:
            return getattr(b, name)

        def send(self, obj: Any, *args: Any, **kw: Any) -> Any:
            if isinstance(obj, dict) and obj.get("bucket") == 3:
                b.abort("carrier-b lost power")
                raise OperatorError("carrier-b lost power")
            return b.send(obj, *args, **kw)

    hctx.sessions = {GUEST: Dies()}
    first = run_two([gctx, hctx])
    assert all(isinstance(r, Exception) for r in first.values())
    assert not list((tmp_path / "job-1g").glob("psi-*.csv"))  # no partial output
    assert json.loads((tmp_path / "job-1g" / "psi-checkpoint.json").read_text())["done"] >= 3
    # the next job names the first; each party reads its own checkpoint beside its output
    a, b = memory_pair("job:8:ab", "psi", names=(GUEST, HOST))
    again = {**params, "resume": "job-1g"}
    gctx = context(GUEST, a, gdata, again, tmp_path / "job-2g")
    hctx = context(HOST, b, hdata,
                   {**params, "resume": "job-1h"}, tmp_path / "job-2h")
    res = run_two([gctx, hctx])
    for r in res.values():
        assert not isinstance(r, Exception), r
        assert r["intersection_size"] == 700 and r["resumed_at_bucket"] == 3
    assert set(read_rows(res[GUEST])) == set(read_rows(res[HOST])) == set(guest) & set(host)
    # a job with other parameters does not resume from it
    a, b = memory_pair("job:9:ab", "psi", names=(GUEST, HOST))
    other = {"reveal": "initiator", "buckets": 5, "resume": "job-1g"}
    res = run_two([context(GUEST, a, gdata, other,
                           tmp_path / "job-3g"),
                   context(HOST, b, hdata,
                           {**other, "resume": "job-1h"}, tmp_path / "job-3h")])
    assert "other parameters" in str(res[GUEST])
