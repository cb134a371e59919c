"""Revision 0009 (bounds on hostile values, worker_sessions) and the workers' grants that every
revision keeps current, on the real PostgreSQL."""

from __future__ import annotations

import psycopg2
import pytest

from include.migrations import downgrade, upgrade
from include.migrations.db_roles import WORKER_GRANTS, WORKER_ROLE, ensure_worker_role
from include.migrations.runner import MigrationError, apply, rehearse
from tests.pg import query


@pytest.fixture
def role_exists(pg_server):
    """The workers' role on the server, as a superuser provisions it."""
    admin = psycopg2.connect(pg_server.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        ensure_worker_role(cur, member="app")
    admin.close()


def _worker_privileges(dsn: str) -> dict[str, list[str]]:
    held = {}
    for table, privileges in WORKER_GRANTS.items():
        if query(dsn, "SELECT to_regclass(%s)", (f"public.{table}",))[0][0] is None:
            continue
        held[table] = [
            p
            for p in privileges
            if query(dsn, "SELECT has_table_privilege(%s, %s, %s)", (WORKER_ROLE, table, p))[0][0]
        ]
    return held


def test_every_revision_applied_by_db_migrate_leaves_the_workers_their_grants(app_dsn, role_exists):
    """A table that a revision adds has the workers' grants as soon as the revision is applied:
    no start of the local stack (which used to grant them) is needed."""
    query(app_dsn, "REVOKE ALL ON execution_tasks FROM app_worker")  # as a database made without them
    assert _worker_privileges(app_dsn) == {"execution_tasks": []}
    apply(app_dsn, "0003")
    assert _worker_privileges(app_dsn) == {
        "execution_tasks": ["SELECT", "INSERT", "UPDATE"],
        "task_batch_metrics": ["SELECT", "INSERT", "UPDATE"],
        "task_bottleneck_reports": ["SELECT", "INSERT", "DELETE"],
    }
    apply(app_dsn, "head")
    assert _worker_privileges(app_dsn) == {t: list(p) for t, p in WORKER_GRANTS.items()}
    assert query(app_dsn, "SELECT has_table_privilege('app_worker', 'payments', 'SELECT')") == [(False,)]


def _insert(dsn: str, statement: str, args=()) -> str:
    """'ok', or the name of the constraint that refused it."""
    try:
        query(dsn, statement, args)
    except psycopg2.errors.CheckViolation as exc:
        return exc.diag.constraint_name
    return "ok"


def test_0009_refuses_path_characters_in_ai_model_too_many_attempts_and_a_free_offer(app_dsn):
    from include.execution.task_handlers import AI_MODEL_FORMAT

    upgrade(app_dsn, "0008")
    values = ["gpt-4.1", "org/model:v2", "a/../../admin/stats", "..", "llama-3.1-70b"]
    task = "INSERT INTO execution_tasks (task_type, ai_model, max_attempts) VALUES ('idea', %s, %s)"
    before = [_insert(app_dsn, task, (v, 5)) for v in values]
    assert before == ["ok", "ok", "ok", "execution_tasks_ai_model_format", "ok"]
    assert _insert(app_dsn, task, ("m", 5000)) == "ok"
    assert (
        _insert(app_dsn, "INSERT INTO offers (code, product, discount_pct) VALUES ('FREE', 'pro', 100)")
        == "ok"
    )
    query(app_dsn, "DELETE FROM execution_tasks; DELETE FROM offers")

    upgrade(app_dsn, "0009")
    after = [_insert(app_dsn, task, (v, 5)) for v in values]
    assert after == ["ok", *["execution_tasks_ai_model_format"] * 3, "ok"]
    assert after == [
        "ok" if AI_MODEL_FORMAT.fullmatch(v) else "execution_tasks_ai_model_format" for v in values
    ]
    assert _insert(app_dsn, task, ("m", 101)) == "execution_tasks_max_attempts_bounded"
    assert _insert(app_dsn, task, ("m", 100)) == "ok"
    free = "INSERT INTO offers (code, product, discount_pct) VALUES (%s, 'pro', %s)"
    assert _insert(app_dsn, free, ("FREE", 100)) == "offers_discount_pct_below_100"
    assert _insert(app_dsn, free, ("ALMOST", 99.99)) == "ok"
    assert query(app_dsn, "SELECT to_regclass('public.worker_sessions') IS NOT NULL") == [(True,)]

    downgrade(app_dsn, "0008")
    assert _insert(app_dsn, task, ("org/model:v2", 5000)) == "ok"
    assert _insert(app_dsn, free, ("FREE", 100)) == "ok"
    [(definition,)] = query(
        app_dsn,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname LIKE 'execution_tasks_ai_model%%'",
    )
    assert "._:/-]" in definition and "char_length" in definition  # 0008's form, under its name


def test_0009_stops_before_changing_anything_when_rows_break_its_bounds(app_dsn):
    upgrade(app_dsn, "0008")
    query(
        app_dsn,
        "INSERT INTO execution_tasks (task_type, ai_model) VALUES ('idea', 'org/model'), ('idea', 'ok')",
    )
    with pytest.raises(MigrationError) as refused:
        apply(app_dsn, "0009")
    assert "1 row(s) of execution_tasks have ai_model with a path character" in str(refused.value)
    assert "SELECT * FROM execution_tasks WHERE NOT (ai_model ~" in str(refused.value)
    assert query(app_dsn, "SELECT version_num FROM alembic_version") == [("0008",)]
    assert query(app_dsn, "SELECT count(*) FROM pg_constraint WHERE conname LIKE '%%_next'") == [(0,)]
    query(app_dsn, "UPDATE execution_tasks SET ai_model = NULL WHERE ai_model = 'org/model'")
    assert apply(app_dsn, "0009") == ["0009"]


def test_0009_resumes_after_a_run_stopped_halfway_and_rehearses_cleanly(app_dsn):
    upgrade(app_dsn, "0008")
    query(  # as if a run had added the new format and stopped before validating it
        app_dsn,
        "ALTER TABLE execution_tasks ADD CONSTRAINT execution_tasks_ai_model_format_next"
        " CHECK (ai_model ~ '^[a-z0-9][a-z0-9._:-]*$' AND char_length(ai_model) <= 64) NOT VALID",
    )
    assert apply(app_dsn, "0009") == ["0009"]
    [(name, valid)] = query(
        app_dsn,
        "SELECT conname, convalidated FROM pg_constraint WHERE conname LIKE 'execution_tasks_ai_model%%'",
    )
    assert (name, valid) == ("execution_tasks_ai_model_format", True)
    downgrade(app_dsn, "0008")
    assert rehearse(app_dsn, "0009")["problems"] == []  # down gives back 0008, up again the same
