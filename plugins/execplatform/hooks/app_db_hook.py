"""The app database (`app_db`): the one way every task, operator and page reaches it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from include.ids import APP_DB

# the connection extras that are libpq parameters (everything else in extra is the provider's own)
LIBPQ_EXTRAS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "sslcompression",
        "connect_timeout",
        "application_name",
        "options",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "target_session_attrs",
        "gssencmode",
        "channel_binding",
    }
)


@contextmanager
def failing_hard_when_schema_is_behind() -> Iterator[None]:
    """Around work on the app database: a missing table or column the code uses (a migration is
    pending) fails the task now, naming what is missing. A retry cannot fix it, and each retry
    would alert again. Any other error passes through unchanged."""
    import psycopg2.errors
    from airflow.sdk.exceptions import AirflowFailException

    from include.execution.task_queue import SchemaBehindError

    try:
        yield
    except SchemaBehindError as error:  # its message names the revision
        raise AirflowFailException(str(error)) from error
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as error:
        missing = str(error).strip().splitlines()[0]
        raise AirflowFailException(
            f"the app database's schema is behind the code ({missing}): "
            "apply the pending revisions with the db_migrate DAG"
        ) from error


class AppDatabaseHook(PostgresHook):
    """
    The platform's PostgreSQL database, from a ``postgres`` connection (default ``app_db``).

    Built on the provider's :class:`PostgresHook`, so the connection's extras apply everywhere the
    project reaches the database: TLS (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``),
    ``application_name``, keepalives, and AWS or Azure IAM authentication (``iam``). The library
    takes libpq DSNs (``dsn()``), which carry the same settings, for the connections it opens
    itself (the queue, pg_dump and pg_restore, migrations).

    :param postgres_conn_id: the connection id.
    """

    default_conn_name = APP_DB
    hook_name = "App database (PostgreSQL)"

    def __init__(self, postgres_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(postgres_conn_id=postgres_conn_id, **kwargs)

    @property
    def database_name(self) -> str:
        """The database the connection names (its ``schema`` field)."""
        return self.database or self.connection.schema

    def dsn(self, dbname: str | None = None, *, options: str | None = None) -> str:
        """A libpq DSN for the connection, optionally to another database on its server; with
        IAM authentication the password is a fresh token. `options` (libpq's, such as ``-c
        role=...``) go after the connection's own ``options`` extra."""
        from psycopg2.extensions import make_dsn

        conn = self.connection
        login, password, port = conn.login, conn.password, conn.port
        if conn.extra_dejson.get("iam", False):
            login, password, port = self.get_iam_token(conn)
        params = {k: v for k, v in conn.extra_dejson.items() if k in LIBPQ_EXTRAS}
        if options:
            params["options"] = f"{params['options']} {options}" if params.get("options") else options
        return make_dsn(
            host=conn.host,
            port=port,
            dbname=dbname or self.database_name,
            user=login,
            password=password,
            **params,
        )

    def worker_dsn(self) -> str:
        """The DSN of the task workers' sessions (drains, the reaper, task_batch's metrics): the
        same connection, switched at connect to the DML-only role
        ``include.migrations.db_roles.WORKER_ROLE``, which cannot read payments, users or
        backups nor change the schema. The connection's login must be a member of that role
        (``python -m include.migrations.db_roles`` makes it one)."""
        from include.migrations.db_roles import WORKER_SESSION_OPTIONS

        return self.dsn(options=WORKER_SESSION_OPTIONS)

    @contextmanager
    def cursor(self, *, as_worker: bool = False) -> Iterator[Any]:
        """A cursor on the app database, committed and closed on exit (`as_worker`: in a session
        of the workers' role, ``worker_dsn()``). A missing table or column fails the task without
        retries (``failing_hard_when_schema_is_behind``)."""
        import psycopg2

        conn = psycopg2.connect(self.worker_dsn() if as_worker else self.dsn())
        try:
            with failing_hard_when_schema_is_behind(), conn, conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    def maintenance_dsn(self) -> str:
        """A DSN to the server's maintenance database (``postgres``, or the connection's
        ``maintenance_database`` extra): where databases are made, dropped, renamed and locked,
        whatever state the app database is in (even dropped)."""
        return self.dsn(self.connection.extra_dejson.get("maintenance_database", "postgres"))

    def database_exists(self, name: str) -> bool:
        from include.backup.database_swap import database_exists

        return database_exists(self.maintenance_dsn(), name)

    def schema_lock(self, holder: str, *, exclusive: bool, wait_seconds: float = 900.0):
        """Hold the lock that makes restores, migrations, backups and drains take turns (see
        ``include.migrations.schema_lock``); waits up to `wait_seconds`, then fails naming who
        holds it. A context manager."""
        from include.migrations.schema_lock import schema_lock

        return schema_lock(self.maintenance_dsn(), holder, exclusive=exclusive, wait_seconds=wait_seconds)

    def create_database(self, name: str) -> None:
        """A new, empty database `name` on the connection's server, owned by its role."""
        from include.backup.pg_programs import create_database

        create_database(self.maintenance_dsn(), name)

    def drop_database(self, name: str) -> None:
        """Drop `name` on the connection's server, ending its sessions first."""
        from include.backup.pg_programs import drop_database

        drop_database(self.maintenance_dsn(), name)
