"""Accounts as an attacker and an administrator see them: no user enumeration through the
answer or its time; unlock, disable, role change and delete, never losing the last admin."""

from __future__ import annotations

import statistics
import time

import pytest

from appliance.accounts.rules import MAX_USERNAME, USERNAME
from appliance.accounts.users import MAX_FAILURES, REFUSED, UserError, Users
from appliance.trust import audit

PASSWORD = "correct horse battery"


def _lock(users: Users, name: str) -> None:
    for _ in range(MAX_FAILURES):
        users.authenticate(name, "wrong password!")


def _median_time(fn, tries: int = 5) -> float:
    times = []
    for _ in range(tries):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_locked_disabled_and_unknown_accounts_answer_alike_in_like_time(store):
    users = Users(store)
    for name in ("locked", "disabled", "admin"):
        users.create(name, PASSWORD, "admin", "test")
    _lock(users, "locked")
    users.update("disabled", "test", disabled=True)
    users.authenticate("nobody", "x")  # makes the dummy hash once, outside the timing
    answers = {
        "unknown": lambda: users.authenticate("nobody", PASSWORD),
        "locked, right password": lambda: users.authenticate("locked", PASSWORD),
        "locked, wrong password": lambda: users.authenticate("locked", "wrong password!"),
        "disabled": lambda: users.authenticate("disabled", PASSWORD),
        "wrong password": lambda: users.authenticate("admin", "wrong password!"),
    }
    for what, attempt in answers.items():
        assert attempt() == {"ok": False, "role": None, "reason": REFUSED}, what
    times = {what: _median_time(attempt) for what, attempt in answers.items()}
    assert max(times.values()) < 3 * min(times.values()), times
    # why is the audit trail's business, not the caller's
    whys = {r["details"]["why"] for r in audit.records(limit=500)[0]
            if r["action"] in ("auth.failed", "auth.refused")}
    assert {"unknown user", "locked", "disabled", "wrong password"} <= whys


def test_unlock_role_disable_delete_are_audited(store):
    users = Users(store)
    users.create("admin", PASSWORD, "admin", "test")
    users.create("bob", PASSWORD, "auditor", "test")
    _lock(users, "bob")
    assert users.get("bob")["locked_until"] is not None
    assert users.unlock("bob", "admin")["locked_until"] is None
    assert users.authenticate("bob", PASSWORD)["ok"]
    assert users.update("bob", "admin", role="admin")["role"] == "admin"
    assert users.update("bob", "admin", disabled=True)["disabled"] is True
    assert not users.authenticate("bob", PASSWORD)["ok"]
    assert users.update("bob", "admin", disabled=False)["disabled"] is False
    users.delete("bob", "admin")
    assert users.get("bob") is None
    actions = [r["action"] for r in audit.records(actor="admin", limit=50)[0]]
    assert actions.count("user.update") == 3
    assert {"user.unlock", "user.delete"} <= set(actions)
    with pytest.raises(LookupError, match="no user 'bob'"):
        users.unlock("bob", "admin")
    with pytest.raises(UserError, match="role must be one of"):
        users.update("admin", "admin", role="root")


@pytest.mark.parametrize("change", [
    lambda users: users.update("admin", "x", disabled=True),
    lambda users: users.update("admin", "x", role="auditor"),
    lambda users: users.delete("admin", "x"),
])
def test_the_last_enabled_admin_stays(store, change):
    users = Users(store)
    users.create("admin", PASSWORD, "admin", "test")
    users.create("other", PASSWORD, "admin", "test")
    users.update("other", "test", disabled=True)  # a disabled admin does not count
    with pytest.raises(UserError, match="last enabled admin"):
        change(users)
    assert users.get("admin") == {**users.get("admin"), "role": "admin", "disabled": False}
    users.update("other", "test", disabled=False)
    change(users)  # with another enabled admin it goes through


def test_one_username_limit():
    assert USERNAME.fullmatch("a" * MAX_USERNAME)
    assert not USERNAME.fullmatch("a" * (MAX_USERNAME + 1))
