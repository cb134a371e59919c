"""The app database's schema as versioned, reversible Alembic revisions written in plain SQL.

Call these with a libpq DSN; the Airflow side gets one from the `app_db` connection.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def _config(dsn: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["dsn"] = dsn
    return config


def upgrade(dsn: str, revision: str = "head", *, sql: bool = False) -> None:
    from alembic import command

    command.upgrade(_config(dsn), revision, sql=sql)


def downgrade(dsn: str, revision: str) -> None:
    from alembic import command

    command.downgrade(_config(dsn), revision)


def current(dsn: str) -> str | None:
    """The applied revision, or None for a database that has never been migrated."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT version_num FROM alembic_version")
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None
