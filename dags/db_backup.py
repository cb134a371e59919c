"""
### Database backup (verified)

**Owner:** platform team. **Schedule:** daily, and on demand.

Dumps the app database (`app_db`) in parallel directory format with a SHA-256 manifest, uploads
it to S3 (`aws_default`, bucket `$BACKUP_BUCKET`), then **proves it restorable**: downloads
it, checks every checksum against the catalog, restores it into a scratch database, compares
schema, row counts, sequences and content checksums, and only then marks it `verified` in the
`backups` table and updates the **backup verified** Asset that `db_migrate` waits for.
Retention keeps the newest verified backup of each of the last `keep_daily` days and
`keep_weekly` ISO weeks, and always the newest one. Metrics: duration, size, restore time,
verified (0/1).

**Idempotent:** each run makes a new backup; a retried task starts its own catalog row and
marks the abandoned one `failed`. A backup is never `verified` without a checked restore.

**Alerts:** a retry is a *warning*; a failure is *critical* (email and Sentry): without a
fresh verified backup, schema changes are blocked and data is at risk.

**When it fails:** the failed task's log names the file, checksum or table that differed. The
local copy of a dump whose upload failed is kept under the worker's temp folder
(`execplatform-backups/backup-<id>`). Fix the cause and clear the run.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, TriggerRule, dag, task

from execplatform.notifiers.alert_notifier import alert_callbacks, run_metrics_callbacks
from execplatform.operators.backup import PostgresBackupOperator, VerifyBackupOperator
from include.schedules import schedule_for

BACKUP_VERIFIED = Asset("app_db_backup_verified")


@dag(
    schedule=schedule_for("db_backup", "@daily"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "backup"],
    params={
        "keep_daily": Param(7, type="integer", minimum=1, description="daily verified backups to keep"),
        "keep_weekly": Param(4, type="integer", minimum=0, description="weekly verified backups to keep"),
    },
    **run_metrics_callbacks(),
    default_args={
        "owner": "platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        **alert_callbacks(on_failure="critical", on_retry="warning"),
    },
)
def db_backup():
    dumped = PostgresBackupOperator(
        task_id="dump_and_upload", bucket=os.environ.get("BACKUP_BUCKET", "execplatform-backups")
    )
    verified = VerifyBackupOperator(
        task_id="verify_backup",
        backup_id="{{ ti.xcom_pull(task_ids='dump_and_upload')['backup_id'] }}",
        outlets=[BACKUP_VERIFIED],
    )

    @task
    def apply_retention(params=None) -> list[int]:
        from execplatform.operators.backup import apply_retention

        return apply_retention(keep_daily=params["keep_daily"], keep_weekly=params["keep_weekly"])

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def publish_metrics(ti=None) -> None:
        """Runs whatever happened upstream: a failed backup must report verified=0."""
        from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
        from include.metrics import NAMESPACE, Metric, standard_dimensions

        dumped = ti.xcom_pull(task_ids="dump_and_upload") or {}
        verified = ti.xcom_pull(task_ids="verify_backup") or {}
        dims = standard_dimensions()
        metrics = [Metric("BackupVerified", float(bool(verified)), dimensions=dims)]
        if dumped:
            metrics += [
                Metric("BackupSizeBytes", float(dumped["size_bytes"]), unit="Bytes", dimensions=dims),
                Metric("BackupDumpSeconds", dumped["dump_seconds"], unit="Seconds", dimensions=dims),
            ]
        if verified:
            metrics.append(Metric("BackupRestoreSeconds", verified["restore_seconds"], unit="Seconds", dimensions=dims))
        CloudWatchMetricsHook(aws_conn_id="aws_default").put_metrics(NAMESPACE, metrics)

    dumped >> verified >> apply_retention() >> publish_metrics()


db_backup()
