"""db_migrate run with dag.test() against the real stack: undo that cannot lie, approvals that mean
something, rehearsals on a server of their own."""

from __future__ import annotations

import json
import os
import threading
import uuid

import pytest

from include.migrations import current, upgrade
from tests.airflow_api import postgres_connection
from tests.include.migrations.test_undo import UNDO, hold_lock_on_undo_probe
from tests.pg import query
from tests.project import DAGS_DIR


@pytest.fixture(scope="module")
def db_migrate_dag():
    """The DAG, with the session's own (sqlite) metadata database created for dag.test()."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    initdb()
    return DagBag(dag_folder=str(DAGS_DIR / "db_migrate.py")).dags["db_migrate"]


@pytest.fixture
def app_db(app_dsn, local_stack, monkeypatch):
    """`app_db` on a fresh database at 0002, a backup catalog of its own, the fixture revisions,
    and a non-production deployment (so that skip_approval is honoured)."""
    upgrade(app_dsn, "0002")
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_dsn))
    monkeypatch.setenv("BACKUP_PREFIX", f"test-migrate/{uuid.uuid4().hex}")
    monkeypatch.setenv("MIGRATIONS_EXTRA_VERSIONS", UNDO)
    monkeypatch.setenv("PLATFORM_NON_PRODUCTION", "true")
    return app_dsn


FAST = {"target_revision": "0097", "skip_approval": True, "lock_timeout_ms": 300, "lock_retries": 0}


def states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_a_failed_undo_ends_the_run_and_every_later_run_refuses_until_resolved(app_db, db_migrate_dag):
    """Contention fails revision 0097 in production (it passed its rehearsal on a quiet clone),
    and the same contention fails its undo. The old runner stamped 0097 before the downgrade: the
    retry then found nothing pending and the run ended `completed` with half a revision."""
    held = threading.Event()
    holder = hold_lock_on_undo_probe(app_db, 12, held, appears_within=300)
    try:
        run = db_migrate_dag.test(run_conf=FAST)
    finally:
        holder.join()
    assert held.is_set() and run.state == "failed"
    assert states(run)["apply"] == "failed" and states(run)["roll_back"] == "skipped"
    [(status, partial, error)] = query(
        app_db,
        "SELECT status, partial_revision, error FROM migration_runs WHERE dag_run_id = %s",
        (run.run_id,),
    )
    assert (status, partial) == ("undo_failed", "0097") and "lock timeout" in error
    assert current(app_db) == "0002", "nothing was stamped"
    from execplatform.steps.backup_steps import backup_catalog

    assert [e["event"] for e in backup_catalog().events()][:1] == ["migration_undo_failed"]

    refused = db_migrate_dag.test(run_conf=FAST)
    assert refused.state == "failed" and states(refused)["plan"] == "failed"
    assert query(app_db, "SELECT count(*) FROM migration_runs WHERE dag_run_id = %s", (refused.run_id,)) == [
        (0,)
    ]

    query(app_db, "DROP TABLE undo_probe")  # the operator puts the schema right by hand
    resolved = db_migrate_dag.test(run_conf={**FAST, "resolve_undo_of": run.run_id})
    assert resolved.state == "success", states(resolved)
    assert current(app_db) == "0097"
    assert query(
        app_db, "SELECT status, resolved_by FROM migration_runs WHERE dag_run_id = %s", (run.run_id,)
    ) == [("resolved", resolved.run_id)]


def test_skip_approval_is_refused_unless_the_deployment_says_it_is_not_production(
    app_db, db_migrate_dag, monkeypatch
):
    monkeypatch.delenv("PLATFORM_NON_PRODUCTION")
    monkeypatch.delenv("MIGRATIONS_EXTRA_VERSIONS")
    run = db_migrate_dag.test(run_conf={"target_revision": "head", "skip_approval": True})
    assert run.state == "failed" and states(run)["decide"] == "failed", states(run)
    assert states(run)["apply"] in ("upstream_failed", "skipped") and states(run)["roll_back"] == "skipped"
    assert current(app_db) == "0002"


def test_the_rehearsal_runs_on_the_rehearsal_server_and_never_on_production(app_db, local_stack, monkeypatch):
    """The scratch database goes to `rehearsal_db` (a second server, its own port); without that
    connection the rehearsal refuses, unless the operator opts in to production's server."""
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from execplatform.operators.backup_operators import PostgresBackupOperator, VerifyBackupOperator
    from execplatform.steps.migration_steps import plan_migration, rehearse_migration
    from include.migrations import Settings

    monkeypatch.delenv("MIGRATIONS_EXTRA_VERSIONS")
    made = []
    create = AppDatabaseHook.create_database
    monkeypatch.setattr(
        AppDatabaseHook,
        "create_database",
        lambda self, name: made.append((self.connection.port, name)) or create(self, name),
    )
    settings = Settings()
    backup = PostgresBackupOperator(
        task_id="b", bucket=os.environ.get("BACKUP_BUCKET", "execplatform-backups")
    )
    VerifyBackupOperator(task_id="v", backup_id=backup.execute({})["backup_id"]).execute({})
    plan_migration("app_db", "manual__r", "head", settings)
    made.clear()
    result = rehearse_migration("app_db", "rehearsal_db", "aws_default", "manual__r", 24, settings)
    rehearsal_port = local_stack.ports["rehearsal_postgres"]
    assert [port for port, _ in made] == [rehearsal_port], made
    assert result["server"] == f"127.0.0.1:{rehearsal_port}" and result["applied"]
    assert rehearsal_port != json.loads(os.environ["AIRFLOW_CONN_APP_DB"])["port"]

    monkeypatch.delenv("AIRFLOW_CONN_REHEARSAL_DB")
    with pytest.raises(
        AirflowFailException, match="no 'rehearsal_db' connection.*rehearse_on_production_server"
    ):
        rehearse_migration("app_db", "rehearsal_db", "aws_default", "manual__r", 24, settings)
    made.clear()
    rehearse_migration(
        "app_db", "rehearsal_db", "aws_default", "manual__r", 24, settings, on_production_server=True
    )
    assert [port for port, _ in made] == [local_stack.ports["postgres"]]
