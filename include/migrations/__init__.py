"""The app database's schema as versioned, reversible Alembic revisions written in plain SQL.

Call these with a libpq DSN; the Airflow side gets one from the `app_db` connection. Every
session that runs a revision first sets `lock_timeout` and `statement_timeout` (`Settings`),
and the offline SQL (`--sql`) starts with the same two lines, so what a reviewer and squawk
read is what runs. Each applied revision's file SHA-256 is recorded in `migration_checksums`;
`changed_revisions` names any file edited after it was applied.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
# The schema as it stood before the ai_model fix: where a new environment starts, so that
# every later revision goes through the db_migrate DAG (backup, rehearsal, approval).
BASELINE_REVISION = "0001"
# Extra revision folders (os.pathsep-separated), for rehearsing revisions kept elsewhere.
EXTRA_VERSIONS_ENV = "MIGRATIONS_EXTRA_VERSIONS"

# The runner's own bookkeeping, next to alembic_version; not part of any revision.
BOOKKEEPING_TABLES = ("alembic_version", "migration_checksums", "migration_runs")
BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS migration_checksums (
    revision   text        PRIMARY KEY,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS migration_runs (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_run_id      text        NOT NULL,
    from_revision   text,
    target_revision text        NOT NULL,
    backup_id       bigint,
    status          text        NOT NULL DEFAULT 'planned',
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CONSTRAINT migration_runs_dag_run_key UNIQUE (dag_run_id)
);
-- added after the table first shipped (a revision whose undo failed, and who resolved it);
-- checked first, so that the usual run takes no lock on the table
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'migration_runs_status_known'
                   AND conrelid = 'migration_runs'::regclass) THEN
        ALTER TABLE migration_runs ADD COLUMN IF NOT EXISTS partial_revision text,
                                   ADD COLUMN IF NOT EXISTS resolved_by text;
        ALTER TABLE migration_runs DROP CONSTRAINT IF EXISTS migration_runs_status_check;
        ALTER TABLE migration_runs ADD CONSTRAINT migration_runs_status_known CHECK (status IN
            ('planned', 'rehearsed', 'applying', 'applied', 'completed', 'failed', 'rolled_back',
             'cancelled', 'undo_failed', 'resolved'));
    END IF;
END $$;
"""
# A run in this state left a revision half-applied: no migration may start until it is resolved.
UNDO_FAILED = "undo_failed"
# A migration run in these states still needs its backup as the way back.
PENDING_RUN_STATES = ("planned", "rehearsed", "applying", "applied")


@dataclass(frozen=True)
class Settings:
    """How a migration session behaves; every field is a db_migrate param."""

    lock_timeout_ms: int = 1000
    statement_timeout_ms: int = 300_000
    lock_retries: int = 3
    retry_backoff_s: float = 1.0
    backfill_batch_size: int = 10_000
    # a backfill's throttle (include.migrations.throttle): the batch size above is the first
    # batch's; later ones aim at this many seconds each (0: keep the size)
    backfill_target_batch_s: float = 0.1
    # while other sessions run statements, pause this many times each batch's duration
    backfill_nice_ratio: float = 9.0
    # the longest single pause (contention doubles the pause up to it)
    backfill_max_pause_s: float = 5.0
    # pauses add up to at most this; then the backfill finishes at full speed
    backfill_throttle_budget_s: float = 600.0
    extra_versions: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            p for p in os.environ.get(EXTRA_VERSIONS_ENV, "").split(os.pathsep) if p
        )
    )

    def session_sql(self) -> str:
        return (
            f"SET lock_timeout = '{int(self.lock_timeout_ms)}ms';\n"
            f"SET statement_timeout = '{int(self.statement_timeout_ms)}ms'"
        )


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    title: str
    path: str
    squawk_exceptions: dict[str, str]


def alembic_config(dsn: str, settings: Settings | None = None, output: io.StringIO | None = None):
    from alembic.config import Config

    settings = settings or Settings()
    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(HERE / "versions"), *settings.extra_versions])
    )
    config.attributes["dsn"] = dsn
    config.attributes["settings"] = settings
    return config


def _scripts(settings: Settings | None = None):
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("", settings))


def upgrade(dsn: str, revision: str = "head", *, sql: bool = False, settings: Settings | None = None) -> None:
    from alembic import command

    command.upgrade(alembic_config(dsn, settings), revision, sql=sql)


def downgrade(dsn: str, revision: str, *, settings: Settings | None = None) -> None:
    from alembic import command

    command.downgrade(alembic_config(dsn, settings), revision)


def stamp(dsn: str, revision: str, *, settings: Settings | None = None) -> None:
    from alembic import command

    command.stamp(alembic_config(dsn, settings), revision)


