"""
### Database backup (verified)

**Owner:** platform team. **Schedule:** daily, and on demand.

Dumps the app database (`app_db`) in parallel directory format with a SHA-256 manifest, uploads
it to S3 (`aws_default`, bucket `$BACKUP_BUCKET`) into a folder of its own, never reused, with
its catalog entry (`catalog.json`), then **proves it restorable**: downloads it, checks every
checksum against the catalog, restores it into a scratch database, compares schema, row counts,
sequences and every table's content checksums, and only then marks it `verified` (in S3 and the
`backups` table) and updates the **backup verified** Asset that `db_migrate` waits for.

The catalog in S3 is the source of truth, and the `backups` table a cache of it: each run first
reconciles the table from the bucket (so after a restore no id or folder is reused), which makes
a run of this DAG the way to reconcile on demand. The dump takes the schema lock shared: it
waits for a migration or a restore's swap, and runs beside drains.
Retention keeps the newest verified backup of each of the last `keep_daily` days and
`keep_weekly` ISO weeks, and always the newest one; a backup never verified (failed, or stopped
before verification) goes once it is 72 hours old. Metrics: duration, size, restore time,
verified (0/1).

**Idempotent:** each run makes a new backup; a retried task starts its own catalog entry and
marks the abandoned one `failed`. A backup is never `verified` without a checked restore.
Retention deletes a backup's files but keeps its `catalog.json`, marked `deleted`.

**Alerts:** a retry is a *warning*; a failure is *critical* (email and Sentry): without a
fresh verified backup, schema changes are blocked and data is at risk.

**When it fails:** the failed task's log names the file, checksum or table that differed. The
local copy of a dump whose upload failed is kept under the worker's temp folder
(`execplatform-backups/backup-<id>`). Fix the cause and clear the run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import TriggerRule, dag, task

from execplatform.dag_defaults import (
    BACKUP_BUCKET,
    BACKUP_PREFIX,
    BACKUP_VERIFIED,
    default_args,
    number_param,
    schedule_for,
)
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.backup_operators import PostgresBackupOperator, VerifyBackupOperator


@dag(
    schedule=schedule_for("db_backup", "@daily"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "backup"],
    params={
        "keep_daily": number_param(
            7, integer=True, minimum=1, maximum=366, description="daily verified backups to keep"
        ),
        "keep_weekly": number_param(
            4, integer=True, minimum=0, maximum=520, description="weekly verified backups to keep"
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args(on_failure="critical", retry_delay=timedelta(minutes=1)),
)
def db_backup():
    dumped = PostgresBackupOperator(task_id="dump_and_upload", bucket=BACKUP_BUCKET, prefix=BACKUP_PREFIX)
    verified = VerifyBackupOperator(
        task_id="verify_backup",
        backup_id="{{ ti.xcom_pull(task_ids='dump_and_upload')['backup_id'] }}",
        outlets=[BACKUP_VERIFIED],
    )

    @task
    def apply_retention(params=None) -> list[int]:
        from execplatform.steps.backup_steps import apply_retention

        return apply_retention(keep_daily=params["keep_daily"], keep_weekly=params["keep_weekly"])

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def publish_metrics(ti=None) -> int:
        """Runs whatever happened upstream: a failed backup must report verified=0."""
        from execplatform.steps.backup_steps import publish_backup_metrics

        return publish_backup_metrics(
            ti.xcom_pull(task_ids="dump_and_upload"), ti.xcom_pull(task_ids="verify_backup")
        )

    dumped >> verified >> apply_retention() >> publish_metrics()


db_backup()
