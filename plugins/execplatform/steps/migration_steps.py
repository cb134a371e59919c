"""The steps of db_migrate, adapting include.migrations to Airflow connections, params and alerts.

Each step reads and writes the run's row in `migration_runs` (keyed by the DAG run id), so a
retried or cleared task picks up where the run stands, and backup retention can see which
backup a pending migration names as its way back.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from execplatform.steps.backup_steps import fetch_backup

if TYPE_CHECKING:
    from include.migrations import Settings

logger = logging.getLogger(__name__)


INT_MAX = 2**31 - 1  # PostgreSQL's lock_timeout and statement_timeout are ints of milliseconds


def settings_from_params(params: dict[str, Any]) -> Settings:
    """The migration session's settings; a value the session cannot take (not a whole number, a
    timeout over INT_MAX ms, a backfill batch so large it is one UPDATE) fails the task."""
    from execplatform.steps import checked_number
    from include.migrations import Settings

    def whole(name: str, low: int, high: int) -> int:
        return checked_number(name, params[name], low=low, high=high, integer=True)

    return Settings(
        lock_timeout_ms=whole("lock_timeout_ms", 1, INT_MAX),
        statement_timeout_ms=whole("statement_timeout_ms", 1, INT_MAX),
        lock_retries=whole("lock_retries", 0, 100),
        backfill_batch_size=whole("backfill_batch_size", 1, 1_000_000),
    )


def _fail(message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def _set_status(conn_id: str, run_id: str, status: str, error: str | None = None, **fields: Any) -> None:
    assignments = "".join(f", {name} = %({name})s" for name in fields)  # names are this module's own
    with AppDatabaseHook(conn_id).cursor() as cur:  # the row exists: plan created the table and inserted it
        cur.execute(
            f"UPDATE migration_runs SET status = %(status)s, error = coalesce(%(error)s, error), "  # noqa: S608
            f"finished_at = CASE WHEN %(status)s IN ('completed', 'failed', 'rolled_back', 'cancelled', "
            f"'undo_failed') "
            f"THEN now() END{assignments} WHERE dag_run_id = %(run_id)s",
            {"status": status, "error": error, "run_id": run_id, **fields},
        )


def _has_row(conn_id: str, run_id: str) -> bool:
    from include.migrations import table_exists

    with AppDatabaseHook(conn_id).cursor() as cur:
        if not table_exists(cur, "migration_runs"):
            return False
        cur.execute("SELECT 1 FROM migration_runs WHERE dag_run_id = %s", (run_id,))
        return cur.fetchone() is not None


def _run_row(conn_id: str, run_id: str) -> dict[str, Any]:
    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute(
            "SELECT from_revision, target_revision, backup_id, status FROM migration_runs "
            "WHERE dag_run_id = %s",
            (run_id,),
        )
        row = cur.fetchone()
    if row is None:
        _fail(f"migration run {run_id!r} has no row in migration_runs: run the plan task first")
    return dict(zip(("from_revision", "target_revision", "backup_id", "status"), row, strict=True))


def plan_migration(
    conn_id: str,
    run_id: str,
    target: str,
    settings: Settings,
    resolve_undo_of: str | None = None,
    remediation_report: str | None = None,
) -> dict[str, Any]:
    """Pending revisions and their SQL (logged); refuses when an applied file was edited, while
    an earlier run's failed undo is unresolved (`resolve_undo_of` names that run, once an
    operator has put the schema right by hand), or while a blocking FSAR report names the schema
    (unless `remediation_report` names it: this run is its remediation)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from include.migrations import BOOKKEEPING_DDL, changed_revisions, current, offline_sql, pending

    dsn = AppDatabaseHook(conn_id).dsn()
    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute(BOOKKEEPING_DDL)
    _refuse_after_failed_undo(conn_id, run_id, resolve_undo_of)
    refuse_while_the_schema_is_blocked(conn_id, run_id, remediation_report)
    if changed := changed_revisions(dsn, settings=settings):
        _fail("applied revisions differ from their files: " + "; ".join(changed))
    try:
        revisions = pending(dsn, target, settings=settings)
    except Exception as exc:  # alembic names the unknown revision
        _fail(f"cannot plan an upgrade to {target!r}: {exc}")
    start = current(dsn)
    for rev in revisions:
        logger.info(
            "pending revision %s (%s):\n%s",
            rev.revision,
            rev.title,
            offline_sql(rev.revision, settings=settings),
        )
    if not revisions:
        raise AirflowSkipException(f"the database is at {start}; nothing to apply for target {target!r}")
    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute(
            "INSERT INTO migration_runs (dag_run_id, from_revision, target_revision) VALUES (%s, %s, %s) "
            "ON CONFLICT (dag_run_id) DO UPDATE SET from_revision = EXCLUDED.from_revision, "
            "target_revision = EXCLUDED.target_revision, status = 'planned', error = NULL",
            (run_id, start, target),
        )
    return {"from": start, "target": target, "pending": [r.revision for r in revisions]}


