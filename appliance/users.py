"""Administrator accounts: argon2 password hashes, roles, per-account lockout.

Every authentication attempt is audited. An account is locked for ``LOCKOUT`` after
``MAX_FAILURES`` consecutive failures; an unknown user name costs the same hash verification
as a known one so that timing does not tell which names exist.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance import audit
from appliance.account_rules import MAX_PASSWORD, MIN_PASSWORD, ROLES, USERNAME
from appliance.store import Store, parse_time, utc_now

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=5)
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # made on first use: hashing costs what a login costs, too much for every CLI start
    return _hasher.hash("not a password of anyone")


class UserError(ValueError):
    """Bad user input (name, role, password) or a conflict; the message says which."""


def check_password(password: Any) -> str:
    if not isinstance(password, str):
        raise UserError("password must be a string")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password must be at most {MAX_PASSWORD} characters")
    return password


def check_username(username: Any) -> str:
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise UserError(
            "username must be 1-32 characters: lower-case letters, digits, '_', '.', '-', "
            "starting with a letter or '_'"
        )
    return username


def _public(row: Any) -> dict[str, Any]:
    return {"username": row["username"], "role": row["role"],
            "locked_until": row["locked_until"], "created": row["created"]}


class Users:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self) -> list[dict[str, Any]]:
        return [_public(r) for r in self.store.query("SELECT * FROM users ORDER BY username")]

    def get(self, username: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT * FROM users WHERE username=?", (username,))
        return _public(rows[0]) if rows else None

    def create(self, username: Any, password: Any, role: Any, actor: str,
               *, replace: bool = False) -> dict[str, Any]:
        username = check_username(username)
        password = check_password(password)
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        hashed = _hasher.hash(password)
        with self.store.transaction() as db:
            exists = db.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone()
            if exists and not replace:
                raise UserError(f"user {username!r} already exists")
            db.execute(
                "INSERT OR REPLACE INTO users (username, password_hash, role, failed_count, "
                "locked_until, created) VALUES (?, ?, ?, 0, NULL, ?)",
                (username, hashed, role, utc_now()),
            )
        audit.record(actor, "user.replace" if exists else "user.create", f"user:{username}",
                     {"role": role})
        return self.get(username)  # type: ignore[return-value]

    def password_matches(self, username: str, password: str) -> bool:
        """Whether ``password`` is the user's (no audit, no lockout: for local provisioning)."""
        rows = self.store.query("SELECT password_hash FROM users WHERE username=?", (username,))
        return bool(rows) and self._verify(rows[0][0], password)

    def authenticate(self, username: Any, password: Any, remote: str = "") -> dict[str, Any]:
        """{"ok", "role", "reason"}; audited whatever the outcome."""
        name = username if isinstance(username, str) else ""
        password = password if isinstance(password, str) else ""
        details = {"remote": remote} if remote else {}
        rows = self.store.query("SELECT * FROM users WHERE username=?", (name,))
        now = datetime.now(UTC)
        if not rows:
            self._verify(_dummy_hash(), password)
            audit.record(name or "-", "auth.failed", f"user:{name or '-'}",
                         {**details, "why": "unknown user"})
            return {"ok": False, "role": None, "reason": "invalid username or password"}
        row = rows[0]
        if row["locked_until"] and parse_time(row["locked_until"]) > now:
            audit.record(name, "auth.refused", f"user:{name}", {**details, "why": "locked"})
            return {"ok": False, "role": None,
                    "reason": f"account locked until {row['locked_until']}"}
        if self._verify(row["password_hash"], password):
            with self.store.transaction() as db:
                db.execute(
                    "UPDATE users SET failed_count=0, locked_until=NULL WHERE username=?",
                    (name,),
                )
            audit.record(name, "auth.ok", f"user:{name}", details)
            return {"ok": True, "role": row["role"], "reason": None}
        failures = row["failed_count"] + 1
        locked_until = None
        if failures >= MAX_FAILURES:
            locked_until = (now + LOCKOUT).isoformat(timespec="seconds").replace("+00:00", "Z")
            failures = 0
        with self.store.transaction() as db:
            db.execute(
                "UPDATE users SET failed_count=?, locked_until=? WHERE username=?",
                (failures, locked_until, name),
            )
        audit.record(name, "auth.failed", f"user:{name}",
                     {**details, "why": "wrong password", "locked_until": locked_until})
        reason = "invalid username or password"
        if locked_until:
            reason = f"too many failures: account locked until {locked_until}"
        return {"ok": False, "role": None, "reason": reason}

    def change_password(self, username: str, old: Any, new: Any, actor: str) -> None:
        rows = self.store.query("SELECT * FROM users WHERE username=?", (username,))
        if not rows:
            raise LookupError(f"no user {username!r}")
        new = check_password(new)
        if not isinstance(old, str) or not self._verify(rows[0]["password_hash"], old):
            audit.record(actor, "user.password.refused", f"user:{username}",
                         {"why": "old password wrong"})
            raise PermissionError("old password is wrong")
        with self.store.transaction() as db:
            db.execute("UPDATE users SET password_hash=? WHERE username=?",
                       (_hasher.hash(new), username))
        audit.record(actor, "user.password", f"user:{username}", {})

    @staticmethod
    def _verify(hashed: str, password: str) -> bool:
        try:
            return _hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
