"""Alembic environment: runs revisions on the DSN given by the caller, or prints them (--sql)."""

from __future__ import annotations

from alembic import context

config = context.config
dsn = config.attributes.get("dsn", "")

if context.is_offline_mode():
    context.configure(dialect_name="postgresql", literal_binds=True, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    import psycopg2
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(dsn), poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
