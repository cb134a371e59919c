"""
### Database restore

**Owner:** platform team. **Schedule:** manual only (Trigger with the form).

Restores a verified backup of the app database from S3: `backup_id` (a catalog id, or `latest`
for the newest verified backup) into `target_database`. Every file's SHA-256 is checked
against the catalog **before** anything is restored. An empty target restores into a new
database `restore_<id>_<run time>`; a named target must not exist yet. Restoring **over the
live database** requires typing its name in `confirm`; it also rolls the `backups` catalog,
which lives in that database, back to the backup's moment.

**Idempotent:** into a new database, a re-run refuses because the target exists (drop it
first); over the live database, a re-run restores the same backup again.

**Alerts:** a failure is an *error* (email to the owners).

**When it fails:** the log says which: unknown backup id, unverified backup, checksum mismatch
(file and both checksums), existing target, missing confirmation. Nothing was restored in
those cases.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag

from execplatform.dag_defaults import default_args
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.backup_operators import DATABASE_NAME, RestoreBackupOperator


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["platform", "backup"],
    # each param refuses at the trigger what the restore could not use (the adversarial probes check it)
    params={
        "backup_id": Param(
            "latest",
            type="string",
            pattern=r"^(latest|[0-9]{1,18})$",
            description="a backups catalog id, or 'latest'",
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
    },
    **run_metrics_callbacks(),
    default_args=default_args(on_failure="error", on_retry=None),
)
def db_restore():
    RestoreBackupOperator(
        task_id="restore_backup",
        backup_id="{{ params.backup_id }}",
        target_database="{{ params.target_database or '' }}",
        confirm="{{ params.confirm or '' }}",
    )


db_restore()
