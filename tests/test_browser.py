"""The operator's browser: headless Chromium drives Airflow's UI and the ops dashboard.

One stack for the module (Airflow included, app database migrated to head). Setup runs
db_backup, offer_model_retrain, adversarial_audit and offer_feedback through the REST API, so
the restore and the dashboard have something to show. The tests, in order: log in and see the
project's DAGs; trigger db_restore from its trigger form into a new database and see the run
succeed in the UI; open each dashboard page and see its panels filled; press the model
rollback button and see a run of offer_model_retrain with the rollback conf. A screenshot of
every step lands in test-artifacts/browser/ (the path is printed at the end of the module).

The browser is Debian's chromium with its chromedriver, installed here when missing (as root);
nothing downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg2
import pytest

from include.devstack.stack import LocalStack
from include.migrations import upgrade
from tests.airflow_api import api, running, token_for, wait_for

pytestmark = pytest.mark.airflow_stack

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
UI_TIMEOUT = 180  # the UI's bundle and queries on a busy 2-core machine


def ensure_chromium() -> None:
    """Debian's chromium and chromium-driver, installed with apt when missing (root only)."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if os.geteuid() != 0:
        pytest.fail("the browser suite needs Debian's chromium and chromium-driver: run "
                    "`sudo apt-get install -y --no-install-recommends chromium chromium-driver`")  # fmt: skip
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode:  # a stale package list
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


class MigratedStack(LocalStack):
    """The stack with the app database at head before Airflow starts: the scheduled runs that
    start with it (db_backup, offer_model_retrain, adversarial_audit, offer_feedback) then fill
    every table the dashboard reads."""

    def _start_airflow(self) -> None:
        upgrade(self.app_dsn(), "head")
        super()._start_airflow()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    ensure_chromium()  # before the stack's minute of start-up, so a missing browser fails fast
    with running(MigratedStack(tmp_path_factory.mktemp("browser-stack"), api_port=0)) as stack:
        yield stack


