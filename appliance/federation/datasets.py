"""Data sets: local CSV/Parquet files registered for privacy-computing jobs.

A data set is a file on this node's data disk that an operator may read, never a copy of it:
the registry records where the file is, its schema, its id column (the key that set
intersection and private query match on), its grade (L1 public .. L4 most sensitive, see
``grade_policy``) and a content fingerprint that the ledger quotes instead of the rows.

Everything here streams: the file is read through pyarrow in batches (the CSV streaming
reader, ``ParquetFile.iter_batches``), ids are checked for uniqueness in an on-disk SQLite
table, so registering a 10^7-row set costs a few tens of MB of memory, not the file's size.

This module imports nothing else of the appliance: the daemon hands it a ``sqlite3``
connection (its store) and wires ``DatasetError.status`` into its API replies.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from appliance.errors import ApplianceError

GRADES = ("L1", "L2", "L3", "L4")
FORMATS = ("csv", "parquet")

# Short, shell- and URL-safe, and never starting with '-' so it cannot pass for a CLI option.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NAME_PATTERN = _NAME_RE.pattern  # for the routes and job params that name a data set
_PARQUET_MAGIC = b"PAR1"

# Bounded reading. pyarrow's CSV streaming reader reads ahead some 30-40 blocks whatever the
# file size (measured with pyarrow 26), so the block size sets the memory: 256 KiB -> ~10 MB.
CSV_BLOCK_SIZE = 256 * 1024
PARQUET_BATCH_ROWS = 64 * 1024
# Page cache of the scratch SQLite table that proves ids unique; the table itself is on disk.
_ID_CACHE_KIB = 8 * 1024
_FINGERPRINT_DOMAIN = b"pec-dataset-fingerprint-v1\0"

_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS datasets (
    name         TEXT PRIMARY KEY,
    path         TEXT NOT NULL,
    format       TEXT NOT NULL CHECK (format IN ('csv', 'parquet')),
    id_column    TEXT NOT NULL,
    grade        TEXT NOT NULL CHECK (grade IN ('L1', 'L2', 'L3', 'L4')),
    schema_json  TEXT NOT NULL,
    arrow_schema BLOB NOT NULL,
    row_count    INTEGER NOT NULL,
    size_bytes   INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    inode        INTEGER NOT NULL,
    fingerprint  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL
)
"""
_COLUMNS = (
    "name, path, format, id_column, grade, schema_json, arrow_schema, row_count, size_bytes, "
    "mtime_ns, inode, fingerprint, created_at, created_by"
)


