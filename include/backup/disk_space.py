"""Whether a restore fits on the database server's disk, and what can be measured of that.

What PostgreSQL tells through SQL: how much each database takes (`pg_database_size`, for the
databases the role may connect to) and how large a new, empty database starts (its template's
size). What it does not tell: how much of the disk is free. No SQL function reports a file
system's free space (that takes a shell on the server, or the provider's metrics, such as RDS's
`FreeStorageSpace`), and the WAL, temporary files, server logs and whatever else lives on the
volume are not counted in any database's size.

So the free space comes from one of two documented settings, environment variables of the
workers (not `app_db` extras: the postgres provider's hook hands every extra it does not know to
libpq, which refuses the connection):

- `APP_DB_DISK_FREE_PATH`: a folder on the server's data volume, when the server runs on the same
  machine as the task (the local stack): the free space is measured there (`statvfs`), exactly;
- `APP_DB_DISK_BYTES`: the size of the server's data volume (production: the allocated storage):
  the free space is estimated as that minus the size of every database SQL can measure, which
  overstates it by what SQL cannot see; the margin is there for that.

A restore is refused when the free space left after it would fall below `RESTORE_DISK_MARGIN` of
the disk (the variable `RESTORE_DISK_MARGIN` may change it), or when neither setting says how
large the disk is: a restore with no limit is how a server's disk fills. The restore's size is
estimated from its catalog entry: the dump's size times `RESTORE_EXPANSION`, or, for an entry
without one, its row counts times `ROW_BYTES`, plus an empty database's size.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Bytes of restored database per byte of dump: a gzip:1 directory-format dump of the demo data
# restored to about 8 times its size (tables, their indexes rebuilt, TOAST); 10 leaves headroom.
RESTORE_EXPANSION = 10
ROW_BYTES = 500  # per row of expected.json's counts, for an entry without its dump's size
RESTORE_DISK_MARGIN = 0.15  # of the disk, free after the restore: WAL, temporary files, error
DISK_FREE_PATH, DISK_BYTES, MARGIN = "APP_DB_DISK_FREE_PATH", "APP_DB_DISK_BYTES", "RESTORE_DISK_MARGIN"

DATABASES_SQL = """
SELECT coalesce(sum(CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END), 0),
       coalesce(array_agg(datname ORDER BY datname) FILTER (WHERE NOT has_database_privilege(oid, 'CONNECT')),
                '{}'),
       (SELECT pg_database_size('template1'))
FROM pg_database WHERE datallowconn
"""


@dataclass(frozen=True)
class DiskSpace:
    """What is known of the server's disk: its size and free bytes, and how they were found."""

    disk_bytes: int
    free_bytes: int
    empty_database_bytes: int
    how: str


def measure(cur, settings: Mapping[str, str]) -> DiskSpace | None:
    """The server's disk as `settings` (the environment: `APP_DB_DISK_FREE_PATH`,
    `APP_DB_DISK_BYTES`) let it be known, through `cur` (a session on the server); None when
    neither says how large it is."""
    cur.execute(DATABASES_SQL)
    used, unmeasured, empty = cur.fetchone()
    if path := settings.get(DISK_FREE_PATH):
        usage = shutil.disk_usage(path)
        return DiskSpace(usage.total, usage.free, int(empty), f"free space measured at {path}")
    if disk := settings.get(DISK_BYTES):
        disk = int(disk)
        not_counted = f"; not counted: {', '.join(unmeasured)}" if unmeasured else ""
        how = f"{DISK_BYTES} {disk} minus the databases' {int(used)} bytes (pg_database_size){not_counted}"
        return DiskSpace(disk, disk - int(used), int(empty), how)
    return None


def restore_estimate(
    size_bytes: int | None, expected: dict[str, Any] | None, empty_database_bytes: int
) -> int:
    """The bytes a restore of a backup will take on the server (see RESTORE_EXPANSION)."""
    if size_bytes:
        data = int(size_bytes) * RESTORE_EXPANSION
    else:
        data = sum((expected or {}).get("row_counts", {}).values()) * ROW_BYTES
    return data + empty_database_bytes


def refusal(estimate: int, space: DiskSpace | None, margin: float = RESTORE_DISK_MARGIN) -> str | None:
    """Why the restore must not run (its size against the disk), or None when it fits."""
    if space is None:
        return (
            "the database server's free space cannot be measured through SQL, and nothing says how large "
            f"its disk is: set {DISK_BYTES} (the data volume's size) or {DISK_FREE_PATH} (a folder on "
            "that volume, when the server runs on this machine) in the workers' environment"
        )
    keep = int(space.disk_bytes * margin)
    if space.free_bytes - estimate < keep:
        return (
            f"a restore of about {estimate} bytes would leave {space.free_bytes - estimate} of the disk's "
            f"{space.disk_bytes} bytes free, under the {margin:.0%} margin ({keep} bytes) ({space.how})"
        )
    return None
