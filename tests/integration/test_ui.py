"""The Prefect UI, for real: a completed and a failed deploy run opened in headless Chromium
(Debian's, driven by Playwright), served by the test's own Prefect server.

Checked on each run's page: the run's state, its steps (task runs) with their states (a
Skipped step is a Completed state named "Skipped"), and lines of its log; for the failed run
also its summary artifact (failed step, suggested fix). Screenshots of every page go to the
test's tmp_path and to test-output/ui/ at the repository root.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Route, expect, sync_playwright

from deploy_runs import RunStatus, StepStatus
from deploy_runs.models import Run
from flows.deploy import run_in_process

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium` (deploy_runs.sandbox install)
# --headless etc.: no display; --no-sandbox: we run as root; the rest stop Chromium's own
# background connections (updates, sync, QUIC probes) so that only loopback traffic is made.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "ui"
WAIT_MS = 30_000  # the longest any check waits for the page to show something
ACTIVE = re.compile(r"\bp-tab__active\b")  # the class of the selected tab

STEPS = ("Provision server", "Fetch source", "Build images", "Start application", "Health check")


@pytest.fixture(scope="module")
def ui_runs(client, make_app) -> tuple[Run, Run]:
    """One app, deployed twice: a completed run (by the worker, as `deploy-runs deploy` does)
    and a failed one (an unknown ref; run in this process), whose Provision is then Skipped."""
    app = make_app("hello")
    completed = client.wait(client.deploy(app.name).id, timeout=180)
    assert completed.status is RunStatus.COMPLETED, completed.error
    state = run_in_process(app.name, ref="no-such-branch")
    failed = client.wait(state.state_details.flow_run_id, timeout=120)
    assert failed.status is RunStatus.FAILED, failed.status
    assert failed.step("Provision server").status is StepStatus.SKIPPED, failed.steps
    return completed, failed


@contextlib.contextmanager
def chromium_page(height: int = 1100) -> Iterator[Page]:
    """A page of Debian's headless Chromium with a fresh profile, allowed to reach this
    machine only (any other request is refused, and fails the test afterwards)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `python -m deploy_runs.sandbox install`")
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": height})
        outside: list[str] = []
        context.route("**/*", lambda route: loopback_only(route, outside))
        try:
            yield context.new_page()
        finally:
            context.close()
        assert not outside, f"the pages asked for addresses off this machine: {outside}"


@pytest.fixture
def page(ui_runs, prefect_api: str) -> Iterator[Page]:
    with chromium_page() as opened:
        yield opened


def ui_base(prefect_api: str) -> str:
    return prefect_api.removesuffix("/api")


def loopback_only(route: Route, outside: list[str]) -> None:
    """Requests of the pages go to this machine only; any other is refused and noted."""
    if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost", "::1"):
        route.fallback()
    else:
        outside.append(route.request.url)
        route.abort()


def test_the_ui_is_told_the_servers_own_api_url(prefect_api: str):
    """The UI asks the server where the API is (/ui-settings); a server on another port than
    Prefect's default 4200 must answer its own URL, or the pages talk to nothing."""
    with urllib.request.urlopen(ui_base(prefect_api) + "/ui-settings", timeout=10) as answer:
        assert json.load(answer)["api_url"] == prefect_api


