"""The ``backups`` catalog (one row per backup: its status, location, manifest and verification)
and retention."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.backup import BackupError

if TYPE_CHECKING:
    from include.backup.archive import Dump


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
        (
            result.size_bytes,
            location,
            json.dumps(result.manifest),
            result.server_version,
            backup_id,
        ),
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


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    status: str
    location: str | None
    manifest: dict[str, str] | None
    verified_at: object | None


def catalog_get(cur, backup_id: int | None = None) -> CatalogEntry:
    """One backup by id, or the newest verified one; the error says which was not found."""
    where, args = ("id = %s", (backup_id,)) if backup_id is not None else ("status = 'verified'", ())
    cur.execute(
        f"SELECT id, status, location, manifest, verified_at FROM backups WHERE {where} "  # noqa: S608 (fixed clauses)
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
