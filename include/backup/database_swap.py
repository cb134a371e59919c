"""Putting a restored database in the live one's place in one short step, and keeping the old one.

The swap renames the live database aside (``<live>_pre_restore_<time>``) and the restored one to
the live name in one transaction, so at every moment the live name is either the old database,
whole, or the restored one, complete. Before it, new connections to the live database are
refused and the open ones ended (the role's own sessions; other roles' need ``pg_signal_backend``),
since PostgreSQL renames only a database no one is connected to. Everything runs on the server's
maintenance database, as the app database's owner (which needs CREATEDB).
"""

from __future__ import annotations

import logging
import time

from psycopg2 import sql

from include.backup import BackupError

logger = logging.getLogger(__name__)


def _connect(maintenance_dsn: str):
    import psycopg2

    conn = psycopg2.connect(maintenance_dsn)
    conn.autocommit = True
    return conn


def database_exists(maintenance_dsn: str, name: str) -> bool:
    conn = _connect(maintenance_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def _end_sessions(cur, name: str) -> int:
    cur.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    return cur.fetchone()[0]


def swap_in(maintenance_dsn: str, live: str, restored: str, keep_as: str, *, attempts: int = 10) -> None:
    """`restored` takes the name `live`; the old `live` is kept as `keep_as`. Raises
    ``BackupError`` with both databases as they were when the rename cannot be done."""
    import psycopg2.errors

    ident = sql.Identifier
    conn = _connect(maintenance_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(live)))
            try:
                for attempt in range(1, attempts + 1):
                    ended = _end_sessions(cur, live) + _end_sessions(cur, restored)
                    try:
                        cur.execute("BEGIN")
                        cur.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(live), ident(keep_as))
                        )
                        cur.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(restored), ident(live))
                        )
                        cur.execute("COMMIT")
                        break
                    except psycopg2.Error as error:
                        cur.execute("ROLLBACK")  # neither rename happened
                        if not isinstance(error, psycopg2.errors.ObjectInUse):
                            raise BackupError(
                                f"could not swap {restored!r} in for {live!r}: {str(error).strip()}; "
                                f"{live!r} is untouched"
                            ) from error
                        busy = error
                        logger.warning("swap attempt %d: %s (%d sessions ended)", attempt, busy, ended)
                        if attempt == attempts:
                            raise BackupError(
                                f"could not swap {restored!r} in for {live!r}: still in use after "
                                f"{attempts} attempts ({busy}); {live!r} is untouched"
                            ) from busy
                        time.sleep(0.2 * attempt)
            except BaseException:
                cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(live)))
                raise
            # the old database stays for an operator to inspect or drop
            cur.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(keep_as)))
    finally:
        conn.close()
    logger.info("%s is now the restored database; the previous one is kept as %s", live, keep_as)
