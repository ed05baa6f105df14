"""The admin panel used as a person would: a real Chromium against the real daemon and panel."""

from __future__ import annotations

import json
import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import log_in, new_context, screenshot

PAGES = [
    ("Overview", "Overview", "overview"),
    ("Accelerators", "Accelerators", "accelerators"),
    ("Keys", "Keys", "keys"),
    ("Attestation", "Attestation", "attestation"),
    ("Jobs", "Jobs", "jobs"),
    ("Audit", "Audit ledger", "audit"),
    ("Users & settings", "Users and settings", "users"),
]
JOB_DONE_MS = 150_000
FINISHED = re.compile(r"done|failed|cancelled|interrupted")


def flash(page: Page):
    return page.locator(".flash")


def check_accessible(page: Page) -> None:
    """Title, one h1, landmarks, and a label for every visible form control."""
    assert page.title().endswith("PEC appliance")
    expect(page.locator("h1")).to_have_count(1)
    expect(page.get_by_role("main")).to_have_count(1)
    expect(page.get_by_role("navigation", name="Main")).to_have_count(1)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
               .filter(e => e.labels.length === 0).map(e => e.name || e.id)"""
    )
    assert unlabelled == [], f"controls without a label on {page.url}: {unlabelled}"


def test_login_with_the_keyboard_alone(browser, panel):
    context = new_context(browser, panel)
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.locator("h1")).to_have_text("Log in")
    assert page.locator("input[name=username]").count() == 1
    assert page.locator("input[name=password]").count() == 1
    page.keyboard.type("admin")  # the user name field has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(panel.admin_password)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Overview")
    # The first Tab reaches the skip link, which moves the focus to the content.
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # the logout button, then the first navigation link
    expect(page.locator(":focus")).to_have_text("Overview")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "the keyboard focus is not visible"
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Accelerators")
    context.close()


def test_every_page_has_a_title_a_heading_and_labels(admin_page):
    page = admin_page
    for link, heading, name in PAGES:
        page.get_by_role("navigation", name="Main").get_by_role("link", name=link).click()
        expect(page.locator("h1")).to_have_text(heading)
        expect(page).to_have_title(re.compile(heading.split()[0]))
        check_accessible(page)
        link_state = page.get_by_role("link", name=link).get_attribute("aria-current")
        assert link_state == "page"
        screenshot(page, name)


def test_overview_shows_profile_health_and_live_charts(admin_page):
    page = admin_page
    page.goto("/")
    expect(page.get_by_role("heading", name="Profile")).to_be_visible()
    expect(page.locator(".profile-name")).to_have_text(
        re.compile(r"Mini|Standard|Jumbo|Unclassified"))
    expect(page.get_by_role("table", name=re.compile("Why this profile"))).to_be_visible()
    expect(page.get_by_role("row", name=re.compile("^HSM"))).to_be_visible()
    # Every profile's offer, this node's profile column marked (none when unclassified).
    matrix = page.get_by_role("table", name=re.compile("Capabilities each profile carries"))
    expect(matrix.locator("thead th")).to_have_count(5)
    profile = page.locator(".profile-name").inner_text().strip().lower()
    marked = matrix.locator("thead th.this-profile")
    if profile in ("unclassified", "development"):  # neither is a column of the matrix
        expect(marked).to_have_count(0)
    else:
        expect(marked).to_have_count(1)
        expect(marked).to_contain_text(re.compile(profile, re.I))
        expect(matrix.locator("tbody td.this-profile")).to_have_count(
            matrix.locator("tbody tr").count())
    # Live figures arrive by polling: the CPU chart gets a line of several points.
    cpu_line = page.locator('figure[data-series="cpu"] polyline')
    expect(cpu_line).to_have_attribute("points", re.compile(r"\S+ \S+ \S+"), timeout=12_000)
    expect(page.locator('output[data-value="net"]')).to_have_text(re.compile(r"in .*/s"))
    screenshot(page, "overview-live")


def test_benchmark_job_runs_to_its_chart(admin_page):
    page = admin_page
    page.goto("/accelerators")
    page.get_by_label("Key size (bits)").select_option("512")
    page.get_by_label("Quick run (small batches)").check()
    page.get_by_role("button", name="Start benchmark").click()
    expect(page).to_have_url(re.compile(r"/accelerators\?job=\d+"))
    shown = page.get_by_role("region", name="Benchmark result")
    expect(shown.locator(".job-progress progress")).to_be_visible()
    # The page follows the job's progress and shows the chart once it is done.
    status = shown.locator(".job-status")
    expect(status).to_contain_text(FINISHED, timeout=JOB_DONE_MS)
    expect(status).to_contain_text("done")
    expect(shown.locator("figure.chart svg")).to_be_visible()
    assert shown.locator("figure.chart rect.bar-0").count() >= 3
    assert shown.locator("figure.chart rect.bar-base").count() >= 3
    expect(shown.get_by_role("table", name=re.compile("as a table"))).to_contain_text("encrypt")
    screenshot(page, "accelerators-benchmark")
    page.get_by_role("link", name=re.compile(r"^#\d+$")).first.click()
    expect(page.locator("h1")).to_contain_text("benchmark")
    expect(page.get_by_role("heading", name="Log")).to_be_visible()


def test_profile_override_then_generate_a_key(admin_page):
    page = admin_page
    page.goto("/users")
    page.get_by_label("Profile", exact=True).select_option("standard")
    page.get_by_role("button", name="Apply").click()
    expect(flash(page)).to_contain_text("overridden to standard")
    page.goto("/keys")
    page.get_by_label("Modulus size (bits)").select_option("2048")
    page.get_by_role("button", name="Generate key").click()
    expect(page.locator("h1")).to_contain_text("keygen")
    expect(page.locator(".job-status")).to_contain_text(FINISHED, timeout=JOB_DONE_MS)
    expect(page.locator(".job-status")).to_contain_text("done")
    result = page.get_by_role("region", name="Result data").inner_text()
    assert "fingerprint" in result
    assert "private" not in result.lower() and "secret" not in result.lower()
    page.goto("/keys")
    expect(page.get_by_role("cell", name=re.compile("paillier", re.I)).first).to_be_visible()
    screenshot(page, "keys-generated")


def test_attestation_quote_download_and_verify(admin_page, tmp_path):
    page = admin_page
    page.goto("/attestation")
    expect(page.get_by_role("table", name=re.compile("PCR values"))).to_be_visible()
    page.get_by_role("button", name="Make quote").click()
    expect(flash(page)).to_contain_text("Quote made over nonce")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download bundle (JSON)").click()
    bundle_path = tmp_path / "bundle.json"
    download_info.value.save_as(bundle_path)
    bundle = json.loads(bundle_path.read_text())

    page.get_by_label("Attestation bundle (JSON file)").set_input_files(str(bundle_path))
    page.get_by_role("button", name="Verify bundle").click()
    expect(flash(page)).to_contain_text("Bundle verified")
    # This node's own bundle also meets its golden PCR policy.
    expect(page.locator("td .badge", has_text="differs")).to_have_count(0)
    page.get_by_label("Attestation bundle (JSON file)").set_input_files(str(bundle_path))
    page.get_by_label("Also require this node's golden PCR values").check()
    page.get_by_role("button", name="Verify bundle").click()
    expect(flash(page)).to_contain_text("Bundle verified")
    screenshot(page, "attestation-verified")

    # A bundle changed after signing is rejected with the reason.
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(_tamper(bundle)))
    page.get_by_label("Attestation bundle (JSON file)").set_input_files(str(tampered))
    page.get_by_role("button", name="Verify bundle").click()
    expect(flash(page)).to_contain_text("REJECTED")

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"quote": ')
    page.get_by_label("Attestation bundle (JSON file)").set_input_files(str(corrupt))
    page.get_by_role("button", name="Verify bundle").click()
    expect(flash(page)).to_contain_text("not valid JSON")


def _tamper(bundle: dict) -> dict:
    """Flip one hex digit of the nonce (or, failing that, of the first hex string found)."""
    text = json.dumps(bundle)
    target = bundle.get("nonce") if isinstance(bundle.get("nonce"), str) else None
    if target is None:
        target = re.search(r'"([0-9a-f]{16,})"', text).group(1)
    flipped = ("1" if target[0] != "1" else "2") + target[1:]
    return json.loads(text.replace(target, flipped, 1))


def test_ledger_verifies_and_lists_the_panel_logins(admin_page):
    page = admin_page
    page.goto("/audit")
    page.get_by_role("button", name="Verify ledger").click()
    expect(flash(page)).to_contain_text("Ledger verified")
    page.get_by_label("Action").fill("panel.login")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("cell", name="panel.login", exact=True).first).to_be_visible()
    screenshot(page, "audit-verified")


def test_jobs_filter_details_and_cancel(admin_page):
    page = admin_page
    page.goto("/jobs")
    page.get_by_label("Job to start").select_option("burnin")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("h1")).to_contain_text("burnin")
    expect(page.locator(".job-status")).to_contain_text("running", timeout=30_000)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".job-status")).to_contain_text("cancelled", timeout=30_000)
    expect(page.get_by_role("heading", name="Log")).to_be_visible()
    job_url = page.url
    page.goto("/jobs")
    page.get_by_label("State").select_option("cancelled")
    page.get_by_label("Kind", exact=True).select_option("burnin")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("cell", name="burnin").first).to_be_visible()
    expect(page.locator("tbody .state-done")).to_have_count(0)
    # A cancelled job can be run again from its page, and cancelled again.
    page.goto(job_url)
    page.get_by_role("button", name="Run again").click()
    expect(flash(page)).to_contain_text("queued again")
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".job-status")).to_contain_text("cancelled", timeout=30_000)


def _create_user(page: Page, username: str, password: str, role: str) -> None:
    page.goto("/users")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Role", exact=True).select_option(role)
    page.get_by_label("Password (at least 12 characters)", exact=True).fill(password)
    page.get_by_label("Repeat the password", exact=True).fill(password)
    page.get_by_role("button", name="Create user").click()
    expect(flash(page)).to_contain_text(f"User {username} ({role}) created")


def test_account_locks_after_repeated_bad_passwords(admin_page, browser, panel):
    password = "victim password 42"
    _create_user(admin_page, "victim", password, "auditor")
    context = new_context(browser, panel)
    page = context.new_page()
    for _ in range(5):
        log_in(page, "victim", "not the password")
        expect(flash(page)).to_contain_text("Login refused")
    log_in(page, "victim", password)  # the right password, too late
    # the same answer as for an unknown name: the page does not tell that "victim" exists
    expect(flash(page)).to_contain_text("invalid username or password")
    expect(page.locator("h1")).to_have_text("Log in")
    screenshot(page, "login-locked")
    # an admin sees the lock and lifts it
    admin_page.goto("/users")
    row = admin_page.get_by_role("row", name=re.compile("^victim"))
    expect(row).to_contain_text("locked")
    row.get_by_role("button", name="Unlock victim").click()
    expect(flash(admin_page)).to_contain_text("User victim is unlocked")
    log_in(page, "victim", password)
    expect(page.locator("h1")).to_have_text("Overview")
    context.close()


def test_auditor_sees_no_write_controls_and_is_refused_a_direct_write(admin_page, browser,
                                                                      panel):
    password = "auditor password 42"
    _create_user(admin_page, "audra", password, "auditor")
    context = new_context(browser, panel)
    page = context.new_page()
    log_in(page, "audra", password)
    expect(page.locator(".who")).to_contain_text("auditor")
    page.goto("/users")
    expect(page.get_by_role("heading", name="Create a user")).to_have_count(0)
    expect(page.get_by_role("heading", name="Change your password")).to_be_visible()
    page.goto("/accelerators")
    expect(page.get_by_role("button", name="Start benchmark")).to_have_count(0)
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    answer = context.request.post(
        "/accelerators/benchmark",
        form={"bits": "512", "quick": "on", "csrf_token": token},
        headers={"Origin": panel.url},
    )
    assert answer.status == 403 and "read-only" in answer.text()
    context.close()


def test_write_without_csrf_token_is_refused(admin_page, panel):
    request = admin_page.context.request
    form = {"username": "sneaky", "role": "admin",
            "password": "long enough pw 1", "password_confirm": "long enough pw 1"}
    answer = request.post("/users", form=form, headers={"Origin": panel.url})
    assert answer.status == 400 and "CSRF" in answer.text()
    admin_page.goto("/users")
    expect(admin_page.get_by_role("row", name=re.compile("^sneaky"))).to_have_count(0)


def test_partners_and_data_sets_pages(admin_page):
    page = admin_page
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="Partners").click()
    expect(page.locator("h1")).to_have_text("Partners")
    check_accessible(page)
    expect(page.get_by_role("heading", name="Enrolled partners")).to_be_visible()
    page.get_by_role("button", name="Show this node's card").click()
    # this daemon has no interconnect endpoint: the page says why there is no card
    expect(page.get_by_role("note").filter(has_text="card not available")).to_be_visible()
    screenshot(page, "partners")
    nav.get_by_role("link", name="Data sets").click()
    expect(page.locator("h1")).to_have_text("Data sets")
    check_accessible(page)
    expect(page.get_by_role("heading", name="Add a data set")).to_be_visible()
    screenshot(page, "datasets")
