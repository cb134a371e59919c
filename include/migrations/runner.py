"""Applying revisions safely: bounded lock waits, retries with backoff, no half-applied schema.

`apply` upgrades one revision at a time. A lock timeout is retried with exponential backoff
`Settings.lock_retries` times; then the run stops with `MigrationLocked`, which names the
sessions that held it up (pid, user, how long their transaction has been open, query). Any
failure part-way through a revision (revisions may commit steps of their own, e.g. a backfill
or a concurrent index) is undone by that revision's downgrade, whose steps tolerate a partial
upgrade, so the schema ends exactly as it started. The undo runs the downgrade's steps without
touching ``alembic_version``: nothing is stamped until the schema is whole again. An undo that
fails raises ``UndoFailed``, which must not be retried: the schema is then part-way through a
revision that ``alembic_version`` does not name, and only a person can decide what to do.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from include.migrations import BOOKKEEPING_TABLES, Settings, current, downgrade, pending, upgrade

logger = logging.getLogger(__name__)

LOCK_NOT_AVAILABLE = "55P03"


class MigrationError(RuntimeError):
    """A revision could not be applied; the schema was left as it was before it."""


class UndoFailed(MigrationError):
    """A revision stopped part-way and undoing it failed too: the schema is half-applied."""

    def __init__(self, revision: str, reason: str):
        self.revision = revision
        super().__init__(
            f"revision {revision} stopped part-way and undoing it failed ({reason}); the schema holds "
            f"part of {revision} while alembic_version does not name it: resolve it by hand"
        )


@dataclass(frozen=True)
class Blocker:
    pid: int
    user: str
    state: str
    transaction_seconds: float
    query: str

    def __str__(self) -> str:
        return (
            f"pid {self.pid} ({self.user}, {self.state}, transaction open {self.transaction_seconds:.1f} s): "
            f"{self.query}"
        )


class MigrationLocked(MigrationError):
    def __init__(self, revision: str, attempts: int, blockers: list[Blocker]):
        self.revision, self.attempts, self.blockers = revision, attempts, blockers
        named = "; ".join(str(b) for b in blockers) or "no blocking session is left"
        super().__init__(f"revision {revision} gave up after {attempts} lock timeouts; blocked by {named}")


def _is_lock_timeout(exc: BaseException) -> bool:
    while exc is not None:
        if getattr(exc, "pgcode", None) == LOCK_NOT_AVAILABLE:
            return True
        exc = exc.__cause__ or getattr(exc, "orig", None)
    return False


def blockers(dsn: str, older_than_s: float = 0.0) -> list[Blocker]:
    """Other sessions of this database inside a transaction older than `older_than_s`: the
    only ones that can hold a lock (or, for a concurrent index build, a snapshot) we wait on."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """
            SELECT pid, coalesce(usename, ''), coalesce(state, ''),
                   extract(epoch FROM clock_timestamp() - xact_start)::float8, left(query, 200)
              FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND xact_start IS NOT NULL
               AND xact_start < clock_timestamp() - make_interval(secs => %s)
             ORDER BY xact_start
            """,
            (older_than_s,),
        )
        rows = cur.fetchall()
    conn.close()
    return [Blocker(*row) for row in rows]


def schema_signature(dsn: str) -> str:
    """A cheap fingerprint of the public schema's catalog (columns, constraints, indexes),
    leaving out the runner's own bookkeeping tables, which every run may touch."""
    tables = table_signatures(dsn)
    return hashlib.md5("\n".join(f"{t} {sig}" for t, sig in sorted(tables.items())).encode()).hexdigest()


def table_signatures(dsn: str) -> dict[str, str]:
    """Each public table's (or view's) catalog fingerprint: its columns, constraints and indexes.
    Two of them name the tables a revision changed (db_migrate reports them as lineage)."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """
            SELECT tbl, md5(string_agg(item, E'\n' ORDER BY item)) FROM (
                SELECT c.relname AS tbl, format('col %%s %%s %%s', a.attname,
                              format_type(a.atttypid, a.atttypmod), a.attnotnull) AS item
                  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
                   AND a.attnum > 0 AND NOT a.attisdropped
                UNION ALL
                SELECT conrelid::regclass::text, format('con %%s %%s %%s', conname, convalidated,
                                                        pg_get_constraintdef(oid))
                  FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
                UNION ALL
                SELECT indrelid::regclass::text, format('idx %%s', pg_get_indexdef(indexrelid))
                  FROM pg_index JOIN pg_class c ON c.oid = indexrelid
                 WHERE c.relnamespace = 'public'::regnamespace
            ) catalog
            WHERE tbl <> ALL (%(own)s)
            GROUP BY tbl
            """,
            {"own": list(BOOKKEEPING_TABLES)},
        )
        signatures = dict(cur.fetchall())
    conn.close()
    return signatures


def changed_tables(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The tables added, dropped or altered between two `table_signatures`."""
    return sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t))


