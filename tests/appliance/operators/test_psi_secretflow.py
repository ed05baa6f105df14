"""PSI's ``secretflow`` provider: SecretFlow's real engine (spu 0.9.5 from build/reference-venv,
one process per party) with both parties in this process over in-memory sessions, its link
carried by the engine relay; and a hand-driven dishonest peer for the relay's fault cases."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from appliance.federation.channel import memory_pair
from appliance.operators import engines
from appliance.operators.base import OperatorError
from appliance.operators.engine_relay import HEADER, MAGIC, OPEN
from appliance.operators.psi import PSI
from appliance.operators.psi.secretflow import HELLO, engine_keys
from tests.appliance.operators.test_psi import (
    GUEST,
    HOST,
    EmptyReader,
    context,
    dataset,
    payload_dataset,
    psi,
    read_rows,
    read_table,
    run_two,
    sets,
)

SF = {"provider": "secretflow"}


def no_scratch_left(tmp_path: Path) -> None:
    """The engine's input, output and spu's scratch files are gone once the job ends."""
    assert not [p for p in tmp_path.rglob(".secretflow-*")], "engine scratch left behind"


def no_engine_running() -> None:
    deadline = time.monotonic() + 10
    while any("spu_engine.py" in " ".join(p.info["cmdline"] or [])
              for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "an engine process outlived its job"
        time.sleep(0.1)


@pytest.mark.parametrize(("protocol", "reveal", "n_guest", "n_host", "overlap"), [
    ("rr22", "both", 0, 5, 0),
    ("rr22", "both", 7, 0, 0),
    ("rr22", "both", 1, 1, 1),
    ("rr22", "initiator", 1, 1, 0),
    ("rr22", "both", 3000, 2500, 700),
    ("kkrt", "initiator", 2000, 3000, 900),
    ("ecdh", "both", 1500, 1000, 400),
])
def test_exact_intersection(tmp_path, protocol, reveal, n_guest, n_host, overlap):
    guest, host = sets(n_guest, n_host, overlap, seed=n_guest * 7 + n_host)
    res = psi(tmp_path, guest, host, {**SF, "protocol": protocol, "reveal": reveal})
    for node, r in res.items():
        assert not isinstance(r, Exception), (node, r)
        assert r["intersection_size"] == overlap
        assert (r["provider"], r["protocol"], r["engine"]) == (
            "secretflow", protocol, f"spu {engines.SECRETFLOW_VERSION}")
    want = set(guest) & set(host)
    got = read_rows(res[GUEST])
    assert set(got) == want and len(got) == overlap
    assert got == [v for v in guest if v in want]  # the data set's own order, as pec
    if reveal == "both":
        got = read_rows(res[HOST])
        assert set(got) == want and len(got) == overlap
    else:
        assert res[HOST]["learned"] == "size" and "rows_file" not in res[HOST]
    no_scratch_left(tmp_path)


def test_a_large_set_gives_the_exact_intersection(tmp_path):
    # 2 x 10^5 per side through the real engine (10^6 runs in `bench psi --end-to-end`)
    guest, host = sets(200_000, 200_000, 61_234, seed=3)
    res = psi(tmp_path, guest, host, SF)
    assert all(not isinstance(r, Exception) for r in res.values()), res
    want = set(guest) & set(host)
    assert set(read_rows(res[GUEST])) == want == set(read_rows(res[HOST]))
    assert res[GUEST]["link_bytes_sent"] == res[HOST]["link_bytes_received"] > 0


class MemoryReader:
    """A data set held in memory: ids the registry's CSV reader would not take (a 1 MB field
    with a newline straddles its blocks); a non-UTF-8 file it refuses by name."""

    fingerprint, id_column = "f" * 64, "id"

    def __init__(self, ids: list[str]) -> None:
        self.table = pa.table({"id": pa.array(ids, pa.string()),
                               "n": pa.array(range(len(ids)), pa.int64())})

    def batches(self, columns=None):
        return iter(self.table.select(columns or self.table.column_names).to_batches(1000))


def test_ids_no_csv_field_could_carry_match_exactly(tmp_path):
    # commas, quotes, newlines, non-ASCII, NUL and a 1 MB id reach the engine as 32 hex digits
    odd = ["a,b", 'say "hi"', "line\nbreak", "ünïcødé", "nul\x00byte", "x" * (1 << 20),
           " lead"]
    guest, host = [*odd, "only-guest"], ["only-host", *odd[::-1]]
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, MemoryReader(guest), SF, tmp_path / "g"),
                   context(HOST, b, MemoryReader(host), SF, tmp_path / "h")])
    assert all(not isinstance(r, Exception) for r in res.values()), res
    assert res[GUEST]["intersection_size"] == res[HOST]["intersection_size"] == len(odd)
    for node in (GUEST, HOST):
        got = pacsv.read_csv(res[node]["rows_file"], convert_options=pacsv.ConvertOptions(
            column_types={"id": pa.string()})).column("id").to_pylist()
        assert sorted(got) == sorted(odd)


def test_engine_keys_are_the_same_for_the_same_id_text():
    a = engine_keys(pa.array(["42", "x"]))
    b = engine_keys(pa.array([42]).cast(pa.int64()))
    assert a[0] == b[0] and a[0] != a[1] and len(a[0].as_py()) == 32


def test_join_rows_line_up_at_both_parties(tmp_path):
    guest, host = sets(2000, 1800, 650, seed=11)
    g_data = payload_dataset(tmp_path, "guest", ["id", "age"],
                             [[v, i] for i, v in enumerate(guest)])
    h_data = payload_dataset(tmp_path, "host", ["score", "id"],
                             [[i * 2, v] for i, v in enumerate(host)])
    params = {**SF, "join": "age", "peer_join": "score"}
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, g_data, params, tmp_path / "g"),
                   context(HOST, b, h_data, params, tmp_path / "h")])
    assert all(not isinstance(r, Exception) for r in res.values()), res
    g_head, g_body = read_table(res[GUEST])
    h_head, h_body = read_table(res[HOST])
    assert (g_head, h_head) == (["id", "age"], ["id", "score"])
    assert [r[0] for r in g_body] == [r[0] for r in h_body]  # row k: the same id
    assert set(r[0] for r in g_body) == set(guest) & set(host)
    assert all(guest[int(r[1])] == r[0] for r in g_body)
    assert all(host[int(r[1]) // 2] == r[0] for r in h_body)


@pytest.mark.parametrize(("params", "needle"), [
    ({**SF, "reveal": "cardinality"}, "no reveal=cardinality"),
    ({**SF, "buckets": 4}, "no buckets parameter"),
    ({**SF, "resume": "job:1:x"}, "no resume parameter"),
    ({**SF, "mode": "unbalanced"}, "mode=balanced only"),
    ({**SF, "protocol": "bc22"}, "runs protocol rr22, kkrt, ecdh"),
    ({"protocol": "rr22"}, "provider pec runs protocol ecdh"),
    ({"provider": "fate"}, "provider must be pec or secretflow"),
])
def test_what_the_provider_cannot_do_is_refused_by_name(tmp_path, params, needle):
    res = psi(tmp_path, ["a", "b"], ["b"], params)
    for r in res.values():
        assert isinstance(r, OperatorError) and needle in str(r), r


def test_a_node_without_the_engine_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv(engines.SECRETFLOW_ENV, str(tmp_path / "nowhere" / "python"))
    res = psi(tmp_path, ["a"], ["a"], SF)
    for r in res.values():
        assert isinstance(r, OperatorError), r
        assert "has no secretflow engine" in str(r) and "make reference-venv" in str(r)


def test_an_empty_set_needs_no_engine_and_gives_an_empty_result(tmp_path):
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    res = run_two([context(GUEST, a, EmptyReader(), SF, tmp_path / "g"),
                   context(HOST, b, dataset(tmp_path, "host", ["x", "y"]), SF, tmp_path / "h")])
    assert [r["intersection_size"] for r in res.values()] == [0, 0], res
    assert read_rows(res[GUEST]) == [] == read_rows(res[HOST])


@pytest.mark.parametrize("when", ["starting", "in the protocol"])
def test_an_engine_killed_mid_job_fails_both_parties_and_leaves_nothing(tmp_path, when):
    guest, host = sets(300_000, 300_000, 1000, seed=5)
    stop = threading.Event()
    killed: list[int] = []

    def kill_the_hosts_engine() -> None:
        while not stop.is_set():
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "spu_engine.py" in cmd and "--role 1" in cmd:
                    # before it listens, or inside the protocol: once its link is up
                    while when != "starting" and not stop.is_set() and not [
                            c for c in p.net_connections() if c.status == "ESTABLISHED"]:
                        time.sleep(0.01)
                    time.sleep(0.2)
                    p.kill()
                    killed.append(p.pid)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_hosts_engine)
    killer.start()
    try:
        res = psi(tmp_path, guest, host, SF)
    finally:
        stop.set()
        killer.join()
    assert killed
    assert isinstance(res[HOST], OperatorError), res[HOST]
    assert "secretflow engine exited with code -9" in str(res[HOST])
    assert isinstance(res[GUEST], OperatorError), res[GUEST]
    assert f"party {HOST}'s engine failed" in str(res[GUEST])
    assert not list(tmp_path.rglob("psi-*.csv")), "a partial result was written"
    no_scratch_left(tmp_path)
    no_engine_running()


def _dishonest_host(session: Any, frames: list[bytes], rows: int = 3) -> None:
    """Answers the handshake as an honest host would, then sends ``frames`` for the relay."""
    mine = session.recv(timeout=20)
    session.send({**HELLO, **{k: mine[k] for k in ("protocol", "engine", "reveal", "join")},
                  "role": "host", "rows": rows})
    for f in frames:
        session.send_bytes(f)
    time.sleep(1)


@pytest.mark.parametrize(("frames", "needle"), [
    ([b"ER"], "shorter than its"),
    ([HEADER.pack(MAGIC, b"Z", 1)], "malformed relay frame"),
    ([HEADER.pack(MAGIC, b"D", 5) + b"data"], "never opened"),
    ([HEADER.pack(MAGIC, OPEN, 2)], "an id of this node's side"),
    ([b"not a relay frame at all"], "while the engines ran"),
])
def test_a_malformed_relay_frame_fails_the_job_and_stops_the_engine(tmp_path, frames, needle):
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))
    peer = threading.Thread(target=_dishonest_host, args=(b, frames))
    peer.start()
    ctx = context(GUEST, a, dataset(tmp_path, "guest", ["a", "b", "c"]), SF, tmp_path / "g")
    with pytest.raises(OperatorError, match=needle):
        PSI.run(ctx)
    peer.join()
    assert not list(tmp_path.rglob("psi-*.csv"))
    no_scratch_left(tmp_path)
    no_engine_running()


def test_a_handshake_that_disagrees_is_refused(tmp_path):
    a, b = memory_pair("job:7:ab", "psi", names=(GUEST, HOST))

    def peer() -> None:
        b.recv(timeout=20)
        b.send({**HELLO, "protocol": "kkrt", "engine": "spu 0.9.5", "reveal": "both",
                "join": False, "role": "host", "rows": 3})

    t = threading.Thread(target=peer)
    t.start()
    ctx = context(GUEST, a, dataset(tmp_path, "guest", ["a"]), SF, tmp_path / "g")
    with pytest.raises(OperatorError, match="runs protocol='kkrt', this node 'rr22'"):
        PSI.run(ctx)
    t.join()


def test_parties_whose_engines_disagree_fail_and_write_nothing(tmp_path, monkeypatch):
    from appliance.operators.psi import secretflow

    real = secretflow._read_output

    def other_keys_at_the_host(out: Path, n: int):
        rows, digest = real(out, n)
        if (tmp_path / "h") in out.parents:  # as many rows, other ids: only the digest tells
            return rows, "0" * 64
        return rows, digest

    monkeypatch.setattr(secretflow, "_read_output", other_keys_at_the_host)
    guest, host = sets(500, 400, 120, seed=9)
    res = psi(tmp_path, guest, host, SF)
    for r in res.values():
        assert isinstance(r, OperatorError) and "results disagree" in str(r), r
    assert not list(tmp_path.rglob("psi-*.csv")), "a disputed result was written"
