"""Data sets: registration, streaming, id checks, fingerprint, change detection, grade policy."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance.federation.datasets import DatasetError, DatasetRegistry
from appliance.federation.grade_policy import DEFAULT_POLICY, GradePolicy, PolicyRefused, check_use

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def reg(tmp_path: Path) -> DatasetRegistry:
    conn = sqlite3.connect(tmp_path / "pec.db")
    yield DatasetRegistry(conn)
    conn.close()


def write_csv(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


PEOPLE = """\
    phone,age,score,city
    01380000001,34,1.5,Beijing
    01380000002,51,2.25,Shanghai
    01380000003,,3.0,
    """


# -- registration -------------------------------------------------------------------------


def test_csv_registration_records_schema_rows_and_metadata(reg, tmp_path):
    f = write_csv(tmp_path / "people.csv", PEOPLE)
    ds = reg.add("people", f, "phone", grade="L3", actor="alice")
    assert ds.format == "csv" and ds.grade == "L3" and ds.created_by == "alice"
    assert ds.row_count == 3 and ds.size_bytes == f.stat().st_size
    # The id column is read as text so leading zeros survive; the others are inferred.
    assert ds.schema == [
        {"name": "phone", "type": "string"},
        {"name": "age", "type": "int64"},
        {"name": "score", "type": "double"},
        {"name": "city", "type": "string"},
    ]
    assert len(ds.fingerprint) == 64
    assert reg.show("people") == ds
    assert [d.name for d in reg.list()] == ["people"]
    assert json.loads(json.dumps(ds.to_dict()))["row_count"] == 3
    ids = reg.open("people", columns=["phone"]).read_all().column("phone").to_pylist()
    assert ids == ["01380000001", "01380000002", "01380000003"]


def test_parquet_registration_and_column_selection(reg, tmp_path):
    t = pa.table({
        "uid": pa.array(range(1000), pa.int64()),
        "v": [None if i % 7 == 0 else f"v{i}" for i in range(1000)],
        "flag": [i % 2 == 0 for i in range(1000)],
    })
    f = tmp_path / "t.bin"  # no extension: recognised by its PAR1 magic
    pq.write_table(t, f, row_group_size=300)
    ds = reg.add("t", f, "uid", actor="bob")
    assert ds.format == "parquet" and ds.row_count == 1000 and ds.grade == "L2"
    assert ds.columns == ["uid", "v", "flag"]
    reader = reg.open("t", columns=["flag", "uid"])
    assert reader.schema.names == ["flag", "uid"]
    got = reader.read_all()
    assert got.num_rows == 1000 and got.column("uid").to_pylist() == list(range(1000))
    with pytest.raises(DatasetError, match='no column "nope"') as e:
        reg.open("t", columns=["nope"])
    assert e.value.status == 400


def test_same_data_in_csv_batches_of_any_size_fingerprints_the_same(reg, tmp_path, monkeypatch):
    from appliance.federation import datasets

    rows = "\n".join(f"id{i},{i},{'x' * (i % 13)}" for i in range(5000))
    f = write_csv(tmp_path / "a.csv", "id,n,s\n" + rows + "\n")
    first = reg.add("a", f, "id", actor="t").fingerprint
    reg.remove("a")
    # Small blocks cut the file into many batches: the fingerprint must not depend on that.
    monkeypatch.setattr(datasets, "CSV_BLOCK_SIZE", 4096)
    assert reg.add("a", f, "id", actor="t").fingerprint == first


# -- bad input ----------------------------------------------------------------------------


def test_name_grade_path_and_duplicate_registration_are_refused(reg, tmp_path):
    f = write_csv(tmp_path / "people.csv", PEOPLE)
    for bad in ("", "People", "-x", "a b", "x" * 65, "../etc"):
        with pytest.raises(DatasetError, match="invalid data set name") as e:
            reg.add(bad, f, "phone", actor="t")
        assert e.value.status == 400
    with pytest.raises(DatasetError, match="invalid grade 'L5'"):
        reg.add("p", f, "phone", grade="L5", actor="t")
    with pytest.raises(DatasetError, match="does not exist"):
        reg.add("p", tmp_path / "missing.csv", "phone", actor="t")
    with pytest.raises(DatasetError, match="not a regular file"):
        reg.add("p", tmp_path, "phone", actor="t")
    with pytest.raises(DatasetError, match="must be absolute"):
        reg.add("p", "people.csv", "phone", actor="t")
    reg.add("p", f, "phone", actor="t")
    with pytest.raises(DatasetError, match='"p" already exists') as e:
        reg.add("p", f, "phone", actor="t")
    assert e.value.status == 409
    with pytest.raises(DatasetError, match='no data set named "q"') as e:
        reg.show("q")
    assert e.value.status == 404


def test_missing_id_column_names_the_columns(reg, tmp_path):
    f = write_csv(tmp_path / "people.csv", PEOPLE)
    with pytest.raises(DatasetError, match=r'id column "email" not found.*phone, age, score, city'):
        reg.add("p", f, "email", actor="t")


def test_null_id_names_the_row(reg, tmp_path):
    t = pa.table({"uid": pa.array([1, 2, None, 4], pa.int64()), "v": [1, 2, 3, 4]})
    pq.write_table(t, tmp_path / "n.parquet")
    with pytest.raises(DatasetError, match=r'id column "uid" has a null at row 3$'):
        reg.add("n", tmp_path / "n.parquet", "uid", actor="t")


def test_empty_csv_id_names_the_row(reg, tmp_path):
    f = write_csv(tmp_path / "e.csv", "phone,v\n111,1\n,2\n")
    with pytest.raises(DatasetError, match=r'id column "phone" is empty at row 2$'):
        reg.add("e", f, "phone", actor="t")


def test_duplicate_id_names_both_rows_across_batches(reg, tmp_path, monkeypatch):
    from appliance.federation import datasets

    monkeypatch.setattr(datasets, "CSV_BLOCK_SIZE", 4096)  # the two rows land in other batches
    rows = [f"138{i:08d},{i}" for i in range(20000)]
    rows[17999] = "13800000042,x"  # row 18000 repeats the id of row 43
    f = write_csv(tmp_path / "d.csv", "phone,v\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError) as e:
        reg.add("d", f, "phone", actor="t")
    assert str(e.value) == 'id column "phone": duplicate id \'13800000042\' at rows 43 and 18000'
    assert e.value.status == 400
    assert reg.list() == []  # nothing half-registered


def test_ragged_csv_row_names_the_line(reg, tmp_path):
    f = write_csv(tmp_path / "r.csv", "id,a,b\n1,2,3\n4,5\n6,7,8\n")
    with pytest.raises(DatasetError, match=r"malformed CSV at line 3: expected 3 columns, got 2"):
        reg.add("r", f, "id", actor="t")


def test_csv_type_that_changes_after_the_first_block_is_widened(reg, tmp_path, monkeypatch):
    from appliance.federation import datasets

    monkeypatch.setattr(datasets, "CSV_BLOCK_SIZE", 4096)
    rows = [f"k{i},{i},{i}" for i in range(3000)] + ["k3000,12.5,abc"]
    f = write_csv(tmp_path / "w.csv", "id,amount,code\n" + "\n".join(rows) + "\n")
    ds = reg.add("w", f, "id", actor="t")
    assert [c["type"] for c in ds.schema] == ["string", "double", "string"]
    last = reg.open("w").read_all().slice(3000).to_pylist()
    assert last == [{"id": "k3000", "amount": 12.5, "code": "abc"}]


def test_empty_and_fake_parquet_files_are_refused(reg, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match="is empty"):
        reg.add("e", tmp_path / "empty.csv", "id", actor="t")
    (tmp_path / "hdr.csv").write_text("id,v\n")
    with pytest.raises(DatasetError, match="has no data rows"):
        reg.add("h", tmp_path / "hdr.csv", "id", actor="t")
    (tmp_path / "fake.parquet").write_text("id\n1\n")
    with pytest.raises(DatasetError, match="does not start with 'PAR1'"):
        reg.add("f", tmp_path / "fake.parquet", "id", actor="t")


# -- fingerprint and change detection -----------------------------------------------------


def test_fingerprint_is_stable_and_changes_with_one_value(reg, tmp_path):
    f = write_csv(tmp_path / "people.csv", PEOPLE)
    first = reg.add("p", f, "phone", actor="t").fingerprint
    reg.remove("p")
    assert reg.add("p", f, "phone", actor="t").fingerprint == first
    g = write_csv(tmp_path / "people2.csv", PEOPLE.replace("2.25", "2.26"))
    assert reg.add("p2", g, "phone", actor="t").fingerprint != first
    # A value moved between neighbouring cells is a change too.
    h = write_csv(tmp_path / "people3.csv", PEOPLE.replace("Beijing", "Beijin"))
    assert reg.add("p3", h, "phone", actor="t").fingerprint != first


def test_parquet_fingerprint_ignores_row_grouping_but_not_nulls(reg, tmp_path):
    t = pa.table({"uid": list(range(100)), "v": [float(i) for i in range(100)]})
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=7)
    pq.write_table(t, tmp_path / "b.parquet", row_group_size=100)
    a = reg.add("a", tmp_path / "a.parquet", "uid", actor="t").fingerprint
    assert reg.add("b", tmp_path / "b.parquet", "uid", actor="t").fingerprint == a
    v = t.column("v").to_pylist()
    v[50] = None
    pq.write_table(t.set_column(1, "v", pa.array(v)), tmp_path / "c.parquet")
    assert reg.add("c", tmp_path / "c.parquet", "uid", actor="t").fingerprint != a


def test_open_refuses_a_file_changed_after_registration(reg, tmp_path):
    f = write_csv(tmp_path / "people.csv", PEOPLE)
    reg.add("p", f, "phone", actor="t")
    st = f.stat()
    # A touch (same content, new mtime) is checked and tolerated.
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert reg.open("p").read_all().num_rows == 3
    assert reg.show("p").mtime_ns == st.st_mtime_ns + 5_000_000_000
    # Same size, one value changed: the fingerprint check refuses it.
    f.write_text(textwrap.dedent(PEOPLE).lstrip().replace("34", "35"))
    with pytest.raises(DatasetError, match=r"changed since.*fingerprint.*re-register") as e:
        reg.open("p")
    assert e.value.status == 409
    # Grown by a row: refused on the size alone.
    with f.open("a") as out:
        out.write("01380000004,20,1.0,Xi'an\n")
    with pytest.raises(DatasetError, match=r"size \d+ -> \d+ bytes.*re-register"):
        reg.open("p")
    f.unlink()
    with pytest.raises(DatasetError, match="is gone"):
        reg.open("p")


def test_remove_keeps_the_file(reg, tmp_path):
    f = write_csv(tmp_path / "people.csv", PEOPLE)
    reg.add("p", f, "phone", actor="t")
    before = f.read_bytes()
    assert reg.remove("p").name == "p"
    assert f.read_bytes() == before and reg.list() == []
    with pytest.raises(DatasetError) as e:
        reg.remove("p")
    assert e.value.status == 404


# -- streaming ----------------------------------------------------------------------------

_MEASURE = """
import resource, sqlite3, sys
import pyarrow as pa
from appliance.federation.datasets import DatasetRegistry
reg = DatasetRegistry(sqlite3.connect(sys.argv[2]))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pool0 = pa.default_memory_pool().max_memory()
ds = reg.add("big", sys.argv[1], "phone", actor="t")
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(ds.row_count, (rss1 - rss0) * 1024, pa.default_memory_pool().max_memory() - pool0)
"""


def test_large_csv_is_registered_with_bounded_memory(tmp_path):
    # 200k rows, ~27 MB. Run in a fresh interpreter: peak RSS and Arrow's peak allocation are
    # process-wide high-water marks that earlier tests would otherwise have set.
    f = tmp_path / "big.csv"
    pad = "y" * 90
    with f.open("w") as out:
        out.write("phone,age,score,note\n")
        out.writelines(f"138{i:08d},{i % 90},{i * 0.25},{pad}{i}\n" for i in range(200_000))
    size = f.stat().st_size
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(f), str(tmp_path / "pec.db")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=True,
    )
    rows, rss_delta, arrow_peak = map(int, res.stdout.split())
    assert rows == 200_000
    assert rss_delta < 100 * 2**20, rss_delta
    # Arrow's own buffers stay at a few blocks; reading the file whole would exceed its size.
    assert arrow_peak < min(16 * 2**20, size // 2), (arrow_peak, size)


# -- grade policy -------------------------------------------------------------------------


def test_policy_allows_what_each_grade_allows():
    check_use("L1", "psi", {"reveal": "both"})
    check_use("L1", "newfamily")  # public data: even operators the table does not know
    check_use("L2", "psi", {"reveal": "both"})
    check_use("L3", "psi", {"reveal": "self"})
    check_use("L4", "psi", {"reveal": "count"})
    check_use("L4", "stats", {"noise": "dp"})
    check_use("L4", "fl", {"aggregation": "secure"})
    check_use("L4", "count")


@pytest.mark.parametrize(
    ("grade", "operator", "outputs", "rule", "words"),
    [
        ("L4", "psi", {"reveal": "both"}, "L4.psi.reveal", "forbids revealing identifiers"),
        ("L4", "pir", {"serve": "none"}, "L4.pir", "forbids private query"),
        ("L4", "stats", {"noise": "none"}, "L4.stats.noise", "differential-privacy"),
        ("L4", "fl", {"aggregation": "plain"}, "L4.fl.aggregation", "secure aggregation"),
        ("L4", "fl", {}, "L4.fl.aggregation", "requires the operator to state aggregation"),
        ("L3", "psi", {"reveal": "peer"}, "L3.psi.reveal", "forbids revealing identifiers"),
        ("L2", "pir", {"serve": "records"}, "L2.pir.serve", "forbids serving records"),
        ("L2", "export", {}, "L2.*", "only the operators named"),
    ],
)
def test_policy_refusals_name_the_rule(grade, operator, outputs, rule, words):
    with pytest.raises(PolicyRefused) as e:
        check_use(grade, operator, outputs, dataset="patients")
    assert e.value.rule == rule and e.value.status == 403
    assert isinstance(e.value, DatasetError)
    msg = str(e.value)
    assert msg.startswith(f'grade {grade} data set "patients" may not be used by operator')
    assert f"rule {rule} " in msg and words in msg


def test_policy_message_matches_the_documented_form():
    with pytest.raises(PolicyRefused) as e:
        check_use("L4", "psi", {"reveal": "both"}, dataset="patients")
    assert str(e.value) == (
        'grade L4 data set "patients" may not be used by operator psi with reveal=both: '
        "rule L4.psi.reveal forbids revealing identifiers; only the intersection size may leave"
    )


def test_node_overrides_replace_one_rule_and_are_validated():
    policy = GradePolicy({
        "grades": {"L3": {"pir": {"serve": ["none", "records"]}}, "L4": {"psi": False}},
        "reasons": {"L4.psi": "our regulator forbids PSI on L4 data"},
    })
    policy.check_use("L3", "pir", {"serve": "records"})
    with pytest.raises(PolicyRefused, match=r"rule L4\.psi our regulator forbids"):
        policy.check_use("L4", "psi", {"reveal": "count"})
    # Untouched rules keep their defaults, and the default table itself is not modified.
    with pytest.raises(PolicyRefused, match=r"rule L3\.psi\.reveal"):
        policy.check_use("L3", "psi", {"reveal": "both"})
    assert DEFAULT_POLICY["grades"]["L4"]["psi"] == {"reveal": ["count"]}
    for bad, where in [
        ({"grades": {"L5": {}}}, "unknown grade 'L5'"),
        ({"grades": {"L2": {"psi": "yes"}}}, "grades.L2.psi must be true, false or a table"),
        ({"grades": {"L2": {"psi": {"reveal": "count"}}}}, "grades.L2.psi.reveal must be a list"),
        ({"grade": {}}, "unknown key"),
    ]:
        with pytest.raises(DatasetError, match=where):
            GradePolicy(bad)
    with pytest.raises(DatasetError, match="invalid grade"):
        check_use("L0", "psi", {"reveal": "count"})
