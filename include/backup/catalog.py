"""The catalog of backups: in S3 beside each backup (the source of truth, which survives the
database it describes), and in the ``backups`` table (a cache of it, reconciled from S3); and
retention.

Each backup lives in a folder of its own, ``<root>/<UTC time>-<id>-<random>/``, never reused:
after a restore rolls the table's id sequence back, the next backup still gets a new folder, and
an upload into a folder that holds anything is refused. The folder's ``catalog.json`` is
rewritten after each step (running, uploaded, verified or failed, deleted) and carries what a
restore needs without the database: the manifest's SHA-256s, the server version and what the
restore must reproduce. Recovery events (restores, swaps, approvals, undos) are kept under
``<root>/_events/``, where a restore of the database cannot roll them back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.backup import BackupError

if TYPE_CHECKING:
    from include.backup.archive import Dump

CATALOG_FILE = "catalog.json"
EVENTS_FOLDER = "_events/"
STATUSES = ("running", "uploaded", "verified", "failed", "deleted")


@dataclass
class CatalogEntry:
    """One backup, as both catalogs record it."""

    id: int
    status: str
    location: str | None = None  # s3://bucket/root/folder/
    manifest: dict[str, str] | None = None
    verified_at: datetime | None = None
    database_name: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    size_bytes: int | None = None
    server_version: str | None = None
    restore_seconds: float | None = None
    error: str | None = None
    expected: dict[str, Any] | None = field(default=None, repr=False)  # what a restore reproduces

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=_iso, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CatalogEntry:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        for name in ("verified_at", "started_at", "finished_at"):
            if data.get(name):
                data[name] = datetime.fromisoformat(data[name])
        return cls(**{k: v for k, v in data.items() if k in known})


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot record {type(value).__name__} {value!r} in the catalog")


def split_location(location: str) -> tuple[str, str]:
    """(bucket, key prefix) of an ``s3://bucket/prefix/`` location."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return bucket, prefix


