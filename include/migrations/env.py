"""Alembic environment: runs revisions on the DSN given by the caller, or prints them (--sql).

Each revision runs in its own transaction (a revision may also step outside it, for
CREATE INDEX CONCURRENTLY), after the session's lock and statement timeouts are set. In that
transaction, after an upgrade, the checksum of its file is recorded and the task workers' role
gets its grants on the tables that now exist (include.migrations.db_roles), so a new table is
never there without them.
"""

from __future__ import annotations

from alembic import context

from include.migrations import BOOKKEEPING_DDL, Settings, file_sha256

config = context.config
dsn = config.attributes.get("dsn", "")
settings: Settings = config.attributes.get("settings") or Settings()


def after_revision(ctx, step, heads, run_args) -> None:
    """Keep migration_checksums in step with alembic_version, and the workers' grants current,
    in the revision's transaction."""
    from include.migrations.db_roles import grant_worker_privileges

    revision = step.up_revision_id
    if step.is_upgrade:
        ctx.connection.exec_driver_sql(
            "INSERT INTO migration_checksums (revision, sha256) VALUES (%s, %s) "
            "ON CONFLICT (revision) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
            (revision, file_sha256(step.up_revision.path)),
        )
        with ctx.connection.connection.cursor() as cur:  # the same connection and transaction
            grant_worker_privileges(cur)
    else:
        ctx.connection.exec_driver_sql("DELETE FROM migration_checksums WHERE revision = %s", (revision,))


if context.is_offline_mode():
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        transactional_ddl=True,
        transaction_per_migration=True,
    )
    context.execute(settings.session_sql())
    with context.begin_transaction():
        context.run_migrations()
else:
    import psycopg2
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(
        "postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn), poolclass=NullPool
    )
    with engine.connect() as connection:
        connection.exec_driver_sql(settings.session_sql())  # session-wide: survives each COMMIT
        connection.exec_driver_sql(BOOKKEEPING_DDL)
        connection.commit()
        context.configure(
            connection=connection,
            transactional_ddl=True,
            transaction_per_migration=True,
            on_version_apply=after_revision,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
