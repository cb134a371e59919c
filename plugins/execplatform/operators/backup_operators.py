"""Backups of a Postgres database to S3, verified by a real restore, and restores from them."""

from __future__ import annotations

import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from include.ids import APP_DB, AWS

if TYPE_CHECKING:
    from airflow.sdk import Context

    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from include.backup.catalog import CatalogEntry


def app_db(conn_id: str) -> AppDatabaseHook:
    """The hook, imported when a task runs: the provider's import is too heavy for parsing."""
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    return AppDatabaseHook(conn_id)


class PostgresBackupOperator(BaseOperator):
    """
    Dump a Postgres database (parallel directory format, gzip) with a SHA-256 manifest to S3,
    and record it in the ``backups`` catalog as ``uploaded`` (verification comes next).

    The local copy is deleted only after every file is confirmed in S3; a failed run leaves it
    for inspection and marks its catalog row ``failed``.

    :param bucket: (templated) the S3 bucket for backups.
    :param prefix: (templated) key prefix; the backup goes under ``<prefix>/<backup id>/``.
    :param postgres_conn_id: the database to back up; it also keeps the catalog.
    :param aws_conn_id: the AWS connection for S3.
    :param work_dir: local folder for dumps until their upload is confirmed.
    :param jobs: parallel pg_dump jobs.
    """

    template_fields = ("bucket", "prefix")

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "backups",
        postgres_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        work_dir: str | None = None,
        jobs: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bucket = bucket
        self.prefix = prefix
        self.postgres_conn_id = postgres_conn_id
        self.aws_conn_id = aws_conn_id
        self.work_dir = work_dir
        self.jobs = jobs

    def execute(self, context: Context) -> dict[str, Any]:
        from include.backup.archive import dump
        from include.backup.catalog import catalog_failed, catalog_start, catalog_uploaded

        dsn = app_db(self.postgres_conn_id).dsn()
        database = app_db(self.postgres_conn_id).database_name
        with app_db(self.postgres_conn_id).cursor() as cur:
            backup_id = catalog_start(cur, database)
        work_dir = Path(self.work_dir or tempfile.gettempdir()) / "execplatform-backups"
        work_dir.mkdir(parents=True, exist_ok=True)
        folder = work_dir / f"backup-{backup_id}"
        location = f"s3://{self.bucket}/{self.prefix.strip('/')}/{backup_id}/"
        try:
            result = dump(dsn, folder, jobs=self.jobs)
            self._upload(folder, location)
            with app_db(self.postgres_conn_id).cursor() as cur:
                catalog_uploaded(cur, backup_id, result, location)
        except BaseException as exc:
            self._mark_failed(backup_id, f"{type(exc).__name__}: {exc}", catalog_failed)
            self.log.error("backup %s failed; local copy (if any) kept at %s", backup_id, folder)
            raise
        shutil.rmtree(folder)
        self.log.info(
            "backup %s: %d bytes in %.1f s at %s",
            backup_id,
            result.size_bytes,
            result.seconds,
            location,
        )
        return {
            "backup_id": backup_id,
            "location": location,
            "size_bytes": result.size_bytes,
            "dump_seconds": round(result.seconds, 3),
        }

    def _upload(self, folder: Path, location: str) -> None:
        """Upload every file, then confirm each one's size in S3 before anything is deleted."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from execplatform.steps.backup_steps import s3_location
        from include.backup import BackupError

        bucket, prefix = s3_location(location)
        client = S3Hook(aws_conn_id=self.aws_conn_id).get_conn()
        files = sorted(folder.iterdir())
        for path in files:
            client.upload_file(str(path), bucket, f"{prefix}{path.name}")
        for path in files:
            stored = client.head_object(Bucket=bucket, Key=f"{prefix}{path.name}")["ContentLength"]
            if stored != path.stat().st_size:
                raise BackupError(
                    f"s3://{bucket}/{prefix}{path.name} holds {stored} bytes, the dump {path.stat().st_size}"
                )

    def _mark_failed(self, backup_id: int, error: str, catalog_failed) -> None:
        try:
            with app_db(self.postgres_conn_id).cursor() as cur:
                catalog_failed(cur, backup_id, error)
        except Exception:
            self.log.exception("could not mark backup %s failed in the catalog", backup_id)


class VerifyBackupOperator(BaseOperator):
    """
    Prove a backup restorable: download it, check every file's SHA-256 against the catalog,
    restore it in parallel into a fresh scratch database (never the source), compare schema,
    row counts, sequences and content checksums with what the dump recorded, drop the scratch
    database, and only then mark the backup ``verified`` with its restore time.

    A checksum or comparison failure is a hard gate (``AirflowFailException``: no retry).

    :param backup_id: (templated) the catalog id of the backup.
    :param postgres_conn_id: the backed-up database's connection (catalog and scratch server).
    :param aws_conn_id: the AWS connection for S3.
    :param jobs: parallel pg_restore jobs.
    """

    template_fields = ("backup_id",)

    def __init__(
        self,
        *,
        backup_id: int | str,
        postgres_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        jobs: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.postgres_conn_id = postgres_conn_id
        self.aws_conn_id = aws_conn_id
        self.jobs = jobs

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.steps.backup_steps import fetch_backup
        from include.backup import ChecksumMismatch
        from include.backup.archive import compare, restore
        from include.backup.catalog import catalog_failed, catalog_get, catalog_verified

        backup_id = int(self.backup_id)
        with app_db(self.postgres_conn_id).cursor() as cur:
            entry = catalog_get(cur, backup_id)
        scratch = f"verify_{backup_id}_{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
            try:
                folder = fetch_backup(entry, self.aws_conn_id, Path(tmp))
            except ChecksumMismatch as exc:
                self._fail(backup_id, str(exc), catalog_failed)
                raise AirflowFailException(str(exc)) from exc
            app_db(self.postgres_conn_id).create_database(scratch)
            try:
                seconds = restore(app_db(self.postgres_conn_id).dsn(scratch), folder, jobs=self.jobs)
                problems = compare(app_db(self.postgres_conn_id).dsn(scratch), folder)
            finally:
                app_db(self.postgres_conn_id).drop_database(scratch)
        if problems:
            message = f"backup {backup_id} failed verification: " + "; ".join(problems)
            self._fail(backup_id, message, catalog_failed)
            raise AirflowFailException(message)
        with app_db(self.postgres_conn_id).cursor() as cur:
            catalog_verified(cur, backup_id, seconds)
        self.log.info("backup %s verified: restored into %s in %.2f s", backup_id, scratch, seconds)
        return {"backup_id": backup_id, "restore_seconds": round(seconds, 3), "verified": 1}

    def _fail(self, backup_id: int, message: str, catalog_failed) -> None:
        with app_db(self.postgres_conn_id).cursor() as cur:
            catalog_failed(cur, backup_id, message)


# a plain lower-case PostgreSQL identifier (no quoting needed); db_restore's params use it too
DATABASE_NAME = r"[a-z_][a-z0-9_]{0,62}"


class RestoreBackupOperator(BaseOperator):
    """
    Restore a verified backup into a new database, or over the live one when confirmed.

    Checksums are checked before anything is restored. Restoring over the live database (the
    connection's own) requires ``confirm`` to equal its name; any other target must not exist
    yet and is created.

    :param backup_id: (templated) a catalog id, or ``latest`` for the newest verified backup.
    :param target_database: (templated) where to restore; empty for ``restore_<id>_<run time>``.
    :param confirm: (templated) the live database's name, to allow restoring over it.
    :param postgres_conn_id: the live database (catalog and server).
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields = ("backup_id", "target_database", "confirm")

    def __init__(
        self,
        *,
        backup_id: int | str = "latest",
        target_database: str = "",
        confirm: str = "",
        postgres_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        jobs: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.target_database = target_database
        self.confirm = confirm
        self.postgres_conn_id = postgres_conn_id
        self.aws_conn_id = aws_conn_id
        self.jobs = jobs

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.steps.backup_steps import fetch_backup
        from include.backup import BackupError
        from include.backup.archive import restore

        live = app_db(self.postgres_conn_id).database_name
        requested = str(self.backup_id).strip()
        if requested != "latest" and not requested.isdigit():
            raise AirflowFailException(f"backup_id {requested!r} is neither a catalog id nor 'latest'")
        try:
            with app_db(self.postgres_conn_id).cursor() as cur:
                entry = _verified(cur, None if requested == "latest" else int(requested))
        except BackupError as exc:
            raise AirflowFailException(str(exc)) from exc
        target = (self.target_database or "").strip() or f"restore_{entry.id}_{context['ts_nodash'].lower()}"
        if not re.fullmatch(DATABASE_NAME, target):
            raise AirflowFailException(f"target_database {target!r} is not a plain lower-case database name")
        over_live = target == live
        if over_live and self.confirm != live:
            raise AirflowFailException(
                f"restoring over the live database {live!r} needs confirm={live!r}; got {self.confirm!r}; "
                f"nothing was touched"
            )
        with tempfile.TemporaryDirectory(prefix="restore-") as tmp:
            try:
                folder = fetch_backup(entry, self.aws_conn_id, Path(tmp))
            except BackupError as exc:
                raise AirflowFailException(str(exc)) from exc
            if not over_live:
                if app_db(self.postgres_conn_id).database_exists(target):
                    raise AirflowFailException(
                        f"target_database {target!r} already exists; nothing was touched"
                    )
                app_db(self.postgres_conn_id).create_database(target)
            seconds = restore(
                app_db(self.postgres_conn_id).dsn(target), folder, jobs=self.jobs, clean=over_live
            )
        self.log.info("backup %s restored into %s in %.2f s", entry.id, target, seconds)
        return {
            "backup_id": entry.id,
            "target_database": target,
            "restore_seconds": round(seconds, 3),
        }


def _verified(cur, backup_id: int | None) -> CatalogEntry:
    from include.backup import BackupError
    from include.backup.catalog import catalog_get

    entry = catalog_get(cur, backup_id)
    if entry.status != "verified":
        raise BackupError(
            f"backup {entry.id} has status {entry.status!r}; only verified backups are restored"
        )
    return entry
