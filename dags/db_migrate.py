"""
### Database migration (zero-downtime, reversible)

**Owner:** platform team. **Schedule:** manual only (Trigger DAG w/ config).

Brings the app database (`app_db`) to a target Alembic revision, safely:

1. **plan**: the pending revisions and their exact SQL (in the task log); refuses if an
   applied revision's file was edited since, or while an open FSAR report that blocks execution
   names the schema (`fsar_reports.names_schema`), unless `remediation_report` names that report:
   the run is its remediation (a `block_overridden` security event when it applies). `apply`
   checks again;
2. **lint**: squawk for the server's PostgreSQL version; a finding blocks unless the revision
   names a reviewed exception;
3. **backup gate**: a verified backup younger than `max_backup_age_hours`, else one is taken
   and verified now (the same operators as `db_backup`); it becomes the run's rollback point,
   which backup retention keeps while the run is pending;
4. **rehearse**: that backup restored into a scratch database on the rehearsal server (the
   `rehearsal_db` connection: a PostgreSQL server of its own, never production's, unless
   `rehearse_on_production_server`); upgrade, smoke checks, downgrade (must give back the original
   schema), upgrade again (must equal the first);
5. **approve** in the UI (Required Actions), in production by someone other than the user who
   triggered the run; `skip_approval` is honoured only where the deployment says it is not
   production (`PLATFORM_NON_PRODUCTION`, set by the local stack and the tests); `dry_run` stops
   here;
6. **apply** under the schema lock (a restore, backup or other migration waits, and drains step
   aside; the wait names the run that holds it), with `lock_timeout` (default 1 s) and
   `statement_timeout` on every statement; a lock timeout is retried with backoff, then the run
   fails naming the blocking session;
7. **verify**: the column exists, `execution_tasks` kept its file (no rewrite), a task with
   `ai_model` can be inserted, claimed and completed (rolled back), no existing row is gone;
8. **roll back** on any failure after apply: downgrade to where the run started, critical alert.

**Idempotent:** re-running applies only what is still pending; every revision step tolerates a
partial earlier attempt. A revision that fails part-way is undone before anything is stamped. If
the undo itself fails, the run ends at once (`undo_failed` in `migration_runs`, a critical alert,
a security event in S3) and every later run refuses to start until an operator has put the schema
right and triggered one with `resolve_undo_of` set to that run's id.

**Alerts:** a retry is a *warning*; a failure is *critical* (email and Sentry), naming the
revision and, for lock timeouts, the blocking session (pid, user, transaction age, query).

**When it fails:** read the failed task's log. Lock timeout: end or wait out the named session
and trigger again. Rehearsal or lint failure: fix the revision (production was not touched).
After a rollback the database is at `from_revision` of the run's `migration_runs` row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, chain, dag, task

from execplatform.dag_defaults import (
    APP_DB,
    AWS,
    BACKUP_BUCKET,
    BACKUP_PREFIX,
    BACKUP_VERIFIED,
    MIGRATION_APPLIED,
    REHEARSAL_DB,
    default_args,
    number_param,
)
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.approval_operator import SecondPersonApprovalOperator
from execplatform.operators.backup_operators import PostgresBackupOperator, VerifyBackupOperator
from include.ids import FSAR_REPORT_ID

JOIN = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS  # where two branches meet


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "migration"],
    params={
        # the project's revision ids are hex digits (0002); tests/include/audit/test_probes.py holds every
        # file to it
        "target_revision": Param(
            "head",
            type="string",
            pattern=r"^(head|[0-9a-f]{4,32})$",
            description="Alembic revision to reach: its id (e.g. 0002) or head",
        ),
        "dry_run": Param(
            False, type="boolean", description="plan, lint, back up and rehearse; apply nothing"
        ),
        "skip_approval": Param(
            False, type="boolean", description="no approval step; refused unless PLATFORM_NON_PRODUCTION"
        ),
        "rehearse_on_production_server": Param(
            False, type="boolean", description="rehearse on app_db's server when rehearsal_db is missing"
        ),
        "resolve_undo_of": Param(
            None,
            type=["null", "string"],
            pattern=r"^[A-Za-z0-9_.:+-]{0,250}$",
            description="the run whose failed undo an operator has put right by hand",
        ),
        "remediation_report": Param(
            None,
            type=["null", "string"],
            pattern=rf"^({FSAR_REPORT_ID})?$",
            description="the FSAR report this run remediates: it may apply while that report blocks",
        ),
        "schema_lock_wait_seconds": number_param(
            900, integer=True, minimum=1, maximum=86_400, description="wait for restores, backups, drains"
        ),
        "max_backup_age_hours": number_param(
            24,
            minimum=0,
            exclusive_minimum=True,
            maximum=720,
            description="a verified backup older than this is not enough",
        ),
        "lock_timeout_ms": number_param(
            1000, integer=True, minimum=1, maximum=10_000, description="each DDL's wait for its lock"
        ),
        "statement_timeout_ms": number_param(
            300_000, integer=True, minimum=1000, maximum=86_400_000, description="each statement's limit"
        ),
        "lock_retries": number_param(
            3, integer=True, minimum=0, maximum=10, description="tries after a lock timeout"
        ),
        "backfill_batch_size": number_param(
            10_000, integer=True, minimum=100, maximum=100_000, description="rows per backfill transaction"
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args(on_failure="critical"),
)
def db_migrate():
    @task
    def plan(params=None, run_id=None) -> dict:
        from execplatform.steps.migration_steps import plan_migration, settings_from_params

        settings = settings_from_params(params)
        return plan_migration(
            APP_DB,
            run_id,
            params["target_revision"],
            settings,
            params["resolve_undo_of"],
            params["remediation_report"],
        )

    @task
    def lint(params=None) -> dict:
        from execplatform.steps.migration_steps import lint_migration, settings_from_params

        return lint_migration(APP_DB, params["target_revision"], settings_from_params(params))

    @task.branch
    def backup_gate(params=None) -> str:
        from execplatform.steps.migration_steps import fresh_backup_id

        backup_id = fresh_backup_id(APP_DB, params["max_backup_age_hours"])
        return "rehearse" if backup_id else "take_backup"

    take_backup = PostgresBackupOperator(
        task_id="take_backup", postgres_conn_id=APP_DB, bucket=BACKUP_BUCKET, prefix=BACKUP_PREFIX
    )
    verify_backup = VerifyBackupOperator(
        task_id="verify_backup",
        backup_id="{{ ti.xcom_pull(task_ids='take_backup')['backup_id'] }}",
        postgres_conn_id=APP_DB,
        outlets=[BACKUP_VERIFIED],
    )

    @task(trigger_rule=JOIN)
    def rehearse(params=None, run_id=None) -> dict:
        from execplatform.steps.migration_steps import rehearse_migration, settings_from_params

        settings, on_production = settings_from_params(params), params["rehearse_on_production_server"]
        age = params["max_backup_age_hours"]
        return rehearse_migration(APP_DB, REHEARSAL_DB, AWS, run_id, age, settings, on_production)

    @task.branch
    def decide(params=None) -> str | None:
        from execplatform.steps.migration_steps import next_after_rehearsal

        return next_after_rehearsal(params["dry_run"], params["skip_approval"])

    approve = SecondPersonApprovalOperator(
        task_id="approve",
        subject="Apply the migration of {{ params.target_revision }} to app_db?",
        body="Rehearsal passed on a clone of backup {{ ti.xcom_pull(task_ids='rehearse')['backup_id'] }}: "
        "{{ ti.xcom_pull(task_ids='rehearse')['applied'] }} applied, downgraded and re-applied. "
        "The SQL is in the log of the `plan` task.",
        defaults="Reject",
        response_timeout=timedelta(hours=24),
    )

    @task(trigger_rule=JOIN, outlets=[MIGRATION_APPLIED])
    def apply(params=None, run_id=None) -> dict:
        from execplatform.steps.migration_steps import apply_migration, settings_from_params

        settings = settings_from_params(params)
        lock_wait, remediation = params["schema_lock_wait_seconds"], params["remediation_report"]
        return apply_migration(APP_DB, run_id, settings, lock_wait, remediation)

    @task
    def verify(applied: dict, run_id=None) -> dict:
        from execplatform.steps.migration_steps import verify_migration

        return verify_migration(APP_DB, run_id, applied)

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def roll_back(params=None, run_id=None) -> dict:
        from execplatform.steps.migration_steps import roll_back_migration, settings_from_params

        settings = settings_from_params(params)
        return roll_back_migration(APP_DB, run_id, settings, params["schema_lock_wait_seconds"])

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def finish(run_id=None, ti=None) -> str:
        from execplatform.steps.migration_steps import finish_migration

        return finish_migration(APP_DB, run_id, verified=bool(ti.xcom_pull(task_ids="verify")))

    @task(trigger_rule=TriggerRule.ONE_FAILED)
    def watcher() -> None:
        """Keeps the run failed when a step failed, whatever the clean-up tasks did."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a step of db_migrate failed; see the failed task's log")

    planned, linted, gate = plan(), lint(), backup_gate()
    rehearsed, decision, applied = rehearse(), decide(), apply()
    verified, rolled_back, finished = verify(applied), roll_back(), finish()
    chain(planned, linted, gate, take_backup, verify_backup, rehearsed, decision, approve, applied)
    gate >> rehearsed  # a fresh verified backup exists: no new one
    decision >> applied  # skip_approval
    [applied, verified] >> rolled_back >> finished
    verified >> finished
    steps = [
        planned,
        linted,
        gate,
        take_backup,
        verify_backup,
        rehearsed,
        decision,
        approve,
        applied,
        verified,
    ]
    steps >> watcher()


db_migrate()
