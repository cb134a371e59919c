"""Verified backups: parallel dump with a SHA-256 manifest, restore into a scratch database, compare.

A backup counts only once a real restore of it has been checked: same schema (schema-only dumps
equal), same row count in every table, same sequence values, same content checksum of the
critical tables. Everything here talks to PostgreSQL through its own client programs and a
libpq DSN, so it runs the same under Airflow, in tests and from a shell.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from include.backup import BackupError, ChecksumMismatch
from include.backup.pg_programs import (
    finish_client,
    libpq_env,
    pg_bin,
    run_client,
    schema_text,
    server_version,
    start_client,
    start_schema_dump,
)

MANIFEST = "manifest.json"
SCHEMA_FILE = "schema.sql"
EXPECTED_FILE = "expected.json"
CRITICAL_TABLES = ("execution_tasks", "payments", "offers", "model_versions", "backups")


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
            data_dump = start_client(
                [
                    pg_bin("pg_dump"),
                    "-Fd",
                    f"-j{jobs}",
                    f"-Z{compress}",
                    f"--snapshot={snapshot_id}",
                    "--no-password",
                    "-f",
                    str(folder),
                ],
                dsn,
            )
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


def restore(
    dsn: str, folder: Path, *, jobs: int = 2, clean: bool = False, tables: tuple[str, ...] = ()
) -> float:
    """Restore a directory-format dump into the database of `dsn` (empty, unless `clean`, which
    drops each object before recreating it); returns seconds. `tables` restores only those
    tables (definition and rows, no indexes or constraints): a sample that proves the data."""
    argv = [
        pg_bin("pg_restore"),
        f"-j{jobs}",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--no-password",
    ]
    if clean:
        argv += ["--clean", "--if-exists"]
    argv += [f"--table={table}" for table in tables]
    start = time.perf_counter()
    run_client([*argv, "-d", libpq_env(dsn)["PGDATABASE"], str(folder)], dsn, "pg_restore")
    return time.perf_counter() - start


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
        cur.execute(
            sql.SQL("SELECT count(*), coalesce(sum(hash_record_extended(t, 0)), 0)::text FROM {} t").format(
                name
            )
        )
    except (errors.UndefinedFunction, errors.FeatureNotSupported):
        cur.execute("ROLLBACK TO SAVEPOINT content_checksum")
        cur.execute(
            sql.SQL(
                "SELECT count(*), 'text:' || coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {} t"
            ).format(name)
        )
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
