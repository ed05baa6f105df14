from __future__ import annotations

import pytest

from appliance.accounts.users import MAX_FAILURES, UserError, Users
from appliance.trust import audit


def test_chain_verifies_and_finds_an_edit(store):
    for i in range(5):
        audit.record("alice", "thing.do", f"thing:{i}", {"n": i})
    result = audit.verify()
    assert (result["ok"], result["signed"], result["unsigned"]["head"]["seq"]) == (True, None, 5)
    with store.transaction() as db:
        db.execute("UPDATE events SET details='{\"n\": 99}' WHERE seq=3")
    result = audit.verify()
    assert result["ok"] is False and result["first_bad"] == 3


def test_chain_finds_a_deletion(store):
    for i in range(4):
        audit.record("alice", "thing.do", f"thing:{i}")
    with store.transaction() as db:
        db.execute("DELETE FROM events WHERE seq=2")
    result = audit.verify()
    assert (result["ok"], result["first_bad"]) == (False, 2)


def test_records_filter_and_page(store):
    for actor in ("a", "b", "a"):
        audit.record(actor, "x.y", "obj")
    records, total = audit.records(actor="a", limit=1)
    assert total == 2 and len(records) == 1 and records[0]["seq"] == 3
    assert set(records[0]) == {"seq", "time", "actor", "action", "object", "details",
                               "prev_hash", "hash", "signature"}
    assert records[0]["signature"] is None  # no signer bound: the unsigned trail
    with pytest.raises(audit.AuditError, match="non-empty string action"):
        audit.record("a", "", "obj")


def test_unbound_audit_is_a_clear_error():
    audit.bind(None)
    with pytest.raises(audit.AuditError, match="not open"):
        audit.record("a", "b", "c")


def test_passwords_are_argon2_and_checked(store):
    users = Users(store)
    users.create("admin", "correct horse battery", "admin", "cli")
    stored = store.query("SELECT password_hash FROM users")[0][0]
    assert stored.startswith("$argon2") and "correct horse" not in stored
    assert users.authenticate("admin", "correct horse battery")["role"] == "admin"
    assert users.authenticate("admin", "wrong password!!")["ok"] is False
    assert users.authenticate("nobody", "whatever at all")["reason"] == \
        "invalid username or password"
    with pytest.raises(UserError, match="at least 12"):
        users.create("bob", "short", "auditor", "cli")
    with pytest.raises(UserError, match="role must be"):
        users.create("bob", "long enough password", "root", "cli")
    with pytest.raises(UserError, match="already exists"):
        users.create("admin", "long enough password", "admin", "cli")
    with pytest.raises(UserError, match="username"):
        users.create("Bad Name", "long enough password", "admin", "cli")
    assert [u["username"] for u in users.list()] == ["admin"]


def test_lockout_after_repeated_failures(store):
    users = Users(store)
    users.create("eve", "a very long password", "auditor", "cli")
    for _ in range(MAX_FAILURES - 1):
        assert users.authenticate("eve", "bad guess number")["reason"] == \
            "invalid username or password"
    last = users.authenticate("eve", "bad guess number")
    # the caller is not told that the name exists and is now locked; the admin sees it
    assert last["reason"] == "invalid username or password"
    assert users.get("eve")["locked_until"] is not None
    # even the right password is refused while locked
    locked = users.authenticate("eve", "a very long password", remote="10.0.0.7")
    assert locked == {"ok": False, "role": None, "reason": "invalid username or password"}
    actions = [r["action"] for r in audit.records(actor="eve", limit=50)[0]]
    assert actions.count("auth.failed") == MAX_FAILURES and "auth.refused" in actions
    # lift the lock as time would, then the right password works again
    with store.transaction() as db:
        db.execute("UPDATE users SET locked_until='2000-01-01T00:00:00Z'")
    assert users.authenticate("eve", "a very long password")["ok"] is True


def test_change_password(store):
    users = Users(store)
    users.create("admin", "correct horse battery", "admin", "cli")
    with pytest.raises(PermissionError, match="old password is wrong"):
        users.change_password("admin", "nope nope nope", "new password here", "admin")
    users.change_password("admin", "correct horse battery", "new password here", "admin")
    assert users.authenticate("admin", "new password here")["ok"] is True
    with pytest.raises(LookupError):
        users.change_password("ghost", "x", "new password here", "admin")