@pytest.fixture(scope="module")
def shots(request):
    """Screenshots, numbered in the order taken; the folder is printed after the module."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    taken: list[Path] = []
    yield taken
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"\nbrowser screenshots ({len(taken)}): {ARTIFACTS}")


@pytest.fixture(scope="module")
def browser(shots):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT)
    yield driver
    driver.quit()


def shot(browser, shots: list[Path], name: str) -> Path:
    path = ARTIFACTS / f"{len(shots) + 1:02d}-{name}.png"
    browser.save_screenshot(str(path))
    shots.append(path)
    return path


def until(browser, condition, what: str, timeout: float = UI_TIMEOUT):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=1).until(condition)
    except TimeoutException:
        path = ARTIFACTS / f"timeout-{uuid.uuid4().hex[:6]}.png"
        browser.save_screenshot(str(path))
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (screenshot {path})") from None


def dag_runs(stack, dag_id: str, query: str = "") -> list[dict]:
    login = stack.info.login
    url = f"{login['url']}/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after{query}"
    try:
        return api(url, token_for(login))["dag_runs"]
    except urllib.error.HTTPError:  # not parsed yet
        return []


def wait_for_success(stack, dag_id: str, timeout: float = 1800) -> dict:
    """A successful run of `dag_id` (its scheduled first run, or a later one); fails fast when
    every run so far has failed."""

    def succeeded():
        runs = dag_runs(stack, dag_id)
        if runs and all(r["state"] == "failed" for r in runs):
            raise AssertionError(f"every run of {dag_id} failed: {[r['dag_run_id'] for r in runs]}")
        return next((r for r in runs if r["state"] == "success"), None)

    return wait_for(succeeded, timeout, f"a successful run of {dag_id}")


def app_rows(stack, sql: str, dbname: str = "app") -> list[tuple]:
    conn = psycopg2.connect(stack.app_dsn(dbname))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_login_shows_the_project_dags(stack, browser, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    login = stack.info.login
    browser.get(f"{login['url']}/")
    until(browser, EC.presence_of_element_located((By.NAME, "username")), "the login form").send_keys(login["username"])
    browser.find_element(By.NAME, "password").send_keys(login["password"])
    shot(browser, shots, "login")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda b: "/auth/login" not in b.current_url, "the login to go through")

    browser.get(f"{login['url']}/dags")
    project_dags = ("platform_healthcheck", "db_backup", "db_restore", "db_migrate", "task_batch",
                    "adversarial_audit", "offer_model_retrain", "offer_feedback", "roi_sync")  # fmt: skip
    for dag_id in project_dags:
        until(browser, EC.presence_of_element_located((By.LINK_TEXT, dag_id)), f"{dag_id} in the DAG list")
    shot(browser, shots, "dag-list")


def test_db_restore_triggered_from_its_form_restores_into_a_new_database(stack, browser, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    wait_for_success(stack, "db_backup")
    login = stack.info.login
    target = f"restore_browser_{uuid.uuid4().hex[:8]}"
    browser.get(f"{login['url']}/dags/db_restore")
    until(browser, EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")),
          "the Trigger button").click()  # fmt: skip
    field = until(browser, EC.visibility_of_element_located((By.ID, "element_target_database")),
                  "the trigger form's target_database field")  # fmt: skip
    field.send_keys(target)
    shot(browser, shots, "db_restore-trigger-form")
    submit = browser.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space()='Trigger']")
    until(browser, lambda b: submit.is_enabled(), "the form to validate")
    submit.click()

    run = wait_for(lambda: next(iter(dag_runs(stack, "db_restore")), None), 60, "the triggered run")
    assert run["conf"]["target_database"] == target
    browser.get(f"{login['url']}/dags/db_restore/runs/{run['dag_run_id']}")
    # the page has a state badge for the run and one per task: all Success, none Running or Queued
    badges = "//*[contains(@class, 'badge') and normalize-space()='{}']"
    until(browser, lambda b: b.find_elements(By.XPATH, badges.format("Success"))
          and not any(b.find_elements(By.XPATH, badges.format(s)) for s in ("Running", "Queued", "Failed")),
          "the run to show success", timeout=1800)  # fmt: skip
    shot(browser, shots, "db_restore-run-success")
    assert api(f"{login['url']}/api/v2/dags/db_restore/dagRuns/{run['dag_run_id']}", token_for(login))["state"] == "success"

    restored = {r[0] for r in app_rows(stack, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", target)}
    assert {"execution_tasks", "backups", "model_versions", "offer_roi"} <= restored
    assert app_rows(stack, "SELECT count(*) FROM execution_tasks", target)[0][0] > 0


DASHBOARD = {  # page -> the panels that must show rows once the setup runs have succeeded
    ".": ("Backups", "Task queue"),
    "models": ("Model versions",),
    "offers": ("Published offers", "Offer ROI", "Offer feedback"),
    "audits": ("Audits",),
}


def test_each_dashboard_page_renders_its_panels_with_data(stack, browser, shots):
    from selenium.webdriver.common.by import By

    for dag_id in ("offer_model_retrain", "adversarial_audit", "offer_feedback"):
        wait_for_success(stack, dag_id)
    # ROI is computed for the offers the champion published, so after the retrain
    login = stack.info.login
    roi_run = api(f"{login['url']}/api/v2/dags/roi_sync/dagRuns", token_for(login), {"logical_date": None})
    wait_for(lambda: next((r["state"] for r in dag_runs(stack, "roi_sync") if r["dag_run_id"] == roi_run["dag_run_id"]
                           and r["state"] in ("success", "failed")), None) == "success", 600, "roi_sync")  # fmt: skip

    browser.get(f"{login['url']}/")  # the UI's navigation has the dashboard's entry
    until(browser, lambda b: b.find_elements(By.XPATH, "//a[contains(@href, 'ops')] | //*[@title='Ops dashboard']"),
          "the Ops dashboard entry in the UI's navigation")  # fmt: skip
    for page, filled in DASHBOARD.items():
        browser.get(f"{login['url']}/ops/{page}")
        panels = {e.get_attribute("data-panel"): int(e.get_attribute("data-rows"))
                  for e in browser.find_elements(By.CSS_SELECTOR, "section.panel")}  # fmt: skip
        name = "overview" if page == "." else page
        shot(browser, shots, f"dashboard-{name}")
        empty = [title for title in filled if not panels.get(title)]
        assert not empty, f"dashboard page {name}: panels without rows {empty} (all: {panels})"
        if name == "models":
            images = browser.find_elements(By.CSS_SELECTOR, "img[data-plot]")
            assert {i.get_attribute("data-plot") for i in images} == {"roc", "calibration"}
            assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images), \
                "every stored plot loads from S3"
        if name == "audits":
            assert "Leading indicators" in panels


def test_the_rollback_button_triggers_offer_model_retrain_with_rollback(stack, browser, shots):
    from selenium.webdriver.common.by import By

    login = stack.info.login
    before = {r["dag_run_id"] for r in dag_runs(stack, "offer_model_retrain")}
    browser.get(f"{login['url']}/ops/models")
    browser.find_element(By.ID, "rollback").click()
    flash = until(browser, lambda b: b.find_elements(By.ID, "flash"), "the dashboard to confirm the trigger")[0]
    shot(browser, shots, "dashboard-models-rollback-triggered")
    new = [r for r in dag_runs(stack, "offer_model_retrain") if r["dag_run_id"] not in before]
    assert len(new) == 1 and new[0]["conf"] == {"rollback": True}, new
    assert new[0]["dag_run_id"] in flash.text
    assert new[0]["triggering_user_name"] == login["username"]


def test_the_rollback_action_needs_a_login_and_this_origin(stack):
    login = stack.info.login
    url = f"{login['url']}/ops/models/rollback"
    before = len(dag_runs(stack, "offer_model_retrain"))

    def post(headers: dict[str, str]) -> int:
        return status_of(urllib.request.Request(url, data=b"", method="POST", headers=headers))

    bearer = {"Authorization": f"Bearer {token_for(login)}"}
    assert post({"Origin": login["url"]}) in (401, 403), "no login"
    assert post({**bearer, "Origin": "http://attacker.example"}) == 403, "another site's page"
    assert post(bearer) == 403, "no Origin or Referer at all"
    assert len(dag_runs(stack, "offer_model_retrain")) == before, "no refused request triggered a run"
    for page in ("", "models", "offers", "audits"):
        assert status_of(urllib.request.Request(f"{login['url']}/ops/{page}")) in (401, 403), f"/ops/{page} without a login"


def status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
