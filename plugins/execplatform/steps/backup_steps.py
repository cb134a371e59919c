"""db_backup's and db_restore's steps beyond the operators: fetching a catalogued backup from S3,
retention, and the run's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from execplatform.dag_defaults import APP_DB, AWS
from execplatform.hooks.app_db_hook import AppDatabaseHook

if TYPE_CHECKING:
    from include.backup.catalog import CatalogEntry


def s3_location(location: str) -> tuple[str, str]:
    """(bucket, key prefix) of an ``s3://bucket/prefix/`` location."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return bucket, prefix


def fetch_backup(entry: CatalogEntry, aws_conn_id: str, dest: Path) -> Path:
    """Download a catalogued backup and check every file against the catalog's SHA-256s
    (the catalog's, not the copy in S3: a tampered bucket cannot vouch for itself)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from include.backup import BackupError
    from include.backup.archive import check_manifest

    if not entry.location or not entry.manifest:
        raise BackupError(f"backup {entry.id} has status {entry.status!r} and no uploaded files")
    bucket, prefix = s3_location(entry.location)
    folder = dest / f"backup-{entry.id}"
    folder.mkdir(parents=True)
    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    for name in entry.manifest:
        client.download_file(bucket, f"{prefix}{name}", str(folder / name))
    check_manifest(folder, entry.manifest)
    return folder


def apply_retention(
    *,
    keep_daily: int,
    keep_weekly: int,
    protected: frozenset[int] = frozenset(),
    postgres_conn_id: str = APP_DB,
    aws_conn_id: str = AWS,
) -> list[int]:
    """Delete the verified backups that retention does not keep (S3 objects, then the catalog
    row becomes ``deleted``); returns their ids. A backup that a pending db_migrate run names
    as its rollback point is always kept."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from include.backup.catalog import plan_retention
    from include.migrations import rollback_points

    with AppDatabaseHook(postgres_conn_id).cursor() as cur:
        cur.execute("SELECT id, verified_at, location FROM backups WHERE status = 'verified'")
        rows = cur.fetchall()
        protected = protected | rollback_points(cur)
    doomed = plan_retention(
        [(r[0], r[1]) for r in rows],
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        protected=protected,
    )
    locations = {r[0]: r[2] for r in rows}
    s3 = S3Hook(aws_conn_id=aws_conn_id)
    for backup_id in doomed:
        bucket, prefix = s3_location(locations[backup_id])
        keys = s3.list_keys(bucket_name=bucket, prefix=prefix)
        if keys:
            s3.delete_objects(bucket=bucket, keys=keys)
        with AppDatabaseHook(postgres_conn_id).cursor() as cur:
            cur.execute(
                "UPDATE backups SET status = 'deleted' WHERE id = %s AND status = 'verified'",
                (backup_id,),
            )
    return doomed


def publish_backup_metrics(dumped: dict[str, Any] | None, verified: dict[str, Any] | None) -> int:
    """BackupVerified (0 or 1), and the size, dump and restore times of what was done."""
    from execplatform.hooks.cloudwatch_hook import publish_metrics
    from include.observability.metrics import Metric

    metrics = [Metric("BackupVerified", float(bool(verified)))]
    if dumped:
        metrics += [
            Metric("BackupSizeBytes", float(dumped["size_bytes"]), unit="Bytes"),
            Metric("BackupDumpSeconds", dumped["dump_seconds"], unit="Seconds"),
        ]
    if verified:
        metrics.append(Metric("BackupRestoreSeconds", verified["restore_seconds"], unit="Seconds"))
    return publish_metrics(metrics)
