"""The backups' steps beyond the operators: the S3 catalog, fetching a catalogued backup,
recovery events, retention, and the run's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.backup.catalog import split_location as s3_location
from include.ids import APP_DB, AWS

if TYPE_CHECKING:
    from include.backup.catalog import BackupCatalog, CatalogEntry

__all__ = ["s3_location"]


def backup_catalog(
    aws_conn_id: str = AWS, bucket: str | None = None, root: str | None = None
) -> BackupCatalog:
    """The S3 catalog of backups (``$BACKUP_BUCKET`` under ``$BACKUP_PREFIX``, by default
    ``execplatform-backups`` and ``backups``, read when called): the source of truth."""
    import os

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from include.backup.catalog import BackupCatalog

    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    bucket = bucket or os.environ.get("BACKUP_BUCKET", "execplatform-backups")
    return BackupCatalog(client, bucket, root or os.environ.get("BACKUP_PREFIX", "backups"))


def reconcile_catalog(catalog: BackupCatalog, conn_id: str = APP_DB) -> dict[str, int]:
    """The ``backups`` table made to agree with S3 (after a restore, before each backup)."""
    from include.backup.catalog import reconcile

    with AppDatabaseHook(conn_id).cursor() as cur:
        return reconcile(cur, catalog.entries())


def record_recovery_event(
    event_type: str, severity: str, *, actor: str, conn_id: str = APP_DB, aws_conn_id: str = AWS, **details
) -> dict[str, Any]:
    """A restore, swap, approval or undo: one JSON log line, a copy in S3 beside the backups
    (where restoring the database cannot roll it back), and the ``security_events`` row while the
    app database is there to take it."""
    import logging

    from include.observability.security_events import log_security_event, store_security_event

    event = log_security_event(None, event_type, severity, actor=actor, **details)
    backup_catalog(aws_conn_id).record_event(event)
    try:
        with AppDatabaseHook(conn_id).cursor() as cur:
            store_security_event(cur, event)
    except Exception as exc:  # the database may be the thing being restored
        logging.getLogger(__name__).warning(
            "security event %s kept in S3 and the log only: %s", event_type, exc
        )
    return event


def fetch_backup(entry: CatalogEntry, aws_conn_id: str, dest: Path) -> Path:
    """Download a catalogued backup and check every file against the catalog's SHA-256s
    (the catalog's, not the manifest file in the folder: a file cannot vouch for itself)."""
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


# A backup that is not verified this long after it started (failed, or stopped at running or
# uploaded) will never be: its files go, its catalog entry stays, marked deleted.
UNVERIFIED_MAX_AGE_HOURS = 72.0
UNVERIFIED = ("failed", "running", "uploaded")


def apply_retention(
    *,
    keep_daily: int,
    keep_weekly: int,
    protected: frozenset[int] = frozenset(),
    unverified_max_age_hours: float = UNVERIFIED_MAX_AGE_HOURS,
    postgres_conn_id: str = APP_DB,
    aws_conn_id: str = AWS,
) -> list[int]:
    """Delete the backups that retention does not keep: their files in S3, leaving the folder's
    catalog entry marked ``deleted`` (so the bucket still accounts for every id), then the
    table's row; returns their ids. Verified backups go by `plan_retention`; one that a pending
    db_migrate run names as its rollback point is always kept. A backup never verified (failed,
    or stopped before verification) goes once it is older than `unverified_max_age_hours`."""
    from datetime import UTC, datetime, timedelta

    from execplatform.steps import checked_number
    from include.backup.catalog import CatalogEntry, plan_retention
    from include.migrations import rollback_points

    keep_daily = checked_number("keep_daily", keep_daily, low=1, high=10_000, integer=True)
    keep_weekly = checked_number("keep_weekly", keep_weekly, low=0, high=10_000, integer=True)
    unverified_max_age_hours = checked_number(
        "unverified_max_age_hours", unverified_max_age_hours, low=1, high=87_600
    )
    with AppDatabaseHook(postgres_conn_id).cursor() as cur:
        cur.execute("SELECT id, verified_at, location FROM backups WHERE status = 'verified'")
        rows = cur.fetchall()
        cur.execute(
            "SELECT id, status, location FROM backups WHERE status = ANY(%s) AND location IS NOT NULL "
            "AND coalesce(finished_at, started_at) < now() - %s * interval '1 hour'",
            (list(UNVERIFIED), unverified_max_age_hours),
        )
        stale_rows = {r[0]: CatalogEntry(r[0], r[1], r[2]) for r in cur.fetchall()}
        protected = protected | rollback_points(cur)
    verified = [(r[0], r[1]) for r in rows]
    doomed = plan_retention(verified, keep_daily=keep_daily, keep_weekly=keep_weekly, protected=protected)
    catalog = backup_catalog(aws_conn_id)
    entries = {e.id: e for e in catalog.entries()}
    locations = {r[0]: r[2] for r in rows}
    since = datetime.now(UTC) - timedelta(hours=unverified_max_age_hours)
    stale = {  # the S3 catalog's word first; the table's rows for backups it does not know
        **stale_rows,
        **{
            e.id: e
            for e in entries.values()
            if e.status in UNVERIFIED and e.location and (e.finished_at or e.started_at or since) < since
        },
    }
    stale = {i: e for i, e in stale.items() if i not in protected and entries.get(i, e).status in UNVERIFIED}
    for backup_id in [*doomed, *sorted(stale)]:
        # a backup from before the catalog moved to S3 has no entry there: its folder alone goes
        entry = (
            entries.get(backup_id)
            or stale.get(backup_id)
            or CatalogEntry(backup_id, "verified", locations[backup_id])
        )
        catalog.delete_files(entry)
        if backup_id in entries:
            entry.status = "deleted"
            catalog.put(entry)
        was = ["verified"] if backup_id in doomed else list(UNVERIFIED)
        with AppDatabaseHook(postgres_conn_id).cursor() as cur:
            cur.execute(
                "UPDATE backups SET status = 'deleted' WHERE id = %s AND status = ANY(%s)", (backup_id, was)
            )
    return sorted([*doomed, *stale])


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
