"""The daemon's SQLite store (WAL): jobs, job logs, events, users, settings, meta.

One connection shared by the daemon's threads behind a lock: the load is a handful of writes a
second, and a single writer keeps SQLite's locking out of the picture. Every write commits
before it returns, so a killed process loses nothing that was acknowledged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    params TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    actor TEXT NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, id);
CREATE TABLE job_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    time TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs (job_id, id);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    prev_hash TEXT,
    hash TEXT
);
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    failed_count INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    created TEXT NOT NULL
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# v2: an administrator can disable an account without deleting it (and its audit history)
_SCHEMA_V2 = """
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
"""

# index = version reached after running it; a new schema version appends one entry
_MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


class StoreError(ApplianceError, RuntimeError):
    """The store cannot be opened or is of an unknown version."""

    # the daemon's own storage failed: not the caller's fault
    status = 500


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def filtered_page(
    run: Callable[[str, list[Any]], list[Any]],
    table: str,
    filters: dict[str, Any],
    *,
    order_by: str,
    limit: int,
    offset: int,
) -> tuple[list[Any], int]:
    """A page of ``table``'s rows that equal every filter not None, and how many match in all.

    ``run`` executes one statement and returns its rows. The table, the filter columns and
    ``order_by`` are spelled in code, never taken from a request; values go as parameters.
    """
    used = {column: value for column, value in filters.items() if value is not None}
    clause = f" WHERE {' AND '.join(f'{column} = ?' for column in used)}" if used else ""
    args = list(used.values())
    total = run(f"SELECT COUNT(*) FROM {table}{clause}", args)[0][0]
    rows = run(
        f"SELECT * FROM {table}{clause} ORDER BY {order_by} LIMIT ? OFFSET ?",
        [*args, limit, offset],
    )
    return rows, total


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if not self.path.exists():
            # password hashes live here: no access for others; SQLite gives its -wal and -shm
            # files the same mode
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o640))
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from None

    def _migrate(self) -> None:
        with self.transaction() as db:
            has_meta = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
            ).fetchone()
            version = 0
            if has_meta:
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} has schema version {version}, newer than this "
                    f"software's {SCHEMA_VERSION}"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(target),),
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and run the block as one transaction (rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple | list = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def page(
        self, table: str, filters: dict[str, Any], *, order_by: str, limit: int, offset: int
    ) -> tuple[list[sqlite3.Row], int]:
        """``filtered_page`` over this store, count and page read under one lock hold."""
        with self._lock:
            return filtered_page(self.query, table, filters, order_by=order_by, limit=limit,
                                 offset=offset)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # meta and settings: small JSON values by key
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self.query("SELECT value FROM settings WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_setting(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                (key, json.dumps(value)),
            )
