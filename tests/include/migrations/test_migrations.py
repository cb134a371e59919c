"""The baseline revision: what it creates, that it reverses cleanly, that its SQL can be read offline."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import psycopg2
import pytest

from include.migrations import BOOKKEEPING_TABLES, current, downgrade, upgrade

BASELINE_TABLES = {
    "execution_tasks",
    "users",
    "user_events",
    "offers",
    "payments",
    "model_versions",
    "backups",
    "audit_runs",
    "audit_findings",
    "alerts",
    "security_events",
    "healthcheck_results",
}


def _tables(dsn: str) -> set[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in cur.fetchall()} - set(BOOKKEEPING_TABLES)


def test_baseline_creates_the_platform_tables_without_ai_model(app_dsn):
    assert current(app_dsn) == "0001"
    assert _tables(app_dsn) == BASELINE_TABLES
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'execution_tasks' AND column_name = 'ai_model'"
        )
        assert cur.fetchone() is None


def test_baseline_downgrades_to_an_empty_schema_and_back(app_dsn):
    downgrade(app_dsn, "base")
    assert _tables(app_dsn) == set() and current(app_dsn) is None
    upgrade(app_dsn, "0001")
    assert _tables(app_dsn) == BASELINE_TABLES


def test_constraints_refuse_bad_rows(app_dsn):
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.CheckViolation, match="execution_tasks_task_type_check"):
            cur.execute("INSERT INTO execution_tasks (task_type) VALUES ('mining')")
        conn.rollback()
        cur.execute("INSERT INTO security_events (event_type, severity) VALUES ('probe', 'info')")
        with pytest.raises(psycopg2.errors.RaiseException, match="append-only"):
            cur.execute("DELETE FROM security_events")


def test_offline_sql_is_plain_reviewable_sql():
    out = io.StringIO()
    with redirect_stdout(out):
        upgrade("", "0001", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE execution_tasks" in sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in sql


def test_ensure_baseline_from_connection_json_is_idempotent(app_dsn):
    import json
    import subprocess
    import sys

    from include.migrations import dsn_from_connection_json, ensure_baseline

    downgrade(app_dsn, "base")
    params = dict(p.split("=", 1) for p in app_dsn.split())
    conn_json = json.dumps(
        {
            "conn_type": "postgres",
            "host": params["host"],
            "port": int(params["port"]),
            "schema": params["dbname"],
            "login": params["user"],
            "password": params.get("password"),
        }
    )
    assert ensure_baseline(dsn_from_connection_json(conn_json)) is True
    # the command compose's airflow-init runs, a second time: a no-op
    out = subprocess.run(
        [sys.executable, "-m", "include.migrations", "ensure-baseline"],
        env={"AIRFLOW_CONN_APP_DB": conn_json, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "already at revision 0001" in out.stdout