@contextlib.contextmanager
def shot(page: Page, tmp_path: Path, name: str) -> Iterator[None]:
    """Checks on one view of a page, then its screenshot (also when a check failed), in
    tmp_path and test-output/ui/."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(PlaywrightError):  # the check's own error matters more
            save_screenshot(page, tmp_path / f"{name}.png")
        raise
    save_screenshot(page, tmp_path / f"{name}.png")


def save_screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


def open_run(page: Page, prefect_api: str, run: Run) -> None:
    page.goto(f"{ui_base(prefect_api)}/runs/flow-run/{run.id}")
    heading = page.locator(".page-heading-flow-run")
    expect(heading).to_contain_text(run.name, timeout=WAIT_MS)
    expect(heading.locator(".state-badge")).to_have_text(str(run.status), timeout=WAIT_MS)


def tab(page: Page, name: str):
    return page.locator("[role=tablist] .p-tab").filter(has_text=re.compile(rf"^{name}$"))


def open_tab(page: Page, name: str) -> None:
    tab(page, name).click()
    expect(tab(page, name)).to_have_class(ACTIVE, timeout=WAIT_MS)


def log_row(page: Page, text: str, step: str):
    """The log row (Logs tab) holding `text`, logged by the task run `step`. The log list
    renders only the rows near the view: scroll down through it until the row is there."""
    row = page.locator(".log-row").filter(has_text=text).filter(
        has=page.locator(".log-row__trailing", has_text=step)).first
    expect(page.locator(".log-row").first).to_be_visible(timeout=WAIT_MS)
    logs = page.locator(".logs")
    deadline = time.monotonic() + WAIT_MS / 1000
    while row.count() == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"no log row of {step!r} with {text!r} on {page.url}")
        logs.hover()
        page.mouse.wheel(0, 600)
        with contextlib.suppress(PlaywrightError):
            row.wait_for(state="attached", timeout=250)
    row.scroll_into_view_if_needed()
    expect(row).to_be_visible(timeout=WAIT_MS)
    return row


def check_steps(page: Page, expected: dict[str, tuple[str, str]]) -> None:
    """Task Runs tab: each step's row with its state's name and type (a Skipped step is a
    Completed state named "Skipped")."""
    open_tab(page, "Task Runs")
    rows = page.locator(".task-run-list-item")
    expect(rows).to_have_count(len(expected), timeout=WAIT_MS)
    for step, (name, state_type) in expected.items():
        row = rows.filter(has=page.get_by_role("link", name=step, exact=True))
        expect(row).to_have_count(1, timeout=WAIT_MS)
        badge = row.locator(".state-badge")
        expect(badge).to_have_text(name, timeout=WAIT_MS)
        expect(badge).to_have_class(re.compile(rf"\bstate--{state_type}\b"), timeout=WAIT_MS)


def test_completed_run_page_shows_its_steps_states_and_logs(ui_runs, page, prefect_api,
                                                           tmp_path):
    completed, _ = ui_runs
    with shot(page, tmp_path, "completed-run-logs"):
        open_run(page, prefect_api, completed)
        # Logs, the page's first tab: lines of every step, each with the step that logged it
        expect(tab(page, "Logs")).to_have_class(ACTIVE, timeout=WAIT_MS)
        log_row(page, f"deploying commit {completed.commit}", "Fetch source")
        log_row(page, "$ docker build --tag deploy-runs/", "Build images")

    with shot(page, tmp_path, "completed-run-task-runs"):
        check_steps(page, {step: ("Completed", "completed") for step in STEPS})


def test_failed_run_page_shows_the_failed_step_and_its_summary(ui_runs, page, prefect_api,
                                                              tmp_path):
    _, failed = ui_runs
    with shot(page, tmp_path, "failed-run-logs"):
        open_run(page, prefect_api, failed)
        log_row(page, "'no-such-branch^{commit}'", "Fetch source")
        log_row(page, "git ref 'no-such-branch' was not found", "Fetch source")

    with shot(page, tmp_path, "failed-run-task-runs"):
        # Provision was done by the completed run; the steps after the failed one do not run
        # and show Skipped (a Completed state named "Skipped"), as in the summary artifact.
        check_steps(page, {"Provision server": ("Skipped", "completed"),
                           "Fetch source": ("Failed", "failed"),
                           "Build images": ("Skipped", "completed"),
                           "Start application": ("Skipped", "completed"),
                           "Health check": ("Skipped", "completed")})

    with shot(page, tmp_path, "failed-run-artifacts"):
        open_tab(page, "Artifacts")
        card = page.locator('a[href^="/artifacts/artifact/"]').filter(
            has_text=f"deploy-run-{failed.app}")
        expect(card).to_be_visible(timeout=WAIT_MS)
        expect(card).to_contain_text(f"deploy-runs: {failed.app} Failed")

    with shot(page, tmp_path, "failed-run-artifact"):
        card.click()
        # the artifact's own page: the summary markdown, rendered
        expect(page).to_have_url(re.compile(r"/artifacts/artifact/[0-9a-f-]+$"), timeout=WAIT_MS)
        summary = page.locator(".markdown-renderer").filter(has_text="Suggested fixes")
        expect(summary).to_be_visible(timeout=WAIT_MS)
        expect(summary.get_by_role("heading", name="🔴 Fetch source failed")).to_be_visible()
        expect(summary.get_by_role("heading", name="Suggested fixes")).to_be_visible()
        expect(summary).to_contain_text("git-ref-not-found")
        expect(summary).to_contain_text("Git ref no-such-branch does not exist")
        # its step table: every step, the ones that did not run crossed out
        for step, status in (("Provision server", "Skipped"), ("Fetch source", "Failed"),
                             ("Build images", "Skipped"), ("Start application", "Skipped"),
                             ("Health check", "Skipped")):
            row = summary.locator("tr").filter(has=page.get_by_text(step, exact=True))
            expect(row).to_contain_text(status)
            expect(row.get_by_text(step, exact=True)).to_have_css(
                "text-decoration-line", "line-through" if status == "Skipped" else "none")