def apply(
    dsn: str,
    target: str = "head",
    settings: Settings | None = None,
    *,
    on_retry: Callable[[str, int, Exception], None] | None = None,
) -> list[str]:
    """Upgrade to `target` one revision at a time; returns the revisions applied."""
    settings = settings or Settings()
    applied = []
    for revision in pending(dsn, target, settings=settings):
        _apply_one(dsn, revision.revision, revision.down_revision, settings, on_retry)
        applied.append(revision.revision)
    return applied


def _apply_one(dsn: str, revision: str, down: str | None, settings: Settings, on_retry) -> None:
    for attempt in range(1, settings.lock_retries + 2):
        before = schema_signature(dsn)
        try:
            upgrade(dsn, revision, settings=settings)
            return
        except Exception as exc:
            held_up = blockers(dsn, settings.lock_timeout_ms / 1000) if _is_lock_timeout(exc) else None
            _undo_partial(dsn, revision, down, before, settings)
            if held_up is None:
                raise MigrationError(f"revision {revision} failed and was undone: {exc}") from exc
            if attempt > settings.lock_retries:
                raise MigrationLocked(revision, attempt, held_up) from exc
            delay = settings.retry_backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "revision %s hit the lock timeout (attempt %d); retrying in %.1f s; blockers: %s",
                revision,
                attempt,
                delay,
                "; ".join(map(str, held_up)) or "gone",
            )
            if on_retry:
                on_retry(revision, attempt, exc)
            time.sleep(delay)


def _undo_partial(dsn: str, revision: str, down: str | None, before: str, settings: Settings) -> None:
    """Run the revision's downgrade over whatever part of it committed (nothing if none did),
    and check that the schema is as before; ``UndoFailed`` otherwise."""
    if schema_signature(dsn) == before and current(dsn) == down:
        return
    logger.warning("revision %s stopped part-way; undoing what it committed", revision)
    try:
        if current(dsn) == revision:  # it was stamped: the failure came after its last step
            downgrade(dsn, down or "base", settings=settings)
        else:
            run_downgrade_steps(dsn, revision, settings)
    except Exception as exc:
        raise UndoFailed(revision, f"{type(exc).__name__}: {str(exc).strip()}") from exc
    if (after := schema_signature(dsn)) != before or current(dsn) != down:
        raise UndoFailed(revision, f"the schema after the undo differs from before it ({after} != {before})")


def run_downgrade_steps(dsn: str, revision: str, settings: Settings) -> None:
    """The revision's ``downgrade()``, run with the migration's session settings, leaving
    ``alembic_version`` and ``migration_checksums`` as they are."""
    import psycopg2
    from alembic.operations import Operations
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from include.migrations import alembic_config

    config = alembic_config(dsn, settings)
    scripts = ScriptDirectory.from_config(config)
    module = scripts.get_revision(revision).module
    engine = create_engine(
        "postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn), poolclass=NullPool
    )
    try:
        with EnvironmentContext(config, scripts) as env, engine.connect() as connection:
            connection.exec_driver_sql(settings.session_sql())
            connection.commit()
            env.configure(connection=connection, transactional_ddl=True)
            context = env.get_context()
            with Operations.context(context), context.begin_transaction():
                module.downgrade()
    finally:
        engine.dispose()


class RehearsalFailed(MigrationError):
    """The rehearsal on a clone found a problem: production must not be touched."""


def schema_dump(dsn: str) -> str:
    from include.backup.pg_programs import schema_text, start_schema_dump

    return schema_text(start_schema_dump(dsn))


def _diff(a: str, b: str, names: tuple[str, str]) -> str:
    import difflib

    lines = difflib.unified_diff(a.splitlines(), b.splitlines(), *names, lineterm="", n=1)
    return "\n".join(list(lines)[:40])


def rehearse(dsn: str, target: str = "head", settings: Settings | None = None) -> dict:
    """On a clone (never production): upgrade, smoke-check, downgrade, upgrade again; the
    downgrade must give back the original schema and the second upgrade the first one's."""
    import psycopg2

    from include.migrations.smoke import fingerprint, smoke_check

    settings = settings or Settings()
    start = current(dsn)
    original = schema_dump(dsn)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        before = fingerprint(cur)
    conn.close()
    applied = apply(dsn, target, settings)
    if not applied:
        return {"from": start, "applied": [], "problems": []}
    problems = smoke_check(dsn, before, exact=True)
    upgraded = schema_dump(dsn)
    downgrade(dsn, start or "base", settings=settings)
    if (reverted := schema_dump(dsn)) != original:
        problems.append(
            "the downgrade does not restore the original schema:\n"
            + _diff(original, reverted, ("before", "after downgrade"))
        )
    apply(dsn, target, settings)
    if (again := schema_dump(dsn)) != upgraded:
        problems.append(
            "upgrade, downgrade, upgrade differs from a straight upgrade:\n"
            + _diff(upgraded, again, ("first upgrade", "second upgrade"))
        )
    problems += smoke_check(dsn, before, exact=True)
    if problems:
        raise RehearsalFailed(f"rehearsal of {start} -> {target} failed: " + "; ".join(problems))
    return {"from": start, "applied": applied, "problems": []}
