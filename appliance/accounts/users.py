"""Administrator accounts: argon2 password hashes, roles, per-account lockout, disabling.

Every authentication attempt is audited. An account is locked for ``LOCKOUT`` after
``MAX_FAILURES`` consecutive failures. A refusal tells the caller nothing but
``REFUSED``, and every attempt costs one hash verification, whether the name is unknown, the
account locked or disabled, or the password wrong: neither the answer nor its time tells which
names exist. Why an attempt was refused goes to the audit trail only.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from appliance.accounts.rules import MAX_PASSWORD, MIN_PASSWORD, ROLES, USERNAME, USERNAME_RULE
from appliance.errors import ApplianceError
from appliance.state.store import Store, parse_time, utc_now
from appliance.trust import audit

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=5)
REFUSED = "invalid username or password"
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    # made on first use: hashing costs what a login costs, too much for every CLI start
    return _hasher.hash("not a password of anyone")


class UserError(ApplianceError, ValueError):
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
        raise UserError(f"username must be {USERNAME_RULE}")
    return username


def _locked(row: Any, now: datetime) -> bool:
    return bool(row["locked_until"]) and parse_time(row["locked_until"]) > now


def _public(row: Any) -> dict[str, Any]:
    locked = _locked(row, datetime.now(UTC))
    return {"username": row["username"], "role": row["role"],
            "locked_until": row["locked_until"] if locked else None,
            "disabled": bool(row["disabled"]), "created": row["created"]}


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
        refused = {"ok": False, "role": None, "reason": REFUSED}
        rows = self.store.query("SELECT * FROM users WHERE username=?", (name,))
        now = datetime.now(UTC)
        if not rows:
            self._verify(_dummy_hash(), password)
            audit.record(name or "-", "auth.failed", f"user:{name or '-'}",
                         {**details, "why": "unknown user"})
            return refused
        row = rows[0]
        # verified before any refusal, so a locked or disabled account costs what any other
        # attempt costs
        matches = self._verify(row["password_hash"], password)
        if row["disabled"]:
            audit.record(name, "auth.refused", f"user:{name}", {**details, "why": "disabled"})
            return refused
        if _locked(row, now):
            audit.record(name, "auth.refused", f"user:{name}",
                         {**details, "why": "locked", "locked_until": row["locked_until"]})
            return refused
        if matches:
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
        return refused

    # administration: each change audited; the node always keeps one enabled admin
    def _row(self, db: Any, username: Any) -> Any:
        row = db.execute("SELECT * FROM users WHERE username=?", (username,)).fetchone()
        if row is None:
            raise LookupError(f"no user {username!r}")
        return row

    @staticmethod
    def _keep_an_admin(db: Any, username: str, what: str) -> None:
        others = db.execute(
            "SELECT COUNT(*) FROM users WHERE role='admin' AND disabled=0 AND username!=?",
            (username,),
        ).fetchone()[0]
        if not others:
            raise UserError(f"cannot {what} {username!r}: it is the last enabled admin; make "
                            "another account admin first")

    def unlock(self, username: str, actor: str) -> dict[str, Any]:
        """End a lockout now and reset the failure count."""
        with self.store.transaction() as db:
            row = self._row(db, username)
            db.execute("UPDATE users SET failed_count=0, locked_until=NULL WHERE username=?",
                       (username,))
        audit.record(actor, "user.unlock", f"user:{username}",
                     {"was_locked_until": row["locked_until"]})
        return self.get(username)  # type: ignore[return-value]

    def update(self, username: str, actor: str, *, role: Any = None,
               disabled: Any = None) -> dict[str, Any]:
        """Change an account's role and/or whether it is disabled (None: unchanged)."""
        if role is not None and role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        if disabled is not None and not isinstance(disabled, bool):
            raise UserError("disabled must be true or false")
        if role is None and disabled is None:
            raise UserError("nothing to change: give 'role' and/or 'disabled'")
        with self.store.transaction() as db:
            row = self._row(db, username)
            if row["role"] == "admin" and not row["disabled"]:
                if role is not None and role != "admin":
                    self._keep_an_admin(db, username, "demote")
                if disabled:
                    self._keep_an_admin(db, username, "disable")
            new_role = row["role"] if role is None else role
            new_disabled = bool(row["disabled"]) if disabled is None else disabled
            db.execute("UPDATE users SET role=?, disabled=? WHERE username=?",
                       (new_role, int(new_disabled), username))
        changes: dict[str, Any] = {}
        if new_role != row["role"]:
            changes["role"] = {"from": row["role"], "to": new_role}
        if new_disabled != bool(row["disabled"]):
            changes["disabled"] = new_disabled
        if changes:
            audit.record(actor, "user.update", f"user:{username}", changes)
        return self.get(username)  # type: ignore[return-value]

    def delete(self, username: str, actor: str) -> None:
        with self.store.transaction() as db:
            row = self._row(db, username)
            if row["role"] == "admin" and not row["disabled"]:
                self._keep_an_admin(db, username, "delete")
            db.execute("DELETE FROM users WHERE username=?", (username,))
        audit.record(actor, "user.delete", f"user:{username}", {"role": row["role"]})

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