def refuse_while_the_schema_is_blocked(
    conn_id: str, run_id: str, remediation_report: str | None, *, applying: bool = False
) -> None:
    """Fail while an open FSAR report that blocks execution names the schema, unless this run is
    that report's remediation (`remediation_report`). Applying as a remediation, past the block,
    is a `block_overridden` security event."""
    from include.audit.fsar_store import blocking_schema_reports
    from include.observability.security_events import log_security_event

    with AppDatabaseHook(conn_id).cursor() as cur:
        reports = blocking_schema_reports(cur)
        for report_id, severity in reports:
            if report_id != remediation_report:
                _fail(
                    f"FSAR report {report_id} (severity {severity}) blocks execution and names the schema: "
                    "db_migrate applies nothing while it is open, unless the run is its remediation "
                    f"(trigger db_migrate with remediation_report={report_id!r}), or the report is resolved"
                )
            if applying:
                log_security_event(
                    cur,
                    "block_overridden",
                    "warning",
                    actor=run_id,
                    dag_id="db_migrate",
                    report=report_id,
                    why="the run is the report's remediation",
                )


def _refuse_after_failed_undo(conn_id: str, run_id: str, resolve_undo_of: str | None) -> None:
    """No migration starts while a revision is half-applied, unless this run names the failed
    run as resolved (a security event records who said so)."""
    from execplatform.steps.backup_steps import record_recovery_event
    from include.migrations import UNDO_FAILED

    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute(
            "SELECT dag_run_id, partial_revision, error FROM migration_runs WHERE status = %s ORDER BY id",
            (UNDO_FAILED,),
        )
        unresolved = cur.fetchall()
    for failed_run, revision, error in unresolved:
        if failed_run != resolve_undo_of:
            _fail(
                f"run {failed_run!r} left revision {revision} half-applied ({error}); no migration starts "
                f"until it is resolved: put the schema right by hand, then trigger db_migrate with "
                f"resolve_undo_of={failed_run!r}"
            )
        with AppDatabaseHook(conn_id).cursor() as cur:
            cur.execute(
                "UPDATE migration_runs SET status = 'resolved', resolved_by = %s WHERE dag_run_id = %s",
                (run_id, failed_run),
            )
        record_recovery_event(
            "migration_undo_resolved",
            "warning",
            actor=f"db_migrate/{run_id}",
            resolved_run=failed_run,
            revision=revision,
        )


def lint_migration(conn_id: str, target: str, settings: Settings) -> dict[str, Any]:
    """squawk for the server's major version; a finding without a named exception blocks."""
    from include.migrations import pending
    from include.migrations.lint import lint

    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute("SELECT current_setting('server_version_num')::int / 10000")
        major = cur.fetchone()[0]
    revisions = pending(AppDatabaseHook(conn_id).dsn(), target, settings=settings)
    for rev in revisions:
        for rule, why in rev.squawk_exceptions.items():
            logger.info("revision %s: squawk rule %s excepted: %s", rev.revision, rule, why)
    if findings := lint(revisions, major, settings):
        _fail(f"squawk (PostgreSQL {major}) blocks the migration: " + "; ".join(map(str, findings)))
    return {"pg_major": major, "revisions": [r.revision for r in revisions]}


def fresh_backup_id(conn_id: str, max_age_hours: float) -> int | None:
    """The newest verified backup if it is younger than `max_age_hours`, else None."""
    from execplatform.steps import checked_number

    max_age_hours = checked_number("max_backup_age_hours", max_age_hours, low=0, low_open=True, high=87_600)
    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute(
            "SELECT id FROM backups WHERE status = 'verified' AND verified_at > %s "
            "ORDER BY verified_at DESC, id DESC LIMIT 1",
            (datetime.now(UTC) - timedelta(hours=max_age_hours),),
        )
        row = cur.fetchone()
    return row[0] if row else None