class DatasetError(ApplianceError):
    """Any refusal of this module; ``status`` is the HTTP-like code the API replies with.

    400: the request or the file is wrong, 404: no such data set, 409: conflicts with what is
    registered (name taken, file changed since registration).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Dataset:
    """One registration, as stored. ``schema`` is ``[{"name": ..., "type": ...}, ...]``."""

    name: str
    path: str
    format: str
    id_column: str
    grade: str
    schema: list[dict[str, str]]
    row_count: int
    size_bytes: int
    mtime_ns: int
    fingerprint: str
    created_at: str
    created_by: str
    inode: int = 0
    arrow_schema_bytes: bytes = field(default=b"", repr=False)

    @property
    def columns(self) -> list[str]:
        return [c["name"] for c in self.schema]

    @property
    def arrow_schema(self) -> pa.Schema:
        """The exact Arrow schema seen at registration (the JSON one is for people)."""
        return pa.ipc.read_schema(pa.py_buffer(self.arrow_schema_bytes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view for ``datasets list --json`` and the API; no internals."""
        return {
            "name": self.name,
            "path": self.path,
            "format": self.format,
            "id_column": self.id_column,
            "grade": self.grade,
            "schema": self.schema,
            "row_count": self.row_count,
            "size_bytes": self.size_bytes,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class ScanResult:
    """What one full pass over a file found."""

    format: str
    schema: pa.Schema
    row_count: int
    fingerprint: str


# --------------------------------------------------------------------------------------------
# registry


class DatasetRegistry:
    """Registrations in the caller's SQLite database (table ``datasets``, created if missing).

    ``scratch_dir`` holds the temporary id table of a registration; by default the directory of
    the database file (the data disk of the appliance; /tmp may be RAM-backed), or the system
    temporary directory for an in-memory database.
    """

    def __init__(self, conn: sqlite3.Connection, *, scratch_dir: str | os.PathLike | None = None):
        self._conn = conn
        self._scratch_dir = str(scratch_dir) if scratch_dir is not None else _db_dir(conn)
        with conn:
            conn.execute(_TABLE_SQL)

    # -- commands ------------------------------------------------------------------------

    def add(
        self,
        name: str,
        path: str | os.PathLike,
        id_column: str,
        grade: str = "L2",
        *,
        actor: str,
    ) -> Dataset:
        """Validate and scan the file, then register it. The file is never modified."""
        _check_name(name)
        grade = _check_grade(grade)
        if not isinstance(id_column, str) or not id_column:
            raise DatasetError("id column must be a non-empty column name")
        if not isinstance(actor, str) or not actor:
            raise DatasetError("actor (who registers the data set) must be given")
        if self._row(name) is not None:
            raise DatasetError(f'data set "{name}" already exists', 409)
        real, st = _check_file(path)

        scan = scan_file(real, id_column, scratch_dir=self._scratch_dir)
        # A file rewritten while we read it would register a fingerprint of neither version.
        after = _stat(real)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise DatasetError(f"{real} changed while it was being read; try again", 409)

        ds = Dataset(
            name=name,
            path=real,
            format=scan.format,
            id_column=id_column,
            grade=grade,
            schema=schema_to_json(scan.schema),
            row_count=scan.row_count,
            size_bytes=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            fingerprint=scan.fingerprint,
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            created_by=actor,
            arrow_schema_bytes=scan.schema.serialize().to_pybytes(),
        )
        try:
            with self._conn:
                self._conn.execute(
                    f"INSERT INTO datasets ({_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                    (
                        ds.name, ds.path, ds.format, ds.id_column, ds.grade,
                        json.dumps(ds.schema), ds.arrow_schema_bytes, ds.row_count,
                        ds.size_bytes, ds.mtime_ns, ds.inode, ds.fingerprint, ds.created_at,
                        ds.created_by,
                    ),
                )
        except sqlite3.IntegrityError:
            # Another add of the same name won the race while we were scanning.
            raise DatasetError(f'data set "{name}" already exists', 409) from None
        return ds

    def list(self) -> list[Dataset]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM datasets ORDER BY name").fetchall()
        return [_from_row(r) for r in rows]

    def show(self, name: str) -> Dataset:
        row = self._row(name)
        if row is None:
            raise DatasetError(f'no data set named "{name}"', 404)
        return _from_row(row)

    def remove(self, name: str) -> Dataset:
        """Forget the registration; the file stays where it is, untouched."""
        ds = self.show(name)
        with self._conn:
            self._conn.execute("DELETE FROM datasets WHERE name = ?", (name,))
        return ds

    def verify(self, name: str) -> Dataset:
        """Re-read the whole file and compare its fingerprint with the registered one.

        On a match the recorded mtime/inode are refreshed (a ``touch`` or a copy back in place
        is not a change of content); on a mismatch the data set is refused until re-registered.
        """
        ds = self.show(name)
        st = self._stat_registered(ds)
        if st.st_size != ds.size_bytes:
            raise _changed(ds, f"size {ds.size_bytes} -> {st.st_size} bytes")
        try:
            scan = _scan(ds.path, ds.format, ds.id_column, None, ds.arrow_schema, check_ids=False)
        except DatasetError as e:
            raise _changed(ds, f"it no longer reads as registered: {e.message}") from None
        if scan.fingerprint != ds.fingerprint or scan.row_count != ds.row_count:
            raise _changed(ds, "its content fingerprint differs")
        if (st.st_mtime_ns, st.st_ino) != (ds.mtime_ns, ds.inode):
            with self._conn:
                self._conn.execute(
                    "UPDATE datasets SET mtime_ns = ?, inode = ? WHERE name = ?",
                    (st.st_mtime_ns, st.st_ino, name),
                )
            ds = self.show(name)
        return ds

    def open(self, name: str, columns: Sequence[str] | None = None) -> pa.RecordBatchReader:
        """A batch reader over the data set, optionally only ``columns`` (in that order).

        Refuses (409) a file whose size changed since registration. A changed mtime or inode
        with the same size triggers a full fingerprint check first, so a ``touch`` is
        tolerated but an edit in place is not. The check happens here, once: a file rewritten
        while an operator reads it is not detected by the reader itself (``verify`` is).
        """
        ds = self.show(name)
        st = self._stat_registered(ds)
        if st.st_size != ds.size_bytes:
            raise _changed(ds, f"size {ds.size_bytes} -> {st.st_size} bytes")
        if (st.st_mtime_ns, st.st_ino) != (ds.mtime_ns, ds.inode):
            ds = self.verify(name)
        schema = ds.arrow_schema
        if columns is None:
            cols = list(schema.names)
        else:
            if isinstance(columns, str):
                raise DatasetError("columns must be a list of column names, not a string")
            cols = list(dict.fromkeys(columns))
            unknown = [c for c in cols if c not in schema.names]
            if unknown:
                raise DatasetError(
                    f'data set "{name}" has no column {_quote_list(unknown)}; '
                    f"columns are: {', '.join(schema.names)}"
                )
        return _open_reader(ds.path, ds.format, schema, cols)

    # -- helpers -------------------------------------------------------------------------

    def _row(self, name: str) -> tuple | None:
        return self._conn.execute(
            f"SELECT {_COLUMNS} FROM datasets WHERE name = ?", (name,)
        ).fetchone()

    @staticmethod
    def _stat_registered(ds: Dataset) -> os.stat_result:
        try:
            return os.stat(ds.path)
        except FileNotFoundError:
            raise DatasetError(
                f'data set "{ds.name}": file {ds.path} is gone; restore it or remove the '
                "registration",
                409,
            ) from None
        except OSError as e:
            raise DatasetError(f'data set "{ds.name}": cannot stat {ds.path}: {e.strerror}',
                               409) from None


