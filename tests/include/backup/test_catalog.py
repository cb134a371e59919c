"""The backup catalog in S3 (moto) and its cache in the `backups` table (the real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from devstack.stack import BACKUP_BUCKET


@pytest.fixture
def catalog(local_stack):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from include.backup.catalog import BackupCatalog

    s3 = S3Hook(aws_conn_id="aws_default").get_conn()
    return BackupCatalog(s3, BACKUP_BUCKET, f"test-catalog/{uuid.uuid4().hex}")


def entry(backup_id: int, status: str, catalog, **fields):
    from include.backup.catalog import CatalogEntry

    e = CatalogEntry(
        backup_id,
        status,
        location=catalog.new_location(backup_id),
        database_name="app",
        started_at=datetime.now(UTC),
        **fields,
    )
    catalog.put(e)
    return e


def rows(dsn: str) -> dict[int, tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, status, location FROM backups ORDER BY id")
        found = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    return found


def test_entries_round_trip_and_the_newest_verified_is_picked(catalog):
    from include.backup import BackupError

    now = datetime.now(UTC)
    entry(1, "verified", catalog, verified_at=now - timedelta(days=2), manifest={"toc.dat": "a" * 64})
    entry(2, "verified", catalog, verified_at=now - timedelta(days=1), manifest={"toc.dat": "b" * 64})
    entry(3, "failed", catalog, error="pg_dump failed")
    assert [e.id for e in catalog.entries()] == [1, 2, 3]
    assert catalog.get().id == 2 and catalog.get(3).error == "pg_dump failed"
    assert catalog.get(1).manifest == {"toc.dat": "a" * 64}
    assert catalog.read(catalog.get(2).location).verified_at == catalog.get(2).verified_at
    assert catalog.read(catalog.new_location(9)) is None
    with pytest.raises(BackupError, match="no backup with id 9"):
        catalog.get(9)


def test_a_folder_is_never_reused_and_an_occupied_one_is_refused(catalog):
    from include.backup import BackupError

    now = datetime(2026, 12, 5, tzinfo=UTC)
    location = catalog.new_location(7, now=now, token="deadbeef")
    assert location.endswith("/20261205T000000Z-7-deadbeef/")
    assert catalog.new_location(7, now=now) != location  # a random token each time
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    catalog.s3.put_object(Bucket=bucket, Key=f"{prefix}toc.dat", Body=b"x")
    with pytest.raises(BackupError, match="already holds objects; refusing to upload into it"):
        catalog.new_location(7, now=now, token="deadbeef")


def test_reconcile_brings_back_what_a_restore_rolled_back_and_moves_the_ids_past_it(catalog, app_dsn):
    """After a restore, the table knows only the backups up to the restored one and its id
    sequence is back there: the next backup would reuse an id (and, before folders were unique,
    overwrite the newer backup's files)."""
    from include.backup.catalog import catalog_start, reconcile

    now = datetime.now(UTC)
    for backup_id in (1, 2, 3):
        entry(backup_id, "verified", catalog, verified_at=now - timedelta(hours=4 - backup_id))
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:  # the restored table: backup 1 only
        cur.execute(
            "INSERT INTO backups (id, database_name, status, verified_at, location) OVERRIDING SYSTEM VALUE "
            "VALUES (1, 'app', 'uploaded', NULL, %s)",
            (catalog.get(1).location,),
        )
        assert reconcile(cur, catalog.entries()) == {"inserted": 2, "updated": 1, "unchanged": 0}
        assert reconcile(cur, catalog.entries()) == {"inserted": 0, "updated": 0, "unchanged": 3}
        assert catalog_start(cur, "app") == 4, "the next id is past every id the bucket issued"
    conn.close()
    assert {k: v[0] for k, v in rows(app_dsn).items()} == {
        1: "verified",
        2: "verified",
        3: "verified",
        4: "running",
    }


def test_deleting_a_backups_files_keeps_its_catalog_entry(catalog):
    e = entry(5, "verified", catalog, verified_at=datetime.now(UTC))
    bucket, prefix = e.location.removeprefix("s3://").split("/", 1)
    for name in ("toc.dat", "1234.dat.gz", "manifest.json"):
        catalog.s3.put_object(Bucket=bucket, Key=f"{prefix}{name}", Body=b"x")
    assert catalog.delete_files(e) == 3
    left = [o["Key"] for o in catalog.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert left == [f"{prefix}catalog.json"]


def test_recovery_events_are_kept_newest_first(catalog):
    for n in range(3):
        catalog.record_event({"event": "restore", "n": n})
    assert [e["n"] for e in catalog.events()] == [2, 1, 0]
    assert catalog.entries() == [], "events are not backups"
