"""SQL from tests: one statement on a DSN, and databases made and dropped as the superuser."""

from __future__ import annotations

import psycopg2


def query(dsn: str, sql: str, params=None) -> list[tuple] | None:
    """Run one statement (committed); its rows, or None when it returns none."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else None
    conn.close()
    return rows


def as_superuser(server, statement: str) -> None:
    """A statement outside a transaction (CREATE or DROP DATABASE) on the server's `postgres`."""
    admin = psycopg2.connect(server.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(statement)
    admin.close()


def create_database(server, name: str, template: str | None = None) -> None:
    as_superuser(
        server, f'CREATE DATABASE "{name}" OWNER app' + (f' TEMPLATE "{template}"' if template else "")
    )


def drop_database(server, name: str) -> None:
    as_superuser(server, f'DROP DATABASE "{name}" WITH (FORCE)')


def notified(conn, settle: float = 0.3) -> list[str]:
    """The payloads of the notifications a LISTENing psycopg2 connection receives until nothing
    more comes for `settle` seconds."""
    import select

    payloads = []
    while select.select([conn], [], [], settle)[0]:
        conn.poll()
        payloads += [n.payload for n in conn.notifies]
        conn.notifies.clear()
    return payloads
