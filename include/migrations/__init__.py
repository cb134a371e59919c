"""The app database's schema as versioned, reversible Alembic revisions written in plain SQL.

Call these with a libpq DSN; the Airflow side gets one from the `app_db` connection.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
# The schema as it stood before the ai_model fix: where a new environment starts, so that
# every later revision goes through the db_migrate DAG (backup, rehearsal, approval).
BASELINE_REVISION = "0001"


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
    return make_dsn(host=conn.get("host"), port=conn.get("port"), dbname=conn.get("schema"),
                    user=conn.get("login"), password=conn.get("password"))  # fmt: skip
