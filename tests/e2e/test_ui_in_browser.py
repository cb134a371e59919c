"""The operator's browser (headless Chromium, tests/browser.py) on the shared stack, working on
what the REST runs of every DAG left (the `rest_runs` fixture): it logs in and sees the project's
DAGs, triggers db_restore from its trigger form into a new database and sees the run succeed,
opens each dashboard page and sees its panels filled (a backup, a champion with its plots,
published offers, ROI, feedback and audits), and presses the model rollback button; the rollback
action refuses a request without a login or from another origin. A screenshot of every browser
step lands in test-artifacts/browser/ (the path is printed at the end of the module).
"""

from __future__ import annotations

import shutil
import urllib.request
import uuid
from pathlib import Path

import pytest

from include.ids import DAG_IDS
from tests.airflow_api import api, dag_runs, dag_url, rows, token_for, wait_for, wait_for_success
from tests.browser import ARTIFACTS, chromium, ensure_chromium, shot, status_of, until


@pytest.fixture(scope="session", autouse=True)
def chromium_installed():
    """Before the shared stack's minutes of start-up, so that a missing browser fails fast."""
    ensure_chromium()


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
    driver = chromium()
    yield driver
    driver.quit()


def test_login_in_the_browser_shows_the_project_dags(ops_stack, rest_runs, browser, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    login = ops_stack.info.login
    browser.get(f"{login['url']}/")
    until(browser, EC.presence_of_element_located((By.NAME, "username")), "the login form").send_keys(
        login["username"]
    )
    browser.find_element(By.NAME, "password").send_keys(login["password"])
    shot(browser, shots, "login")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda b: "/auth/login" not in b.current_url, "the login to go through")

    browser.get(f"{login['url']}/dags")
    for dag_id in DAG_IDS:
        until(
            browser,
            EC.presence_of_element_located((By.LINK_TEXT, dag_id)),
            f"{dag_id} in the DAG list",
        )
    shot(browser, shots, "dag-list")


def test_db_restore_triggered_from_its_form_restores_into_a_new_database(
    ops_stack, rest_runs, browser, shots
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    wait_for_success(ops_stack, "db_backup")
    login = ops_stack.info.login
    target = f"restore_browser_{uuid.uuid4().hex[:8]}"
    earlier = {r["dag_run_id"] for r in dag_runs(ops_stack, "db_restore")}  # the REST run above
    browser.get(f"{login['url']}/dags/db_restore")
    until(
        browser,
        EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")),
        "the Trigger button",
    ).click()
    field = until(
        browser,
        EC.visibility_of_element_located((By.ID, "element_target_database")),
        "the trigger form's target_database field",
    )
    field.send_keys(target)
    shot(browser, shots, "db_restore-trigger-form")
    submit = browser.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space()='Trigger']")
    until(browser, lambda b: submit.is_enabled(), "the form to validate")
    submit.click()

    def new_runs() -> list[dict]:
        return [r for r in dag_runs(ops_stack, "db_restore") if r["dag_run_id"] not in earlier]

    [run] = wait_for(new_runs, 60, "the triggered run")
    assert run["conf"]["target_database"] == target
    browser.get(f"{login['url']}/dags/db_restore/runs/{run['dag_run_id']}")
    # the page has a state badge for the run and one per task: all Success, none Running or Queued
    badges = "//*[contains(@class, 'badge') and normalize-space()='{}']"
    until(
        browser,
        lambda b: (
            b.find_elements(By.XPATH, badges.format("Success"))
            and not any(b.find_elements(By.XPATH, badges.format(s)) for s in ("Running", "Queued", "Failed"))
        ),
        "the run to show success",
        timeout=1800,
    )
    shot(browser, shots, "db_restore-run-success")
    assert (
        api(f"{dag_url(ops_stack, 'db_restore')}/dagRuns/{run['dag_run_id']}", token_for(login))["state"]
        == "success"
    )

    public_tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    restored = {r[0] for r in rows(ops_stack, public_tables, dbname=target)}
    assert {"execution_tasks", "backups", "model_versions", "offer_roi"} <= restored
    assert rows(ops_stack, "SELECT count(*) FROM execution_tasks", dbname=target)[0][0] > 0


