"""Bad input in any form gives a message on the page and changes nothing."""

from __future__ import annotations

import io

import pytest

from tests.appliance.panel.browser_forms import login, post
from tests.e2e.panel_stack import ADMIN_PASSWORD


@pytest.fixture
def admin(client):
    return login(client, "admin", ADMIN_PASSWORD)


def _flash_after(client, answer) -> str:
    assert answer.status_code == 302, answer.get_data(as_text=True)[:500]
    return client.get(answer.headers["Location"]).get_data(as_text=True)


def _total_jobs(daemon) -> int:
    return daemon.get("/v1/jobs", limit=1)["total"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"username": "shortpw", "role": "auditor", "password": "short",
          "password_confirm": "short"}, "at least 12 characters"),
        ({"username": "mismatch", "role": "auditor", "password": "long enough pw 1",
          "password_confirm": "long enough pw 2"}, "the two passwords differ"),
        ({"username": "Bad Name!", "role": "auditor", "password": "long enough pw 1",
          "password_confirm": "long enough pw 1"}, "username must be 1-32 characters"),
        ({"username": "rootish", "role": "root", "password": "long enough pw 1",
          "password_confirm": "long enough pw 1"}, "role must be one of"),
        ({"username": "x" * 500, "role": "auditor", "password": "long enough pw 1",
          "password_confirm": "long enough pw 1"}, "too long"),
        ({"role": "auditor", "password": "long enough pw 1",
          "password_confirm": "long enough pw 1"}, "username is missing"),
    ],
)
def test_bad_user_forms_change_nothing(client, daemon, admin, form, message):
    before = daemon.get("/v1/users")["users"]
    page = _flash_after(client, post(client, "/users", form, token=admin,
                                     headers={"Referer": "http://localhost/users"}))
    assert "Nothing changed" in page and message in page
    assert daemon.get("/v1/users")["users"] == before


def test_duplicate_user_is_refused_with_the_daemons_reason(client, daemon, admin):
    form = {"username": "admin", "role": "auditor", "password": "long enough pw 1",
            "password_confirm": "long enough pw 1"}
    page = _flash_after(client, post(client, "/users", form, token=admin))
    assert "Nothing changed" in page and "admin" in page
    roles = {u["username"]: u["role"] for u in daemon.get("/v1/users")["users"]}
    assert roles["admin"] == "admin"


@pytest.mark.parametrize(
    ("path", "form", "message"),
    [
        ("/jobs", {"kind": "format-disks"}, "unknown job kind"),
        ("/jobs", {}, "kind is missing"),
        ("/accelerators/benchmark", {"bits": "lots"}, "bits must be a whole number"),
        ("/accelerators/benchmark", {"bits": "777"}, "bits must be one of"),
        ("/accelerators/benchmark", {"bits": "512", "quick": "maybe"}, "quick must be"),
        ("/keys/generate", {"bits": "64"}, "bits must be one of"),
    ],
)
def test_bad_job_forms_start_nothing(client, daemon, admin, path, form, message):
    before = _total_jobs(daemon)
    page = _flash_after(client, post(client, path, form, token=admin))
    assert message in page
    assert _total_jobs(daemon) == before


@pytest.mark.parametrize(
    ("form", "message"),
    [({"session_timeout_min": "soon"}, "whole number"),
     ({"session_timeout_min": "0"}, "between 1 and 1440"),
     ({"session_timeout_min": "99999"}, "between 1 and 1440")],
)
def test_bad_settings_change_nothing(client, daemon, admin, form, message):
    before = daemon.get("/v1/settings")
    page = _flash_after(client, post(client, "/users/settings", form, token=admin))
    assert message in page
    assert daemon.get("/v1/settings") == before


def test_bad_profile_override_changes_nothing(client, daemon, admin):
    before = daemon.get("/v1/profile")
    page = _flash_after(client, post(client, "/users/profile-override",
                                     {"profile": "gigantic"}, token=admin))
    assert "profile must be one of" in page
    assert daemon.get("/v1/profile") == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"", "empty"), (b"[1, 2]", "JSON object"),
     (b"\xff\xfe\x00", "not UTF-8")],
)
def test_corrupt_bundle_upload_is_refused(client, admin, content, message):
    answer = post(client, "/attestation/verify",
                  {"bundle": (io.BytesIO(content), "bundle.json")}, token=admin,
                  content_type="multipart/form-data")
    page = _flash_after(client, answer)
    assert message in page and "Nothing changed" in page


def test_oversized_upload_is_refused(client, admin):
    answer = post(client, "/attestation/verify",
                  {"bundle": (io.BytesIO(b"{" + b" " * (400 * 1024) + b"}"), "big.json")},
                  token=admin, content_type="multipart/form-data")
    assert answer.status_code == 413
    assert "too large" in answer.get_data(as_text=True)


def test_daemon_refusal_is_shown_not_raised(client, daemon, admin):
    """Cancelling a job that does not exist: the daemon's reason lands on the page."""
    page = _flash_after(client, post(client, "/jobs/999999/cancel", {}, token=admin))
    assert "Nothing changed" in page


def test_missing_job_is_a_not_found_page(client, admin):
    answer = client.get("/jobs/999999")
    assert answer.status_code == 404
    page = answer.get_data(as_text=True)
    assert "<h1>Not found</h1>" in page and "999999" in page
    assert client.get("/jobs/999999.json").status_code == 404