def offline_sql(revision: str, *, settings: Settings | None = None) -> str:
    """The exact SQL that upgrading from the revision's parent to it runs."""
    from alembic import command

    script = _scripts(settings).get_revision(revision)
    out = io.StringIO()
    span = f"{script.down_revision}:{revision}" if script.down_revision else revision
    command.upgrade(alembic_config("", settings, out), span, sql=True)
    return out.getvalue()


def heads(settings: Settings | None = None) -> list[str]:
    return list(_scripts(settings).get_heads())


def _revision(script) -> Revision:
    module = script.module
    return Revision(
        revision=script.revision,
        down_revision=script.down_revision,
        title=(script.doc or "").strip().splitlines()[0] if script.doc else script.revision,
        path=script.path,
        squawk_exceptions=dict(getattr(module, "squawk_exceptions", {})),
    )


def pending(dsn: str, target: str = "head", *, settings: Settings | None = None) -> list[Revision]:
    """The revisions an upgrade to `target` would run, oldest first."""
    return pending_after(current(dsn), target, settings=settings)


def pending_after(
    start: str | None, target: str = "head", *, settings: Settings | None = None
) -> list[Revision]:
    """The revisions from `start` (None: an empty database) up to `target`, oldest first."""
    scripts = _scripts(settings)
    if target != "head" and start is not None and scripts.get_revision(target) is not None:
        # a target at or below the current revision has nothing to upgrade
        ancestors = {s.revision for s in scripts.iterate_revisions(start, "base")}
        if target in ancestors:
            return []
    steps = list(scripts.iterate_revisions(target, start or "base"))
    return [_revision(s) for s in reversed(steps)]


def all_revisions(*, settings: Settings | None = None) -> list[Revision]:
    """Every revision, oldest first."""
    return [_revision(s) for s in reversed(list(_scripts(settings).walk_revisions()))]


def revision_info(revision: str, *, settings: Settings | None = None) -> Revision:
    return _revision(_scripts(settings).get_revision(revision))


def table_exists(cur, table: str) -> bool:
    """Whether the public schema has `table` yet (its revision may still be pending)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
    return cur.fetchone()[0]


def rollback_points(cur) -> frozenset[int]:
    """Backups that a migration run still in progress names as its way back."""
    if not table_exists(cur, "migration_runs"):
        return frozenset()
    cur.execute(
        "SELECT backup_id FROM migration_runs WHERE backup_id IS NOT NULL AND status = ANY(%s)",
        (list(PENDING_RUN_STATES),),
    )
    return frozenset(r[0] for r in cur.fetchall())


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def current(dsn: str) -> str | None:
    """The applied revision, or None for a database that has never been migrated."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        revision = current_revision(cur)
    conn.close()
    return revision


def current_revision(cur) -> str | None:
    if not table_exists(cur, "alembic_version"):
        return None
    cur.execute("SELECT version_num FROM alembic_version")
    row = cur.fetchone()
    return row[0] if row else None


def changed_revisions(dsn: str, *, settings: Settings | None = None) -> list[str]:
    """Applied revisions whose file differs from what was applied (or is gone), each named."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        problems = checksum_problems(cur, settings=settings)
    conn.close()
    return problems


def checksum_problems(cur, *, settings: Settings | None = None) -> list[str]:
    from alembic.util import CommandError

    cur.execute("SELECT to_regclass('public.migration_checksums') IS NOT NULL")
    if not cur.fetchone()[0]:
        return []
    cur.execute("SELECT revision, sha256 FROM migration_checksums ORDER BY revision")
    recorded = cur.fetchall()
    scripts = _scripts(settings)
    problems = []
    for revision, applied in recorded:
        try:
            script = scripts.get_revision(revision)
        except CommandError:
            script = None
        if script is None:
            problems.append(f"revision {revision} was applied but its file is gone")
        elif (now := file_sha256(script.path)) != applied:
            problems.append(
                f"revision {revision} ({Path(script.path).name}) changed after it was applied: "
                f"applied sha256 {applied}, file sha256 {now}"
            )
    return problems


def ensure_baseline(dsn: str) -> bool:
    """Bring a never-migrated database to the baseline; leave a versioned one alone."""
    if current(dsn) is not None:
        return False
    upgrade(dsn, BASELINE_REVISION)
    return True


def dsn_from_connection_json(value: str) -> str:
    """A libpq DSN from an `AIRFLOW_CONN_*` JSON value (conn_type postgres)."""
    import json

    from psycopg2.extensions import make_dsn

    conn = json.loads(value)
    return make_dsn(
        host=conn.get("host"),
        port=conn.get("port"),
        dbname=conn.get("schema"),
        user=conn.get("login"),
        password=conn.get("password"),
    )
