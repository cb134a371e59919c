"""Backups of the app database to S3, catalogued beside their files and verified by a real restore."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from include.ids import APP_DB, AWS

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from include.backup.catalog import BackupCatalog, CatalogEntry

# a plain lower-case PostgreSQL identifier (no quoting needed); db_restore's params use it too
DATABASE_NAME = r"[a-z_][a-z0-9_]{0,62}"


def app_db(conn_id: str) -> AppDatabaseHook:
    """The hook, imported when a task runs: the provider's import is too heavy for parsing."""
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    return AppDatabaseHook(conn_id)


def holder(context: Context) -> str:
    """Who takes the schema lock, as a waiting run will name it: DAG, run and task."""
    ti = context.get("ti")
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}" if ti else "a backup outside Airflow"


class PostgresBackupOperator(BaseOperator):
    """
    Dump the app database (parallel directory format, gzip) with a SHA-256 manifest to S3, into
    a folder of its own with its catalog entry (``catalog.json``), and record it in the
    ``backups`` table as ``uploaded`` (verification comes next).

    The table is first reconciled from the S3 catalog, so that an id is never issued twice (after a
    restore rolled the table back). The dump holds the schema lock shared: it waits for a migration
    or a restore's swap, and runs beside drains. The local copy is deleted only after every file is
    confirmed in S3; a failed run leaves it for inspection and marks its catalog entry ``failed``.

    :param bucket: (templated) the S3 bucket for backups.
    :param prefix: (templated) the catalog's root (default ``$BACKUP_PREFIX``, else ``backups``); each
        backup gets ``<prefix>/<time>-<id>-<random>/``.
    :param postgres_conn_id: the database to back up; it also keeps the catalog's table.
    :param aws_conn_id: the AWS connection for S3.
    :param work_dir: local folder for dumps until their upload is confirmed.
    :param jobs: parallel pg_dump jobs.
    :param lock_wait_seconds: how long to wait for a migration or restore to release the schema.
    """

    template_fields = ("bucket", "prefix")

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str | None = None,
        postgres_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        work_dir: str | None = None,
        jobs: int = 2,
        lock_wait_seconds: float = 1800.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.prefix = prefix
        self.postgres_conn_id = postgres_conn_id
        self.aws_conn_id = aws_conn_id
        self.work_dir = work_dir
        self.jobs = jobs
        self.lock_wait_seconds = lock_wait_seconds
        self.location: str | None = None  # the backup's folder, once known (for lineage)

    def execute(self, context: Context) -> dict[str, Any]:
        from execplatform.steps.backup_steps import backup_catalog
        from include.backup.catalog import CatalogEntry, catalog_start, reconcile

        db = app_db(self.postgres_conn_id)
        catalog = backup_catalog(self.aws_conn_id, self.bucket, self.prefix)
        with db.schema_lock(holder(context), exclusive=False, wait_seconds=self.lock_wait_seconds):
            with db.cursor() as cur:
                self.log.info("catalog reconciled from S3: %s", reconcile(cur, catalog.entries()))
                backup_id = catalog_start(cur, db.database_name)
            entry = CatalogEntry(backup_id, "running", database_name=db.database_name, started_at=_now())
            entry.location = self.location = catalog.new_location(backup_id)
            catalog.put(entry)
            work_dir = Path(self.work_dir or tempfile.gettempdir()) / "execplatform-backups"
            work_dir.mkdir(parents=True, exist_ok=True)
            folder = work_dir / f"backup-{backup_id}"
            try:
                result = self._dump_and_upload(db, catalog, entry, folder)
            except BaseException as exc:
                self._mark_failed(catalog, entry, f"{type(exc).__name__}: {exc}")
                self.log.error("backup %s failed; local copy (if any) kept at %s", backup_id, folder)
                raise
        shutil.rmtree(folder)
        self.log.info(
            "backup %s: %d bytes in %.1f s at %s",
            backup_id,
            result.size_bytes,
            result.seconds,
            entry.location,
        )
        return {
            "backup_id": backup_id,
            "location": entry.location,
            "size_bytes": result.size_bytes,
            "dump_seconds": round(result.seconds, 3),
        }

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """Reads the app database, writes under the catalog's root (the folder is not named yet)."""
        from execplatform.steps.backup_steps import backup_catalog

        catalog = backup_catalog(self.aws_conn_id, self.bucket, self.prefix)
        return self._lineage(f"s3://{catalog.bucket}/{catalog.root}")

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """Reads the app database, wrote the backup's own folder."""
        return self._lineage(self.location) if self.location else self.get_openlineage_facets_on_start()

    def _lineage(self, written: str) -> OperatorLineage:
        from airflow.providers.openlineage.extractors import OperatorLineage

        from execplatform.lineage import app_database, s3_prefix

        return OperatorLineage(
            inputs=[app_database(app_db(self.postgres_conn_id))], outputs=[s3_prefix(written)]
        )

    def _dump_and_upload(
        self, db: AppDatabaseHook, catalog: BackupCatalog, entry: CatalogEntry, folder: Path
    ):
        from include.backup.archive import EXPECTED_FILE, dump
        from include.backup.catalog import catalog_uploaded

        result = dump(db.dsn(), folder, jobs=self.jobs)
        self._upload(catalog, folder, entry.location)
        entry.status, entry.finished_at, entry.size_bytes = "uploaded", _now(), result.size_bytes
        entry.manifest, entry.server_version = result.manifest, result.server_version
        entry.expected = json.loads((folder / EXPECTED_FILE).read_text())
        catalog.put(entry)
        with db.cursor() as cur:
            catalog_uploaded(cur, entry.id, result, entry.location)
        return result

    def _upload(self, catalog: BackupCatalog, folder: Path, location: str) -> None:
        """Upload every file, then confirm each one's size in S3 before anything is deleted."""
        from include.backup import BackupError
        from include.backup.catalog import split_location

        bucket, prefix = split_location(location)
        files = sorted(folder.iterdir())
        for path in files:
            catalog.s3.upload_file(str(path), bucket, f"{prefix}{path.name}")
        for path in files:
            stored = catalog.s3.head_object(Bucket=bucket, Key=f"{prefix}{path.name}")["ContentLength"]
            if stored != path.stat().st_size:
                raise BackupError(
                    f"s3://{bucket}/{prefix}{path.name} holds {stored} bytes, the dump {path.stat().st_size}"
                )

    def _mark_failed(self, catalog: BackupCatalog, entry: CatalogEntry, error: str) -> None:
        entry.status, entry.finished_at, entry.error = "failed", _now(), error[:2000]
        for where, mark in (
            ("S3", lambda: catalog.put(entry)),
            ("table", lambda: self._fail_row(entry, error)),
        ):
            try:
                mark()
            except Exception:
                self.log.exception("could not mark backup %s failed in the %s catalog", entry.id, where)

    def _fail_row(self, entry: CatalogEntry, error: str) -> None:
        from include.backup.catalog import catalog_failed

        with app_db(self.postgres_conn_id).cursor() as cur:
            catalog_failed(cur, entry.id, error)