def rehearse_migration(
    conn_id: str,
    rehearsal_conn_id: str,
    aws_conn_id: str,
    run_id: str,
    max_age_hours: float,
    settings: Settings,
    on_production_server: bool = False,
) -> dict:
    """Restore the rollback-point backup into a scratch database on the rehearsal server (the
    `rehearsal_conn_id` connection) and rehearse there; on the production server only when
    `on_production_server` says so (it shares production's CPU, I/O, WAL and connections)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from include.backup.archive import restore
    from include.backup.catalog import catalog_get
    from include.migrations.runner import MigrationError, rehearse

    try:
        BaseHook.get_connection(rehearsal_conn_id)
        server = AppDatabaseHook(rehearsal_conn_id)
    except AirflowNotFoundException:
        if not on_production_server:
            _fail(
                f"no {rehearsal_conn_id!r} connection: a rehearsal on the production server shares its "
                f"CPU, I/O, WAL and connections. Add the connection (a PostgreSQL server of its own, a role "
                f"with CREATEDB), or trigger with rehearse_on_production_server=true"
            )
        server = AppDatabaseHook(conn_id)
        logger.warning("no %r connection: rehearsing on the production server, as asked", rehearsal_conn_id)
    run = _run_row(conn_id, run_id)
    backup_id = fresh_backup_id(conn_id, max_age_hours)
    if backup_id is None:
        _fail(f"no verified backup younger than {max_age_hours} h: the backup gate did not produce one")
    # the rollback point, protected from retention
    _set_status(conn_id, run_id, "planned", backup_id=backup_id)
    with AppDatabaseHook(conn_id).cursor() as cur:
        entry = catalog_get(cur, backup_id)
    scratch = f"rehearse_{backup_id}_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="rehearse-") as tmp:
        folder = fetch_backup(entry, aws_conn_id, Path(tmp))
        server.create_database(scratch)
        try:
            restore(server.dsn(scratch), folder)
            result = rehearse(server.dsn(scratch), run["target_revision"], settings)
        except MigrationError as exc:
            _set_status(conn_id, run_id, "failed", error=str(exc))
            _fail(f"rehearsal on a clone of backup {backup_id} failed; production is untouched: {exc}")
        finally:
            server.drop_database(scratch)
    _set_status(conn_id, run_id, "rehearsed")
    where = f"{server.connection.host}:{server.connection.port}"
    logger.info(
        "rehearsal of backup %s on %s passed: applied %s, downgraded and re-applied",
        backup_id,
        where,
        result["applied"],
    )
    return {"backup_id": backup_id, "server": where, **result}


def apply_migration(
    conn_id: str,
    run_id: str,
    settings: Settings,
    lock_wait_seconds: float,
    remediation_report: str | None = None,
) -> dict[str, Any]:
    """Production: record what must survive, then upgrade with bounded lock waits, holding the
    schema lock (restores, backups and drains wait, or step aside). A revision whose undo failed
    ends the run (no retry), is recorded as `undo_failed` and pages: the next run refuses. Refused
    while a blocking FSAR report names the schema, unless the run is its remediation."""
    import psycopg2

    from execplatform.lineage import report_changed_tables
    from include.migrations.runner import MigrationError, UndoFailed, apply, changed_tables, table_signatures
    from include.migrations.smoke import fingerprint, table_filenode
    from include.observability.security_events import log_security_event

    run = _run_row(conn_id, run_id)
    if run["status"] == "undo_failed":
        _fail(f"run {run_id!r} left a revision half-applied; it is not applied again")
    refuse_while_the_schema_is_blocked(conn_id, run_id, remediation_report, applying=True)
    db = AppDatabaseHook(conn_id)
    dsn = db.dsn()
    with db.schema_lock(f"db_migrate/{run_id}/apply", exclusive=True, wait_seconds=lock_wait_seconds):
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            before, filenode = fingerprint(cur), table_filenode(cur)
        conn.close()
        tables_before = table_signatures(dsn)
        _set_status(conn_id, run_id, "applying")

        def on_retry(revision: str, attempt: int, exc: Exception) -> None:
            logger.warning("revision %s: lock timeout on attempt %d, backing off", revision, attempt)

        try:
            applied = apply(dsn, run["target_revision"], settings, on_retry=on_retry)
        except UndoFailed as exc:
            _undo_failed(conn_id, run_id, exc)
        except MigrationError as exc:  # already retried within its bounds and undone: fail hard
            _set_status(conn_id, run_id, "failed", error=str(exc))
            _fail(str(exc))
    _set_status(conn_id, run_id, "applied")
    changed = changed_tables(tables_before, table_signatures(dsn))
    report_changed_tables(db, changed)
    with AppDatabaseHook(conn_id).cursor() as cur:
        log_security_event(
            cur,
            "migration_applied",
            "warning",
            actor=f"db_migrate/{run_id}",
            revisions=applied,
            from_revision=run["from_revision"],
        )
    return {"applied": applied, "tables_changed": changed, "filenode": filenode, "before": before.to_dict()}


def _undo_failed(conn_id: str, run_id: str, error: Exception) -> None:
    """Record the half-applied revision, page, and fail the task without retries."""
    from execplatform.notifiers.alert_notifier import send_alert
    from execplatform.steps.backup_steps import record_recovery_event

    _set_status(conn_id, run_id, "undo_failed", error=str(error), partial_revision=error.revision)
    record_recovery_event(
        "migration_undo_failed",
        "critical",
        actor=f"db_migrate/{run_id}",
        revision=error.revision,
        error=str(error),
    )
    send_alert("critical", f"db_migrate {run_id}: {error}")
    _fail(str(error))


def verify_migration(conn_id: str, run_id: str, applied: dict[str, Any]) -> dict[str, Any]:
    """The schema is at the target, execution_tasks was not rewritten, the smoke checks pass."""
    import psycopg2

    from include.migrations import current
    from include.migrations.smoke import Fingerprint, smoke_check, table_filenode

    run = _run_row(conn_id, run_id)
    dsn = AppDatabaseHook(conn_id).dsn()
    problems = []
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'execution_tasks' "
            "AND column_name = 'ai_model'"
        )
        if cur.fetchone() is None:
            problems.append("execution_tasks.ai_model is missing")
        if (filenode := table_filenode(cur)) != applied["filenode"]:
            problems.append(f"execution_tasks was rewritten: file {applied['filenode']} became {filenode}")
    conn.close()
    now = current(dsn)
    if run["target_revision"] != "head" and now != run["target_revision"]:
        problems.append(f"the database is at {now}, not {run['target_revision']}")
    problems += smoke_check(dsn, Fingerprint(**applied["before"]), exact=False)
    if problems:
        _fail("verification after the migration failed: " + "; ".join(problems))
    return {"revision": now}


def roll_back_migration(
    conn_id: str, run_id: str, settings: Settings, lock_wait_seconds: float
) -> dict[str, Any]:
    """After a failure past apply: downgrade to where the run started, under the schema lock,
    and say so loudly. A run whose undo failed is left for a person: rolling back over a
    half-applied revision could make it worse."""
    from airflow.sdk.exceptions import AirflowSkipException

    from execplatform.notifiers.alert_notifier import send_alert
    from include.migrations import current, downgrade
    from include.observability.security_events import log_security_event

    if not _has_row(conn_id, run_id):
        raise AirflowSkipException("nothing was planned, so nothing was applied: nothing to roll back")
    run = _run_row(conn_id, run_id)
    db = AppDatabaseHook(conn_id)
    dsn = db.dsn()
    if run["status"] not in ("applying", "applied") or current(dsn) == run["from_revision"]:
        raise AirflowSkipException(
            f"nothing to roll back: run is {run['status']}, database at {current(dsn)}"
        )
    reached = current(dsn)
    with db.schema_lock(f"db_migrate/{run_id}/roll_back", exclusive=True, wait_seconds=lock_wait_seconds):
        downgrade(dsn, run["from_revision"] or "base", settings=settings)
    _set_status(conn_id, run_id, "rolled_back")
    with AppDatabaseHook(conn_id).cursor() as cur:
        log_security_event(
            cur,
            "migration_rolled_back",
            "critical",
            actor=f"db_migrate/{run_id}",
            from_revision=reached,
            to_revision=run["from_revision"],
        )
    send_alert("critical", f"db_migrate rolled {conn_id} back from {reached} to {run['from_revision']}")
    return {"rolled_back_from": reached, "to": run["from_revision"]}


def finish_migration(conn_id: str, run_id: str, verified: bool) -> str:
    """Close the run's row: completed when applied and verified, cancelled when nothing was
    applied (dry run, rejected, blocked before production), else failed; this releases the
    backup it held as its rollback point."""
    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute("SELECT status FROM migration_runs WHERE dag_run_id = %s", (run_id,))
        row = cur.fetchone()
    if row is None:
        return "nothing planned"
    if verified and row[0] == "applied":
        final = "completed"
    else:
        final = {
            "planned": "cancelled",
            "rehearsed": "cancelled",
            "applying": "failed",
            "applied": "failed",
        }.get(row[0], row[0])
    if final != row[0]:
        _set_status(conn_id, run_id, final)
    return final


def next_after_rehearsal(dry_run: bool, skip_approval: bool) -> str | None:
    """The branch after the rehearsal: nothing (a dry run), `apply` (no approval, outside
    production only), else `approve`."""
    from execplatform.dag_defaults import non_production

    if dry_run:
        return None  # everything after is skipped: a dry run ends with the rehearsal
    if skip_approval and not non_production():
        _fail(
            "skip_approval is refused: this deployment does not say it is non-production "
            "(PLATFORM_NON_PRODUCTION); trigger again without it and approve in the UI"
        )
    return "apply" if skip_approval else "approve"