class BackupCatalog:
    """The S3 side of the catalog, under ``s3://<bucket>/<root>/``, through a boto3 S3 client."""

    def __init__(self, s3: Any, bucket: str, root: str = "backups") -> None:
        self.s3 = s3
        self.bucket = bucket
        self.root = root.strip("/") + "/"

    def new_location(self, backup_id: int, now: datetime | None = None, token: str | None = None) -> str:
        """A folder no backup ever had (time, id and a random token), refusing one that holds anything."""
        now = now or datetime.now(UTC)
        prefix = f"{self.root}{now:%Y%m%dT%H%M%SZ}-{backup_id}-{token or uuid.uuid4().hex[:8]}/"
        if self.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"):
            raise BackupError(
                f"s3://{self.bucket}/{prefix} already holds objects; refusing to upload into it"
            )
        return f"s3://{self.bucket}/{prefix}"

    def put(self, entry: CatalogEntry) -> None:
        """Write (or rewrite) the entry's catalog.json in its folder."""
        if not entry.location:
            raise BackupError(f"backup {entry.id} has no S3 location to keep its catalog entry in")
        bucket, prefix = split_location(entry.location)
        self.s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}{CATALOG_FILE}",
            Body=entry.to_json().encode(),
            ContentType="application/json",
        )

    def _keys(self, prefix: str) -> Iterator[str]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            yield from (item["Key"] for item in page.get("Contents", ()))

    def entries(self) -> list[CatalogEntry]:
        """Every backup the bucket knows of, oldest id first."""
        found = []
        for key in self._keys(self.root):
            if key.endswith(f"/{CATALOG_FILE}"):
                body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                found.append(CatalogEntry.from_json(body))
        return sorted(found, key=lambda e: e.id)

    def get(self, backup_id: int | None = None) -> CatalogEntry:
        """One backup by id, or the newest verified one; ``BackupError`` naming what is missing."""
        return pick(self.entries(), backup_id)

    def read(self, location: str) -> CatalogEntry | None:
        """The entry kept in the folder at `location`; None when there is none (a backup made
        before the catalog moved to S3)."""
        bucket, prefix = split_location(location)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=f"{prefix}{CATALOG_FILE}")["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return CatalogEntry.from_json(body)

    def delete_files(self, entry: CatalogEntry) -> int:
        """Delete a backup's files, keeping its catalog entry (retention marks it ``deleted``, so
        the bucket still accounts for every id it issued); returns how many were deleted."""
        bucket, prefix = split_location(entry.location)
        keys = [k for k in self._keys(prefix) if not k.endswith(f"/{CATALOG_FILE}")]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=bucket, Delete={"Objects": batch})
        return len(keys)

    def record_event(self, event: dict[str, Any]) -> str:
        """Keep a recovery event (JSON) where a restore of the database cannot roll it back."""
        key = f"{self.root}{EVENTS_FOLDER}{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}.json"
        body = json.dumps(event, default=str, sort_keys=True).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        return f"s3://{self.bucket}/{key}"

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest recovery events, newest first."""
        keys = sorted(self._keys(f"{self.root}{EVENTS_FOLDER}"), reverse=True)[:limit]
        return [json.loads(self.s3.get_object(Bucket=self.bucket, Key=k)["Body"].read()) for k in keys]


def pick(entries: list[CatalogEntry], backup_id: int | None) -> CatalogEntry:
    """The entry `backup_id`, or the newest verified one; the error says what was missing."""
    if backup_id is not None:
        match = [e for e in entries if e.id == backup_id]
        if not match:
            raise BackupError(f"no backup with id {backup_id} in the catalog")
        return match[0]
    verified = [e for e in entries if e.status == "verified"]
    if not verified:
        raise BackupError("no verified backup exists in the catalog")
    return max(verified, key=lambda e: (e.verified_at, e.id))


# --- the table: a cache of the bucket ---------------------------------------------------------

_COLUMNS = (
    "id, status, location, manifest, verified_at, database_name, started_at, finished_at, "
    "size_bytes, server_version, restore_seconds, error"
)


def reconcile(cur, entries: list[CatalogEntry]) -> dict[str, int]:
    """Make the ``backups`` table agree with the bucket: rows the bucket knows better are
    written, missing ones inserted (with their own ids), and the id sequence moved past every id
    the bucket has ever issued, so no id (and no folder) is issued twice. Rows the bucket does not
    know (written before the catalog moved to S3) are left as they are."""
    counts = {"inserted": 0, "updated": 0, "unchanged": 0}
    for e in entries:
        manifest = json.dumps(e.manifest) if e.manifest is not None else None
        started = e.started_at or datetime.now(UTC)
        values = (
            e.id,
            e.status,
            e.location,
            manifest,
            e.verified_at,
            e.database_name,
            started,
            e.finished_at,
            e.size_bytes,
            e.server_version,
            e.restore_seconds,
            e.error,
        )
        cur.execute(
            f"""
            INSERT INTO backups ({_COLUMNS}) OVERRIDING SYSTEM VALUE
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, location = EXCLUDED.location,
                manifest = EXCLUDED.manifest, verified_at = EXCLUDED.verified_at,
                database_name = EXCLUDED.database_name, started_at = EXCLUDED.started_at,
                finished_at = EXCLUDED.finished_at, size_bytes = EXCLUDED.size_bytes,
                server_version = EXCLUDED.server_version, restore_seconds = EXCLUDED.restore_seconds,
                error = EXCLUDED.error
            WHERE (backups.status, backups.location, backups.verified_at)
                IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.location, EXCLUDED.verified_at)
            RETURNING (xmax = 0)
            """,  # noqa: S608 (a module constant)
            values,
        )
        row = cur.fetchone()
        counts["unchanged" if row is None else "inserted" if row[0] else "updated"] += 1
    cur.execute(
        "SELECT setval(pg_get_serial_sequence('backups', 'id'), greatest(max(id), %s)) FROM backups",
        (max((e.id for e in entries), default=1),),
    )
    return counts


def catalog_start(cur, database: str) -> int:
    cur.execute("INSERT INTO backups (database_name) VALUES (%s) RETURNING id", (database,))
    return cur.fetchone()[0]


def catalog_uploaded(cur, backup_id: int, result: Dump, location: str) -> None:
    cur.execute(
        """
        UPDATE backups SET status = 'uploaded', finished_at = now(), size_bytes = %s, location = %s,
               manifest = %s, server_version = %s
        WHERE id = %s AND status = 'running'
        """,
        (result.size_bytes, location, json.dumps(result.manifest), result.server_version, backup_id),
    )
    if cur.rowcount != 1:
        raise BackupError(f"backup {backup_id} is not running; it cannot be marked uploaded")


def catalog_failed(cur, backup_id: int, error: str) -> None:
    """A failed backup never becomes verified; a verified one is never marked failed."""
    cur.execute(
        "UPDATE backups SET status = 'failed', finished_at = now(), error = %s "
        "WHERE id = %s AND status IN ('running', 'uploaded')",
        (error[:2000], backup_id),
    )


def catalog_verified(cur, backup_id: int, restore_seconds: float) -> None:
    cur.execute(
        "UPDATE backups SET status = 'verified', verified_at = now(), restore_seconds = %s "
        "WHERE id = %s AND status = 'uploaded'",
        (restore_seconds, backup_id),
    )
    if cur.rowcount != 1:
        raise BackupError(f"backup {backup_id} is not uploaded; it cannot be marked verified")


def catalog_get(cur, backup_id: int | None = None) -> CatalogEntry:
    """One backup by id, or the newest verified one, from the table; the error says which was
    not found."""
    where, args = ("id = %s", (backup_id,)) if backup_id is not None else ("status = 'verified'", ())
    cur.execute(
        f"SELECT {_COLUMNS} FROM backups WHERE {where} "  # noqa: S608 (fixed clauses)
        "ORDER BY verified_at DESC NULLS LAST, id DESC LIMIT 1",
        args,
    )
    row = cur.fetchone()
    if row is None:
        raise BackupError(
            f"no backup with id {backup_id}" if backup_id is not None else "no verified backup exists"
        )
    return CatalogEntry(*row)


def plan_retention(
    verified: list[tuple[int, object]],
    *,
    keep_daily: int,
    keep_weekly: int,
    protected: frozenset[int] = frozenset(),
) -> list[int]:
    """Ids of verified backups to delete: keep the newest of each of the last `keep_daily` days
    and of the last `keep_weekly` ISO weeks, the newest overall, and every protected id (a
    pending migration's rollback point). `verified` is (id, verified_at) pairs."""
    newest_first = sorted(verified, key=lambda r: (r[1], r[0]), reverse=True)
    keep = set(protected)
    if newest_first:
        keep.add(newest_first[0][0])
    days: dict[object, int] = {}
    weeks: dict[tuple[int, int], int] = {}
    for backup_id, at in newest_first:
        days.setdefault(at.date(), backup_id)
        weeks.setdefault(at.isocalendar()[:2], backup_id)
    keep.update(list(days.values())[:keep_daily])
    keep.update(list(weeks.values())[:keep_weekly])
    return sorted(backup_id for backup_id, _ in newest_first if backup_id not in keep)