DASHBOARD = {  # page -> the panels that must show rows once the runs above have succeeded
    ".": ("Backups", "Task queue"),
    "models": ("Model versions",),
    "offers": ("Published offers", "Offer ROI", "Offer feedback"),
    "audits": ("Audits",),
}


def test_each_dashboard_page_in_the_browser_renders_its_panels_with_data(
    ops_stack, rest_runs, browser, shots
):
    from selenium.webdriver.common.by import By

    # ROI is computed for the offers the champion published: the second wave's roi_sync ran
    # after the first wave's retrain
    for dag_id in ("offer_model_retrain", "adversarial_audit", "offer_feedback", "roi_sync"):
        wait_for_success(ops_stack, dag_id)
    login = ops_stack.info.login
    browser.get(f"{login['url']}/")  # the UI's navigation has the dashboard's entry
    until(
        browser,
        lambda b: b.find_elements(By.XPATH, "//a[contains(@href, 'ops')] | //*[@title='Ops dashboard']"),
        "the Ops dashboard entry in the UI's navigation",
    )
    for page, filled in DASHBOARD.items():
        browser.get(f"{login['url']}/ops/{page}")
        panels = {
            e.get_attribute("data-panel"): int(e.get_attribute("data-rows"))
            for e in browser.find_elements(By.CSS_SELECTOR, "section.panel")
        }
        name = "overview" if page == "." else page
        shot(browser, shots, f"dashboard-{name}")
        empty = [title for title in filled if not panels.get(title)]
        assert not empty, f"dashboard page {name}: panels without rows {empty} (all: {panels})"
        if name == "models":
            images = browser.find_elements(By.CSS_SELECTOR, "img[data-plot]")
            assert {i.get_attribute("data-plot") for i in images} == {"roc", "calibration"}
            assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images), (
                "every stored plot loads (from the database)"
            )
        if name == "audits":
            assert "Leading indicators" in panels


def test_the_rollback_button_triggers_offer_model_retrain_with_rollback(ops_stack, rest_runs, browser, shots):
    from selenium.webdriver.common.by import By

    login = ops_stack.info.login
    before = {r["dag_run_id"] for r in dag_runs(ops_stack, "offer_model_retrain")}
    browser.get(f"{login['url']}/ops/models")
    browser.find_element(By.ID, "rollback").click()
    flash = until(browser, lambda b: b.find_elements(By.ID, "flash"), "the dashboard to confirm the trigger")[
        0
    ]
    shot(browser, shots, "dashboard-models-rollback-triggered")
    new = [r for r in dag_runs(ops_stack, "offer_model_retrain") if r["dag_run_id"] not in before]
    assert len(new) == 1 and set(new[0]["conf"]) == {"rollback", "champion_id"}, new
    assert new[0]["conf"]["rollback"] is True and new[0]["conf"]["champion_id"] > 0, (
        "names the champion shown"
    )
    assert new[0]["dag_run_id"] in flash.text
    assert new[0]["triggering_user_name"] == login["username"]


def test_the_rollback_action_needs_a_login_and_this_origin(ops_stack):
    login = ops_stack.info.login
    url = f"{login['url']}/ops/models/rollback"
    before = len(dag_runs(ops_stack, "offer_model_retrain"))

    def post(headers: dict[str, str]) -> int:
        return status_of(urllib.request.Request(url, data=b"", method="POST", headers=headers))

    bearer = {"Authorization": f"Bearer {token_for(login)}"}
    assert post({"Origin": login["url"]}) in (401, 403), "no login"
    assert post({**bearer, "Origin": "http://attacker.example"}) == 403, "another site's page"
    assert post(bearer) == 403, "no Origin or Referer at all"
    assert len(dag_runs(ops_stack, "offer_model_retrain")) == before, "no refused request triggered a run"
    for page in ("", "models", "offers", "audits"):
        assert status_of(urllib.request.Request(f"{login['url']}/ops/{page}")) in (401, 403), (
            f"/ops/{page} without a login"
        )