class VerifyBackupOperator(BaseOperator):
    """
    Prove a backup restorable: download it, check every file's SHA-256 against the catalog,
    restore it in parallel into a fresh scratch database (never the source), compare schema,
    row counts, sequences and content checksums with what the dump recorded, drop the scratch
    database, and only then mark the backup ``verified`` (in S3 and the table) with its restore
    time.

    The table's manifest and the S3 catalog entry's must agree: a catalog changed on one side only
    is refused. A checksum or comparison failure is a hard gate (``AirflowFailException``: no
    retry).

    :param backup_id: (templated) the catalog id of the backup.
    :param postgres_conn_id: the backed-up database's connection (catalog and scratch server).
    :param aws_conn_id: the AWS connection for S3.
    :param bucket: the S3 bucket of the catalog (default ``$BACKUP_BUCKET``).
    :param jobs: parallel pg_restore jobs.
    """

    template_fields = ("backup_id",)

    def __init__(
        self,
        *,
        backup_id: int | str,
        postgres_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        bucket: str | None = None,
        jobs: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.postgres_conn_id = postgres_conn_id
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.jobs = jobs
        self.location: str | None = None  # the backup's folder, once read (for lineage)

    def execute(self, context: Context) -> dict[str, Any]:
        from execplatform.steps.backup_steps import backup_catalog, fetch_backup
        from include.backup import ChecksumMismatch
        from include.backup.archive import compare, restore
        from include.backup.catalog import catalog_get

        backup_id = int(self.backup_id)
        db = app_db(self.postgres_conn_id)
        with db.cursor() as cur:
            entry = catalog_get(cur, backup_id)
        self.location = entry.location
        catalog = backup_catalog(self.aws_conn_id, self.bucket)
        # the entry in the backup's own folder; None for one catalogued before S3 kept entries
        stored = catalog.read(entry.location) if entry.location else None
        if stored is not None and stored.manifest != entry.manifest:
            self._fail(
                catalog, entry, f"backup {backup_id}: the table's manifest and S3's catalog.json differ"
            )
        scratch = f"verify_{backup_id}_{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
            try:
                folder = fetch_backup(entry, self.aws_conn_id, Path(tmp))
            except ChecksumMismatch as exc:
                self._fail(catalog, entry, str(exc))
            db.create_database(scratch)
            try:
                seconds = restore(db.dsn(scratch), folder, jobs=self.jobs)
                problems = compare(db.dsn(scratch), folder)
            finally:
                db.drop_database(scratch)
        if problems:
            self._fail(catalog, entry, f"backup {backup_id} failed verification: " + "; ".join(problems))
        self._mark_verified(db, catalog, stored, backup_id, seconds)
        self.log.info("backup %s verified: restored into %s in %.2f s", backup_id, scratch, seconds)
        return {"backup_id": backup_id, "restore_seconds": round(seconds, 3), "verified": 1}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """Read the backup's S3 folder; the scratch database it restored into is gone."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from execplatform.lineage import s3_prefix

        return OperatorLineage(inputs=[s3_prefix(self.location)] if self.location else [])

    def _mark_verified(self, db, catalog, stored, backup_id: int, seconds: float) -> None:
        from include.backup.catalog import catalog_verified

        with db.cursor() as cur:
            catalog_verified(cur, backup_id, seconds)
        if stored is not None:
            stored.status, stored.verified_at, stored.restore_seconds = "verified", _now(), seconds
            catalog.put(stored)

    def _fail(self, catalog: BackupCatalog, entry: CatalogEntry, message: str) -> None:
        """Mark the backup failed on both sides, and fail the task without retries."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.backup.catalog import catalog_failed

        with app_db(self.postgres_conn_id).cursor() as cur:
            catalog_failed(cur, entry.id, message)
        stored = catalog.read(entry.location) if entry.location else None
        if stored is not None and stored.status in ("running", "uploaded"):
            stored.status, stored.error = "failed", message[:2000]
            catalog.put(stored)
        raise AirflowFailException(message)


def _now() -> datetime:
    return datetime.now(UTC)
