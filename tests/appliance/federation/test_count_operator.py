"""The proof operator with every party in one process over in-memory sessions (the real
session code, framing and checks), real data sets and real node keys."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.federation.channel import memory_pair
from appliance.federation.datasets import DatasetRegistry
from appliance.operators.base import (
    OperatorError,
    PartyContext,
    canonical,
    local_contexts,
    run_parties,
)
from appliance.operators.count import COUNT


class Reader:
    def __init__(self, registry: DatasetRegistry, name: str) -> None:
        self.registry, self.name = registry, name
        self.fingerprint = registry.show(name).fingerprint

    def batches(self, columns=None):
        yield from self.registry.open(self.name, columns)


def party_data(tmp_path: Path, name: str, rows: int) -> Reader:
    path = tmp_path / f"{name}.csv"
    path.write_text("id,x\n" + "".join(f"{name}{i},{i}\n" for i in range(rows)))
    registry = DatasetRegistry(sqlite3.connect(tmp_path / f"{name}.db", check_same_thread=False))
    registry.add(name, str(path), "id", actor="test")
    return Reader(registry, name)


def keys():
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, pem


def sign_with(key):
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))


def run_count(ctxs: list[PartyContext]) -> dict[str, object]:
    return run_parties(COUNT.run, ctxs, timeout=30)


def three_parties(tmp_path: Path, rows=(1000, 2500, 40)):
    names = ["bank-a", "carrier-b", "hospital-c"]
    ks = {n: keys() for n in names}
    data = {n: party_data(tmp_path, n.split("-")[1], r) for n, r in zip(names, rows, strict=True)}
    ctxs = local_contexts(names, {}, data, job_id="job-1", timeout=10)
    for c in ctxs:
        c.sign = sign_with(ks[c.node_id][0])
        c.peer_keys = {m: ks[m][1] for m in names if m != c.node_id}
    return ctxs, ks


def test_three_parties_learn_each_others_signed_counts(tmp_path):
    ctxs, _ = three_parties(tmp_path)
    results = run_count(ctxs)
    for node_id, res in results.items():
        assert not isinstance(res, Exception), (node_id, res)
        assert res["total_rows"] == 1000 + 2500 + 40
    assert results["bank-a"]["peer_rows"] == {"carrier-b": 2500, "hospital-c": 40}
    assert results["hospital-c"]["own_rows"] == 40


def test_a_statement_signed_by_the_wrong_key_is_refused(tmp_path):
    ctxs, _ = three_parties(tmp_path)
    ctxs[2].sign = sign_with(keys()[0])  # hospital-c signs with a key nobody pinned
    results = run_count(ctxs)
    assert isinstance(results["bank-a"], OperatorError)
    assert "hospital-c's count statement is not signed by its pinned node key" in str(
        results["bank-a"])


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        ("not a dict", "malformed"),
        ({"statement": {"job_id": "job-1", "node_id": "carrier-b", "rows": -3},
          "signature": "00"}, "impossible row count"),
        ({"statement": {"job_id": "job-9", "node_id": "carrier-b", "rows": 3},
          "signature": "00"}, "not this job"),
        ({"statement": {"job_id": "job-1", "node_id": "carrier-b", "rows": 3}}, "malformed"),
    ],
)
def test_a_malformed_or_dishonest_peer_message_fails_the_job(tmp_path, message, needle):
    key, pem = keys()
    a, b = memory_pair("job-1", "job", names=("bank-a", "carrier-b"))
    ctx = PartyContext(job_id="job-1", role="guest", node_id="bank-a",
                       parties={"bank-a": "guest", "carrier-b": "host"}, sessions={"carrier-b": a},
                       params={}, dataset=party_data(tmp_path, "a", 10), sign=sign_with(key),
                       peer_keys={"carrier-b": pem}, timeout=5)
    b.send(message)
    with pytest.raises(OperatorError, match=needle):
        COUNT.run(ctx)


def test_statements_are_bound_to_the_signed_bytes(tmp_path):
    key, pem = keys()
    stmt = {"operator": "count", "job_id": "job-1", "node_id": "carrier-b", "rows": 5,
            "dataset_fingerprint": None}
    sig = key.sign(canonical(stmt), ec.ECDSA(hashes.SHA256())).hex()
    a, b = memory_pair("job-1", "job", names=("bank-a", "carrier-b"))
    ctx = PartyContext(job_id="job-1", role="guest", node_id="bank-a",
                       parties={"bank-a": "guest", "carrier-b": "host"}, sessions={"carrier-b": a},
                       params={}, dataset=party_data(tmp_path, "a", 10), sign=sign_with(key),
                       peer_keys={"carrier-b": pem}, timeout=5)
    b.send({"statement": {**stmt, "rows": 50}, "signature": sig})  # count inflated after signing
    with pytest.raises(OperatorError, match="not signed"):
        COUNT.run(ctx)


def test_describes_itself_as_a_component():
    d = COUNT.describe()
    assert d["componentName"] == "count" and d["provider"] == "pec"
    assert d["roleList"] == ["guest", "host", "arbiter"]
