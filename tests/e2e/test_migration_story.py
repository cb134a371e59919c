"""The demo story of docs/architecture.md on the shared stack (seeded app database at the
baseline), the way users run it: `airflow dags test` with a conf, and a REST-triggered run
approved through the API. Its tests run in order, each on what the one before left.

task_batch fails on the baseline schema and alerts; a broken revision is blocked by its
rehearsal; `dags test` rehearses and applies 0002; a revision that rewrites the table is rolled
back by the DAG; then, back at the baseline, a dry run rehearses and applies nothing, and a run
triggered through the API waits for approval, is approved, and applies head under the real
scheduler, after which task_batch drains the queue. adversarial_audit passes on the healthy
stack and fails, naming the gate, once an invariant is broken by hand: its FSAR report blocks
task_batch until, repaired, the next audit closes it and execution resumes. Last, the
ops dashboard, behind the login, shows the rollback and the failed gate.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from devstack.smtp_sink import read_messages
from include.migrations import current, downgrade, heads
from tests.airflow_api import api, dags_test, exists, rows, set_paused, token_for, wait_for
from tests.dags.test_task_batch_dag import VALID
from tests.project import FIXTURES

DAG_ID = "db_migrate"


@pytest.fixture(scope="module", autouse=True)
def at_the_baseline(ops_stack):
    """The story starts where the stack starts: the seeded app database at the baseline."""
    assert current(ops_stack.app_dsn()) == "0001", (
        "the migration story starts from the baseline the stack seeds: it runs before the modules "
        "that migrate the app database (tests/e2e/conftest.py orders them so)"
    )


def extra_versions(name: str) -> dict[str, str]:
    """The environment that adds the fixture revisions of tests/fixtures/migrations/`name`."""
    return {"MIGRATIONS_EXTRA_VERSIONS": str(FIXTURES / "migrations" / name)}


def has_column(stack, table: str, column: str) -> bool:
    return bool(
        rows(
            stack,
            "SELECT 1 FROM information_schema.columns "
            f"WHERE table_name = '{table}' AND column_name = '{column}'",
        )
    )


def last_run(stack) -> tuple:
    return rows(
        stack,
        "SELECT status, from_revision, backup_id, error FROM migration_runs ORDER BY id DESC LIMIT 1",
    )[0]


def test_before_the_migration_task_batch_fails_and_alerts(ops_stack):
    queued = rows(ops_stack, "SELECT count(*) FROM execution_tasks WHERE status = 'queued'")
    run = dags_test(ops_stack, "task_batch", {})
    assert run.returncode != 0
    assert rows(ops_stack, "SELECT count(*) FROM execution_tasks WHERE status = 'queued'") == queued
    levels = rows(
        ops_stack,
        "SELECT level FROM alerts WHERE dag_id = 'task_batch' "
        "AND message LIKE '%execution_tasks.ai_model does not exist%'",
    )
    assert levels and set(levels) == {("error",)}


def test_a_failing_rehearsal_blocks_production(ops_stack):
    assert current(ops_stack.app_dsn()) == "0001"
    run = dags_test(
        ops_stack, DAG_ID, {"target_revision": "0099", "skip_approval": True}, extra_versions("broken")
    )
    assert run.returncode != 0
    status, start, backup_id, error = last_run(ops_stack)
    assert (status, start) == ("failed", "0001") and "division by zero" in error
    # the rehearsal restored a verified backup (the gate's own, or db_backup's first scheduled run;
    # once this run failed, db_backup's retention may have deleted it)
    assert rows(ops_stack, f"SELECT verified_at IS NOT NULL FROM backups WHERE id = {int(backup_id)}") == [
        (True,)
    ]
    assert current(ops_stack.app_dsn()) == "0001"
    assert not has_column(ops_stack, "execution_tasks", "ai_model") and not has_column(
        ops_stack, "users", "nickname"
    )


def test_dags_test_rehearses_then_applies_0002(ops_stack):
    filenode = rows(ops_stack, "SELECT pg_relation_filenode('execution_tasks')")
    run = dags_test(ops_stack, DAG_ID, {"target_revision": "0002", "skip_approval": True})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Callback failed" not in run.stdout + run.stderr  # the run-metrics callback works here too
    assert current(ops_stack.app_dsn()) == "0002" and has_column(ops_stack, "execution_tasks", "ai_model")
    assert rows(ops_stack, "SELECT pg_relation_filenode('execution_tasks')") == filenode
    status, start, backup_id, _ = last_run(ops_stack)
    assert (status, start) == ("completed", "0001")
    # a fresh verified backup existed: the gate used it rather than taking one
    assert rows(
        ops_stack,
        f"SELECT b.verified_at < r.started_at FROM backups b, migration_runs r "
        f"WHERE b.id = {int(backup_id)} AND r.id = (SELECT max(id) FROM migration_runs)",
    ) == [(True,)]
    assert rows(ops_stack, "SELECT count(*) FROM execution_tasks WHERE ai_model IS NOT NULL")[0][0] > 0
    assert rows(ops_stack, "SELECT count(*) FROM security_events WHERE event_type = 'migration_applied'") == [
        (1,)
    ]


def test_a_revision_caught_after_apply_is_rolled_back_with_a_critical_alert(ops_stack):
    run = dags_test(
        ops_stack, DAG_ID, {"target_revision": "0098", "skip_approval": True}, extra_versions("rewrite")
    )
    assert run.returncode != 0
    assert last_run(ops_stack)[:2] == ("rolled_back", "0002"), run.stdout[-6000:] + run.stderr[-6000:]
    assert current(ops_stack.app_dsn()) == "0002"
    assert rows(
        ops_stack,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'execution_tasks'::regclass AND attname = 'priority'",
    ) == [("smallint",)]
    assert rows(
        ops_stack, "SELECT count(*) FROM security_events WHERE event_type = 'migration_rolled_back'"
    ) == [(1,)]
    mails = [
        m for m in read_messages(ops_stack.folder / "mail") if "rolled app_db back from 0098 to 0002" in m
    ]
    assert mails, "the rollback's critical alert reached no mailbox"


def test_a_dry_run_rehearses_and_applies_nothing(ops_stack):
    downgrade(ops_stack.app_dsn(), "0001")
    run = dags_test(ops_stack, DAG_ID, {"dry_run": True})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert last_run(ops_stack)[:2] == ("cancelled", "0001")
    assert current(ops_stack.app_dsn()) == "0001" and not has_column(ops_stack, "execution_tasks", "ai_model")


def test_a_run_triggered_in_the_ui_waits_for_approval_then_applies(ops_stack):
    assert current(ops_stack.app_dsn()) == "0001"
    set_paused(ops_stack, DAG_ID, False)  # this run goes through the scheduler
    login = ops_stack.info.login
    token = token_for(login)
    base = f"{login['url']}/api/v2/dags/{DAG_ID}"
    run_id = api(
        f"{base}/dagRuns",
        token,
        {
            "logical_date": None,
            "dag_run_id": f"ui_{uuid.uuid4().hex[:8]}",
            "conf": {"target_revision": heads()[0]},
        },
    )["dag_run_id"]
    approval = f"{base}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
    state = f"{base}/dagRuns/{run_id}/taskInstances/approve"
    wait_for(
        lambda: api(state, token)["state"] in ("deferred", "awaiting_input") and exists(approval, token),
        300,
        "the approval request",
    )
    assert current(ops_stack.app_dsn()) == "0001"  # rehearsed, nothing applied before approval
    # PITFALLS: an answer that arrives before the scheduler has handled the task's pause makes
    # the resumed task's success report fail (404 on its task instance) and the task retry; on
    # a loaded 2-core machine 3 s was not always enough
    time.sleep(10)
    api(approval, token, {"chosen_options": ["Approve"], "params_input": {}}, method="PATCH")
    final = wait_for(
        lambda: (s := api(f"{base}/dagRuns/{run_id}", token)["state"]) in ("success", "failed") and s,
        300,
        f"run {run_id} to finish",
    )
    assert final == "success"
    assert current(ops_stack.app_dsn()) == heads()[0] and has_column(ops_stack, "execution_tasks", "ai_model")
    assert last_run(ops_stack)[0] == "completed"


def test_after_the_migration_task_batch_drains_the_queue(ops_stack):
    assert rows(ops_stack, "SELECT count(*) FROM execution_tasks WHERE status = 'queued'")[0][0] > 0
    run = dags_test(ops_stack, "task_batch", {})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert rows(ops_stack, "SELECT count(*) FROM execution_tasks WHERE status IN ('queued', 'running')") == [
        (0,)
    ]
    assert rows(ops_stack, "SELECT count(*) FROM task_bottleneck_reports")[0][0] >= 1


def test_the_audit_passes_on_a_healthy_stack_and_names_a_broken_invariant(ops_stack):
    set_paused(ops_stack, DAG_ID, True)
    run = dags_test(ops_stack, "adversarial_audit", {})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert rows(ops_stack, "SELECT status FROM audit_runs ORDER BY id DESC LIMIT 1") == [("passed",)]
    # a dead task whose error was lost
    [(broken,)] = rows(
        ops_stack,
        "INSERT INTO execution_tasks (task_type, status, ai_model) "
        "VALUES ('idea', 'dead', 'gpt-4.1') RETURNING id",
    )
    run = dags_test(ops_stack, "adversarial_audit", {})
    assert run.returncode != 0
    assert rows(
        ops_stack,
        "SELECT r.status, f.gate FROM audit_runs r JOIN audit_findings f ON f.audit_run_id = r.id "
        "WHERE r.id = (SELECT max(id) FROM audit_runs) AND NOT f.passed",
    ) == [("failed", "queue_dead_without_error")]
    mails = [
        m for m in read_messages(ops_stack.folder / "mail") if "failed gates: queue_dead_without_error" in m
    ]
    assert mails, "no critical alert named the failed gate"
    # its FSAR report blocks execution: a task_batch run claims nothing
    [(report, failed_audit)] = rows(
        ops_stack,
        "SELECT id, audit_run_id FROM fsar_reports WHERE status = 'open' AND block_execution "
        "AND gates = '{queue_dead_without_error}'",
    )
    [(waiting,)] = rows(
        ops_stack,
        "INSERT INTO execution_tasks (task_type, payload, ai_model) "
        "VALUES ('idea', %s, 'gpt-4.1') RETURNING id",
        (json.dumps(VALID["idea"]),),
    )
    run = dags_test(ops_stack, "task_batch", {})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    # the run was skipped naming the report, which it alerted (once)
    assert rows(
        ops_stack,
        "SELECT count(*) FROM alerts WHERE message LIKE %s",
        (f"%execution is blocked by FSAR report {report}%",),
    ) == [(1,)]
    assert rows(ops_stack, f"SELECT status, attempts FROM execution_tasks WHERE id = {waiting}") == [
        ("queued", 0)
    ]
    # repaired, the next audit passes every gate the report named: it closes, and execution resumes
    rows(ops_stack, f"DELETE FROM execution_tasks WHERE id = {broken} RETURNING id")
    run = dags_test(ops_stack, "adversarial_audit", {})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    [(passed_audit,)] = rows(ops_stack, "SELECT max(id) FROM audit_runs")
    assert (
        rows(ops_stack, f"SELECT status, closed_by_audit_run_id FROM fsar_reports WHERE id = '{report}'")
        == [("closed", passed_audit)]
        and passed_audit != failed_audit
    )
    run = dags_test(ops_stack, "task_batch", {})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert rows(ops_stack, f"SELECT status FROM execution_tasks WHERE id = {waiting}") == [("succeeded",)]


def test_the_ops_dashboard_is_behind_the_login_and_shows_what_happened(ops_stack):
    login = ops_stack.info.login
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{login['url']}/ops/", timeout=30)
    assert refused.value.code in (401, 403)
    token = token_for(login)

    def page(path: str) -> str:
        request = urllib.request.Request(
            f"{login['url']}/ops/{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    overview, audits = page(""), page("audits")
    for panel in ("Backups", "Migrations", "Recent alerts"):
        assert f"<h2>{panel}</h2>" in overview
    assert "<h2>Audits</h2>" in audits
    assert "rolled_back" in overview and "queue_dead_without_error" in audits  # from the stories above
    plugins = api(f"{login['url']}/api/v2/plugins", token)["plugins"]
    assert any(p["name"] == "ops_dashboard" for p in plugins)
