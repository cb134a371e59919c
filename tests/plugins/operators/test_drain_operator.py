"""The draining operator steps aside while a restore or a migration holds the database."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg2

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
