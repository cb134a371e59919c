"""
### Database restore

**Owner:** platform team. **Schedule:** manual only (Trigger with the form).

Restores a verified backup of the app database (`app_db`) from S3, reading the backup catalog
from the bucket alone, so it works with the app database damaged or dropped:

1. **plan**: `backup_id` (a catalog id, or `latest` for the newest verified backup) and where it
   goes. An empty `target_database` restores into a new database `restore_<id>_<time>`; when the
   live database is gone, it recreates it under its own name. Restoring **over the live
   database** needs its name typed in `confirm`. Refuses before anything is touched.
2. **restore**: every file's SHA-256 checked against the catalog, the dump restored into a
   database of its own and compared with what it recorded (schema, row counts, sequences, every
   table's content checksums); a restore that differs is dropped and the run fails.
3. Over the live database only: a **verified backup of the live database** first, then
   **approve** in the UI (Required Actions; in production by someone other than the user who
   triggered the run), then **swap**: the restored database takes the live name in one short
   transaction under the schema lock (migrations, backups and drains wait), and the old one is
   kept as `<live>_pre_restore_<time>` until an operator drops it.
4. **finish**: when the restored database is the live one, its `backups` table is reconciled
   from S3, so newer backups are known again and no backup id is issued twice.

Every restore, swap and approval is a security event in S3 (under `backups/_events/`) and the
log, where a restore cannot roll it back.

**Idempotent:** a retried restore drops what its killed attempt left (a database it made, by
its comment) and starts again; a retried swap only finishes up. The live database is whole at
every moment: it is either the old database or the restored one, complete.

**Alerts:** a failure is an *error* (email to the owners).

**When it fails:** the log says which: unknown backup id, unverified backup, checksum mismatch
(file and both checksums), a restore that differs (the table and both values), an existing
target, a missing confirmation, an approval by the run's own trigger, the schema lock held too
long (naming the run that holds it), not enough disk (the restore's estimate against the free
space `APP_DB_DISK_BYTES` or `APP_DB_DISK_FREE_PATH` lets be known, under a 15% margin). The
live database was not touched in any of these cases; trigger again once the cause is fixed.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, TriggerRule, dag, task

from execplatform.dag_defaults import (
    APP_DB,
    BACKUP_BUCKET,
    BACKUP_PREFIX,
    BACKUP_VERIFIED,
    default_args,
    number_param,
)
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.approval_operator import SecondPersonApprovalOperator
from execplatform.operators.backup_operators import (
    DATABASE_NAME,
    PostgresBackupOperator,
    VerifyBackupOperator,
)

JOIN = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS  # where the over-live branch rejoins


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "backup"],
    # each param refuses at the trigger what the restore could not use (the adversarial probes check it)
    params={
        "backup_id": Param(
            "latest",
            type="string",
            pattern=r"^(latest|[0-9]{1,18})$",
            description="a backup catalog id, or 'latest'",
        ),
        # null allowed: the trigger form treats a param whose type has no "null" as required;
        # the empty string too, as an empty field
        "target_database": Param(
            None,
            type=["null", "string"],
            pattern=f"^({DATABASE_NAME})?$",
            description="a lower-case database name; empty: a new database restore_<id>_<time>",
        ),
        "confirm": Param(
            None,
            type=["null", "string"],
            pattern=f"^({DATABASE_NAME})?$",
            description="type the live database's name to restore over it",
        ),
        "lock_wait_seconds": number_param(
            900,
            integer=True,
            minimum=1,
            maximum=86_400,
            description="how long the swap waits for a migration, backup or drain",
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args(on_retry=None),
)
def db_restore():
    @task
    def plan(params=None, run_id=None) -> dict:
        from execplatform.steps.restore_steps import plan_restore

        return plan_restore(params["backup_id"], params["target_database"], params["confirm"], run_id)

    @task.branch
    def over_live(plan: dict) -> str:
        return "backup_live" if plan["over_live"] else "restore"

    backup_live = PostgresBackupOperator(
        task_id="backup_live", postgres_conn_id=APP_DB, bucket=BACKUP_BUCKET, prefix=BACKUP_PREFIX
    )
    verify_live = VerifyBackupOperator(
        task_id="verify_live",
        backup_id="{{ ti.xcom_pull(task_ids='backup_live')['backup_id'] }}",
        outlets=[BACKUP_VERIFIED],
    )

    @task(trigger_rule=JOIN)
    def restore(plan: dict, run_id=None) -> dict:
        from execplatform.steps.restore_steps import restore_and_compare

        return restore_and_compare(plan, run_id)

    @task.branch
    def needs_swap(plan: dict) -> list[str]:
        return ["approve", "finish"] if plan["over_live"] else ["finish"]

    approve = SecondPersonApprovalOperator(
        task_id="approve",
        subject="Put backup {{ ti.xcom_pull(task_ids='plan')['backup_id'] }} in place of the live database?",
        body="The restore of backup {{ ti.xcom_pull(task_ids='plan')['backup_id'] }} compared clean with "
        "what it recorded. Approving swaps it in for {{ ti.xcom_pull(task_ids='plan')['live'] }}; the "
        "current database is kept as {{ ti.xcom_pull(task_ids='plan')['keep_as'] }}, and was backed up "
        "first (backup {{ ti.xcom_pull(task_ids='backup_live')['backup_id'] }}).",
        defaults="Reject",
    )

    @task
    def swap(plan: dict, params=None, run_id=None) -> dict:
        from execplatform.steps.restore_steps import swap_into_place

        holder = f"db_restore/{run_id}/swap"
        return swap_into_place(plan, run_id, holder, params["lock_wait_seconds"])

    @task(trigger_rule=JOIN)
    def finish(plan: dict, ti=None) -> dict:
        from execplatform.steps.restore_steps import finish_restore

        return finish_restore(plan, swapped=ti.xcom_pull(task_ids="swap") is not None)

    planned = plan()
    restored = restore(planned)
    finished = finish(planned)
    over_live(planned) >> [backup_live, restored]
    backup_live >> verify_live >> restored
    restored >> needs_swap(planned) >> [approve, finished]
    approve >> swap(planned) >> finished


db_restore()