def _changed(ds: Dataset, what: str) -> DatasetError:
    return DatasetError(
        f'data set "{ds.name}": file {ds.path} changed since registration ({what}); '
        f"re-register it (datasets remove {ds.name}, then datasets add)",
        409,
    )


def _from_row(row: tuple) -> Dataset:
    (name, path, fmt, id_column, grade, schema_json, arrow_schema, row_count, size_bytes,
     mtime_ns, inode, fingerprint, created_at, created_by) = row
    return Dataset(
        name=name, path=path, format=fmt, id_column=id_column, grade=grade,
        schema=json.loads(schema_json), row_count=row_count, size_bytes=size_bytes,
        mtime_ns=mtime_ns, inode=inode, fingerprint=fingerprint, created_at=created_at,
        created_by=created_by, arrow_schema_bytes=bytes(arrow_schema),
    )


def _db_dir(conn: sqlite3.Connection) -> str | None:
    for _seq, schema_name, filename in conn.execute("PRAGMA database_list"):
        if schema_name == "main" and filename:
            return str(Path(filename).parent)
    return None  # in-memory database: tempfile's default directory


# --------------------------------------------------------------------------------------------
# validation


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DatasetError(
            f"invalid data set name {name!r}: use 1-64 characters a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )


def _check_grade(grade: str) -> str:
    if grade not in GRADES:
        raise DatasetError(f"invalid grade {grade!r}: use one of {', '.join(GRADES)}")
    return grade


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except OSError as e:
        raise DatasetError(f"cannot stat {path}: {e.strerror}") from None


def _check_file(path: str | os.PathLike) -> tuple[str, os.stat_result]:
    p = os.fspath(path)
    # The daemon's working directory is not the user's: the CLI resolves paths before sending.
    if not os.path.isabs(p):
        raise DatasetError(f"path must be absolute: {p}")
    st = _stat(p)
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise DatasetError(f"{p} is not readable by the appliance")
    # Pin the file itself, so re-pointing a symlink later does not swap the data under us.
    real = os.path.realpath(p)
    return real, os.stat(real)


def detect_format(path: str) -> str:
    """'parquet' when the file starts with the Parquet magic (or says .parquet), else 'csv'."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == _PARQUET_MAGIC:
        return "parquet"
    if path.lower().endswith((".parquet", ".pq")):
        raise DatasetError(f"{path} is named like Parquet but does not start with 'PAR1'")
    return "csv"


# --------------------------------------------------------------------------------------------
# scanning: schema, row count, id checks and fingerprint in one streaming pass


def scan_file(
    path: str, id_column: str, *, scratch_dir: str | None = None
) -> ScanResult:
    """One pass over ``path``: schema, rows, id column present, non-null, unique; fingerprint."""
    fmt = detect_format(path)
    return _scan(path, fmt, id_column, scratch_dir, None, check_ids=True)


def _scan(
    path: str,
    fmt: str,
    id_column: str,
    scratch_dir: str | None,
    schema: pa.Schema | None,
    *,
    check_ids: bool,
) -> ScanResult:
    if fmt == "parquet":
        return _scan_once(path, fmt, id_column, scratch_dir, schema, check_ids)
    # CSV types are inferred from the first block only; a later value that does not fit
    # (12.5 in a column of integers) fails the read. Widen that column and read again rather
    # than refuse the file or read it twice every time.
    overrides: dict[str, pa.DataType] = {}
    while True:
        try:
            return _scan_once(path, fmt, id_column, scratch_dir, schema, check_ids, overrides)
        except _Widen as w:
            if schema is not None or overrides.get(w.column) == pa.string():
                raise DatasetError(w.message) from None
            overrides[w.column] = w.wider


def _scan_once(
    path: str,
    fmt: str,
    id_column: str,
    scratch_dir: str | None,
    schema: pa.Schema | None,
    check_ids: bool,
    overrides: dict[str, pa.DataType] | None = None,
) -> ScanResult:
    batches = _iter_batches(path, fmt, id_column, schema, overrides or {})
    with contextlib.closing(batches):  # closes the file on any early exit
        return _consume(path, fmt, id_column, scratch_dir, check_ids, batches)


def _consume(
    path: str,
    fmt: str,
    id_column: str,
    scratch_dir: str | None,
    check_ids: bool,
    batches: Iterator[pa.Schema | pa.RecordBatch],
) -> ScanResult:
    first_schema = next(batches)
    assert isinstance(first_schema, pa.Schema)
    names = first_schema.names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{path}: column {_quote_list(dupes)} appears more than once")
    if id_column not in names:
        raise DatasetError(
            f'id column "{id_column}" not found in {path}; columns are: {", ".join(names)}'
        )
    id_idx = names.index(id_column)
    id_type = first_schema.field(id_idx).type
    if check_ids:
        _check_id_type(id_column, id_type)

    fp = _Fingerprint(first_schema)
    rows = 0
    with contextlib.ExitStack() as stack:
        ids = stack.enter_context(_UniqueIds(scratch_dir)) if check_ids else None
        for batch in batches:
            assert isinstance(batch, pa.RecordBatch)
            if batch.num_rows == 0:
                continue
            fp.update(batch)
            if ids is not None:
                ids.add(id_column, batch.column(id_idx), rows + 1)
            rows += batch.num_rows
    if rows == 0:
        raise DatasetError(f"{path} has no data rows")
    return ScanResult(format=fmt, schema=first_schema, row_count=rows,
                      fingerprint=fp.hexdigest(rows))


class _Widen(Exception):
    def __init__(self, column: str, wider: pa.DataType, message: str) -> None:
        super().__init__(message)
        self.column, self.wider, self.message = column, wider, message


_CONVERSION_RE = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to "
                            r"(\S+): invalid value '(.*)'", re.S)


def _iter_batches(
    path: str,
    fmt: str,
    id_column: str,
    schema: pa.Schema | None,
    overrides: dict[str, pa.DataType],
) -> Iterator[pa.Schema | pa.RecordBatch]:
    """Yield the schema first, then the batches; pyarrow errors become DatasetErrors."""
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=CSV_BLOCK_SIZE)
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{path} is not a readable Parquet file: {e}") from None
        with pf:
            yield pf.schema_arrow
            try:
                yield from pf.iter_batches(batch_size=PARQUET_BATCH_ROWS)
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"{path}: Parquet read error: {e}") from None
        return

    bad_rows: list[Any] = []

    def on_invalid_row(row: Any) -> str:
        bad_rows.append(row)
        return "error"

    if schema is not None:
        types = dict(zip(schema.names, schema.types, strict=True))
    else:
        # Ids are labels, not numbers: "0138..." must keep its leading zero to match a peer's.
        types = {id_column: pa.string(), **overrides}
    reader = None
    try:
        reader = pacsv.open_csv(
            path,
            # use_threads=False: the parser then knows line numbers for error messages.
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
        yield reader.schema
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            yield batch
    except pa.ArrowInvalid as e:
        schema_seen = reader.schema if reader is not None else None
        raise _csv_error(path, str(e), bad_rows, schema_seen) from None
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: CSV read error: {e}") from None


def _csv_error(
    path: str, msg: str, bad_rows: list[Any], schema: pa.Schema | None
) -> Exception:
    if bad_rows:
        row = bad_rows[0]
        where = f"line {row.number}" if row.number is not None else "a row"
        return DatasetError(
            f"{path}: malformed CSV at {where}: expected {row.expected_columns} columns, "
            f"got {row.actual_columns}: {_clip(row.text)!r}"
        )
    if msg.strip() == "Empty CSV file":
        return DatasetError(f"{path} is empty")
    m = _CONVERSION_RE.search(msg)
    if m and schema is not None:
        col = schema.names[int(m.group(1))]
        inferred, value = m.group(2), m.group(3)
        wider = pa.float64() if inferred.startswith(("int", "uint")) else pa.string()
        return _Widen(
            col,
            wider,
            f'{path}: CSV column "{col}" holds {_clip(value)!r}, which is not {inferred}',
        )
    return DatasetError(f"{path}: malformed CSV: {msg}")


_ID_TYPES_HELP = "ids must be integers, strings or binary"


def _check_id_type(id_column: str, t: pa.DataType) -> None:
    if pa.types.is_dictionary(t):  # e.g. a pandas categorical written to Parquet
        t = t.value_type
    if not (_is_stringish(t) or _is_binaryish(t) or pa.types.is_integer(t)):
        raise DatasetError(f'id column "{id_column}" has type {t}; {_ID_TYPES_HELP}')


def _is_stringish(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binaryish(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t))


class _UniqueIds:
    """Proves ids unique with bounded memory: an on-disk SQLite table keyed by the id.

    Exact values, not hashes: a hash collision would report a duplicate that is not one.
    The page cache is capped (``_ID_CACHE_KIB``); the table grows on disk in ``scratch_dir``.
    """

    def __init__(self, scratch_dir: str | None) -> None:
        self._dir = tempfile.mkdtemp(prefix="pec-dataset-ids-", dir=scratch_dir)
        # isolation_level=None: we BEGIN ourselves, one transaction for the whole scan.
        self._db = sqlite3.connect(os.path.join(self._dir, "ids.db"), isolation_level=None)
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(f"PRAGMA cache_size = -{_ID_CACHE_KIB}")
        self._db.execute("CREATE TABLE ids (k PRIMARY KEY, row INTEGER NOT NULL) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def __enter__(self) -> _UniqueIds:
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def add(self, id_column: str, col: pa.Array, first_row: int) -> None:
        if col.null_count:
            at = pc.index(pc.is_null(col), True).as_py()
            raise DatasetError(f'id column "{id_column}" has a null at row {first_row + at}')
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if _is_stringish(col.type) or _is_binaryish(col.type):
            empty = pc.equal(pc.binary_length(col), 0)
            if pc.any(empty).as_py():
                at = pc.index(empty, True).as_py()
                raise DatasetError(f'id column "{id_column}" is empty at row {first_row + at}')
        if pa.types.is_uint64(col.type):
            col = col.cast(pa.string())  # beyond SQLite's signed 64-bit integers
        values = col.to_pylist()
        before = self._db.total_changes
        self._db.executemany(
            "INSERT OR IGNORE INTO ids (k, row) VALUES (?, ?)",
            zip(values, itertools.count(first_row), strict=False),
        )
        if self._db.total_changes - before == len(values):
            return
        # Some id of this batch was already there: name the first one in file order.
        for row, value in zip(itertools.count(first_row), values, strict=False):
            (seen,) = self._db.execute("SELECT row FROM ids WHERE k = ?", (value,)).fetchone()
            if seen != row:
                raise DatasetError(
                    f'id column "{id_column}": duplicate id {_clip(str(value))!r} at rows '
                    f"{seen} and {row}"
                )
        raise AssertionError("duplicate counted but not found")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# fingerprint


def schema_to_json(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


class _Fingerprint:
    """SHA-256 over the schema and every value, independent of how the file is batched.

    Each column feeds three streams (validity bytes, value lengths, value bytes), each a plain
    concatenation over rows in file order, so the same data cut into other batches hashes the
    same, while any changed, moved, added or removed value changes a stream. Null slots hash
    as zeros whatever bytes the reader left under them.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._cols = [_ColumnHash() for _ in schema]

    def update(self, batch: pa.RecordBatch) -> None:
        for h, col in zip(self._cols, batch.columns, strict=True):
            h.update(col)

    def hexdigest(self, rows: int) -> str:
        h = hashlib.sha256(_FINGERPRINT_DOMAIN)
        h.update(json.dumps(schema_to_json(self._schema), separators=(",", ":")).encode())
        h.update(rows.to_bytes(8, "little"))
        for col in self._cols:
            h.update(col.digest())
        return h.hexdigest()


class _ColumnHash:
    def __init__(self) -> None:
        self._valid = hashlib.sha256()
        self._lengths = hashlib.sha256()
        self._data = hashlib.sha256()

    def digest(self) -> bytes:
        return self._valid.digest() + self._lengths.digest() + self._data.digest()

    def update(self, arr: pa.Array) -> None:
        if isinstance(arr, pa.ChunkedArray):
            for chunk in arr.chunks:
                self.update(chunk)
            return
        n = len(arr)
        if n == 0:
            return
        t = arr.type
        if pa.types.is_dictionary(t):
            arr, t = arr.dictionary_decode(), t.value_type
        if arr.null_count:
            valid = pc.is_valid(arr).cast(pa.uint8()).to_numpy(zero_copy_only=False)
        else:
            valid = np.ones(n, np.uint8)
        self._valid.update(valid.tobytes())
        if pa.types.is_null(t):
            return
        if pa.types.is_boolean(t):
            arr, t = arr.cast(pa.uint8()), pa.uint8()
        if _is_stringish(t) or (_is_binaryish(t) and not pa.types.is_fixed_size_binary(t)):
            self._update_varlen(arr)
        elif _fixed_width(t):
            self._update_fixed(arr, t.bit_width // 8, valid)
        else:
            # Nested and exotic types: rare in data sets; a canonical JSON per value.
            for v in arr.to_pylist():
                b = json.dumps(v, sort_keys=True, default=str, separators=(",", ":")).encode()
                self._lengths.update(len(b).to_bytes(8, "little"))
                self._data.update(b)

    def _update_varlen(self, arr: pa.Array) -> None:
        # One layout for utf8/binary/large/view types; null slots become empty values.
        arr = arr.cast(pa.large_binary())
        if arr.null_count:
            arr = pc.fill_null(arr, pa.scalar(b"", pa.large_binary()))
        _validity, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, np.int64)[arr.offset: arr.offset + len(arr) + 1]
        self._lengths.update(np.diff(offsets).astype("<i8").tobytes())
        if data_buf is not None and offsets[-1] > offsets[0]:
            self._data.update(memoryview(data_buf)[int(offsets[0]): int(offsets[-1])])

    def _update_fixed(self, arr: pa.Array, width: int, valid: np.ndarray) -> None:
        n = len(arr)
        values = np.frombuffer(arr.buffers()[1], np.uint8)
        values = values[arr.offset * width: (arr.offset + n) * width]
        if arr.null_count:
            values = values.reshape(n, width).copy()
            values[valid == 0] = 0
        self._data.update(values.tobytes())


def _fixed_width(t: pa.DataType) -> bool:
    try:
        bits = t.bit_width
    except ValueError:
        return False
    return bits % 8 == 0 and not pa.types.is_nested(t)


# --------------------------------------------------------------------------------------------
# reading for operators


def _open_reader(
    path: str, fmt: str, schema: pa.Schema, columns: list[str]
) -> pa.RecordBatchReader:
    out_schema = pa.schema([schema.field(c) for c in columns])
    if fmt == "csv":
        try:
            # The registered types, not a fresh inference: operators see what was registered.
            return pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict(zip(schema.names, schema.types, strict=True)),
                    include_columns=columns,
                ),
            )
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"{path}: CSV read error: {e}", 409) from None

    def batches() -> Iterator[pa.RecordBatch]:
        with pq.ParquetFile(path, pre_buffer=False, buffer_size=CSV_BLOCK_SIZE) as pf:
            for b in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                yield b.select(columns)  # in the caller's order

    return pa.RecordBatchReader.from_batches(out_schema, batches())


def _quote_list(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _clip(s: str, limit: int = 80) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."
