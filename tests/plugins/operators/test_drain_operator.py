"""The draining operator steps aside while a restore or a migration holds the database."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg2
import pytest

from tests.airflow_api import postgres_connection


def test_a_drain_claims_nothing_while_a_migration_holds_the_schema_lock(
    app_head_dsn, local_stack, monkeypatch
):
    from psycopg2.extensions import make_dsn, parse_dsn

    from execplatform.operators.drain_operator import DrainQueueOperator
    from include.execution.task_queue import TaskQueue
    from include.migrations.schema_lock import schema_lock

    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many(
            [{"task_type": "idea", "payload": {"prompt": "p", "repo": "r", "inputs": {"count": 1}}}]
        )
    maintenance = make_dsn(**{**parse_dsn(app_head_dsn), "dbname": "postgres"})
    context = {"ti": SimpleNamespace(dag_id="task_batch", run_id="manual__1", task_id="drain")}
    with schema_lock(maintenance, "db_migrate/manual__9/apply", exclusive=True, wait_seconds=5):
        result = DrainQueueOperator(task_id="drain", use_cache=False).execute(context)
    assert result["stopped_by"] == "schema_lock" and result["batches"] == 0
    assert "db_migrate/manual__9/apply" in result["blocked_by"][0]
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, attempts FROM execution_tasks")
        assert cur.fetchall() == [("queued", 0)], "no execution task changed state"
    conn.close()


def test_the_drain_and_the_reaper_run_as_the_workers_dml_only_role(app_head_dsn, executor, monkeypatch):
    """Drains handle untrusted payloads and executor answers: their sessions run as app_worker,
    which cannot read payments nor change the schema, and they record so for the audit."""
    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from execplatform.operators.drain_operator import DrainQueueOperator
    from execplatform.steps.queue_steps import reap_expired_leases
    from include.execution.task_queue import TaskQueue

    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many(
            [
                {"task_type": "idea", "payload": {"prompt": "p", "repo": "r", "inputs": {"count": i}}}
                for i in range(3)
            ]
        )
    context = {"ti": SimpleNamespace(dag_id="task_batch", run_id="manual__2", task_id="drain")}
    result = DrainQueueOperator(task_id="drain", use_cache=False).execute(context)
    assert result["by_type"]["idea"]["succeeded"] == 3
    assert reap_expired_leases() == {"requeued": 0, "dead": 0}
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT db_role, login_role, last_owner FROM worker_sessions ORDER BY last_seen")
        assert cur.fetchall() == [("app_worker", "app", "task_batch-reaper")]  # the reaper came last
    conn.close()
    with psycopg2.connect(AppDatabaseHook().worker_dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("app_worker",)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT 1 FROM payments")
    conn.close()
