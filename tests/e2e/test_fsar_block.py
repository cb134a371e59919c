"""FSAR reports on the shared stack, through the REST API as a user's script would: a blocking
report filed through fsar_intake with a conf stops task_batch (it claims nothing, names the
report, and no execution task changes state); a person resolves it through the HITL API with a
reason; the next task_batch drains.

The audit's side (an invariant broken by hand: its report blocks; repaired, the next audit closes
it and execution resumes) is played by test_migration_story.py, which breaks and repairs that
invariant already. The block lives in the app database, not in a process: here the app's
PostgreSQL server, the scheduler and the triggerer are restarted while it is open, and the next
task_batch is still blocked (with no second alert). Moto, the api-server and the metadata
server keep running: moto's S3 holds the backups the later suites use.
"""

from __future__ import annotations

import time
import urllib.error
from dataclasses import replace

from include.audit import fsar
from tests.airflow_api import api, dag_url, rows, set_paused, token_for, trigger, wait_for
from tests.project import FIXTURES

TASKS = 12


def finished(stack, token: str, dag_id: str, run_id: str, timeout: float = 600) -> dict:
    def done():
        run = api(f"{dag_url(stack, dag_id)}/dagRuns/{run_id}", token)
        return run if run["state"] in ("success", "failed") else None

    return wait_for(done, timeout, f"{dag_id} run {run_id} to end")


def task_states(stack, token: str, dag_id: str, run_id: str) -> dict[str, str]:
    listed = api(f"{dag_url(stack, dag_id)}/dagRuns/{run_id}/taskInstances", token)["task_instances"]
    return {t["task_id"]: t["state"] for t in listed}


def queue_rows(stack) -> list[tuple]:
    return rows(
        stack,
        "SELECT id, status, attempts, updated_at FROM execution_tasks "
        "WHERE idempotency_key LIKE 'fsar-e2e-%' ORDER BY id",
    )


def restart_app_server_scheduler_and_triggerer(stack) -> None:
    """Stop the Airflow components that read the app database, then its server; start them all
    again in the opposite order, as an operator restarting the stack's hosts would."""
    stopped = [stack.supervisor.stop(name) for name in ("scheduler", "triggerer", "postgres")]
    for service in reversed(stopped):
        stack.supervisor.start(service)


def blocked_run(stack, token: str, report_id: str) -> None:
    """A task_batch run that ends at once, visibly blocked by `report_id`, claiming nothing."""
    run_id = trigger(stack, token, "task_batch", {"task_types": ["idea"]})
    assert finished(stack, token, "task_batch", run_id)["state"] == "success"
    states = task_states(stack, token, "task_batch", run_id)
    assert states["measure_backlog"] == "skipped" and states["publish_metrics"] == "skipped", states
    xcom = api(
        f"{dag_url(stack, 'task_batch')}/dagRuns/{run_id}/taskInstances/measure_backlog/xcomEntries/"
        "blocked_by?deserialize=true",
        token,
    )["value"]
    assert xcom["id"] == report_id


def test_a_filed_blocking_report_stops_task_batch_until_a_person_resolves_it(app_db_at_head):
    from include.execution.task_queue import TaskQueue
    from tests.dags.test_task_batch_dag import VALID

    stack = app_db_at_head
    token = token_for(stack.info.login)
    with TaskQueue(stack.app_dsn()) as queue:
        queue.enqueue_many(
            [
                {
                    "task_type": "idea",
                    "ai_model": "gpt-4.1",
                    "idempotency_key": f"fsar-e2e-{i}",
                    "payload": VALID["idea"],
                }
                for i in range(TASKS)
            ]
        )
    before = queue_rows(stack)
    assert [r[1] for r in before] == ["queued"] * TASKS

    report = replace(
        fsar.parse((FIXTURES / "fsar" / "external_schema_drift.md").read_text()), id=fsar.new_id()
    )
    filed = trigger(stack, token, "fsar_intake", {"report_text": fsar.render(report), "read_inbox": False})
    set_paused(stack, "fsar_intake", False, token)
    assert finished(stack, token, "fsar_intake", filed)["state"] == "success"
    assert rows(
        stack, "SELECT status, block_execution, source FROM fsar_reports WHERE id = %s", (report.id,)
    ) == [("open", True, "external")]

    set_paused(stack, "task_batch", False, token)
    for _ in range(2):  # two blocked runs, one alert
        blocked_run(stack, token, report.id)
        assert queue_rows(stack) == before  # no execution task changed state

    restart_app_server_scheduler_and_triggerer(stack)
    blocked_run(stack, token, report.id)  # the block outlives every process that read it
    assert queue_rows(stack) == before
    assert rows(
        stack,
        "SELECT occurrences FROM alerts WHERE message LIKE %s",
        (f"%execution is blocked by FSAR report {report.id}%",),
    ) == [(1,)]

    resolving = trigger(stack, token, "fsar_intake", {"resolve_report": report.id, "read_inbox": False})
    hitl = (
        f"{dag_url(stack, 'fsar_intake')}/dagRuns/{resolving}/taskInstances/approve_resolution/-1/hitlDetails"
    )

    def waiting():
        try:
            return api(hitl, token)
        except urllib.error.HTTPError:
            return None

    wait_for(waiting, 300, "the resolution to wait for a person")
    time.sleep(10)  # an answer within seconds of the request can fail the task (docs/testing.md)
    api(
        hitl,
        token,
        {"chosen_options": ["Approve"], "params_input": {"reason": "the drift was repaired and verified"}},
        method="PATCH",
    )
    assert finished(stack, token, "fsar_intake", resolving)["state"] == "success"
    assert rows(stack, "SELECT status, resolution FROM fsar_reports WHERE id = %s", (report.id,)) == [
        ("closed", "the drift was repaired and verified")
    ]
    assert rows(
        stack,
        "SELECT count(*) FROM security_events "
        "WHERE event_type = 'execution_unblocked' AND details->>'report' = %s",
        (report.id,),
    ) == [(1,)]

    drains = trigger(stack, token, "task_batch", {"task_types": ["idea"]})
    assert finished(stack, token, "task_batch", drains)["state"] == "success"
    assert [r[1] for r in queue_rows(stack)] == ["succeeded"] * TASKS
    set_paused(stack, "task_batch", True, token)
