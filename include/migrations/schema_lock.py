"""One writer of the app database's schema at a time.

Restores, migrations and backups never interleave, and drains do not run while a restore or a
migration holds the database. They all take one PostgreSQL advisory lock, in the server's
maintenance database (``postgres``), which exists whatever happens to the app database (a
restore may drop or rename it): migrations and the restore's swap take it exclusively, backups
and drains shared. A waiting exclusive request queues ahead of new shared ones, so a migration is
not starved by back-to-back drains.

The lock lives in a connection of its own, so it ends with the process that held it (a killed
worker cannot leave it behind). Each holder names itself in ``application_name``, so one that
waits can say which run holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# pg_advisory_lock's key: any fixed 64-bit value, the same for every holder
LOCK_KEY = 0x65786563_73636D61  # "execscma"
APPLICATION_PREFIX = "schema-lock: "


class SchemaLocked(RuntimeError):
    """The lock could not be had in time; the message names who holds it."""


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str  # who took it (their application_name, without the prefix)
    mode: str  # "exclusive" or "shared"
    waiting: bool
    seconds: float  # since the holder's session started

    def __str__(self) -> str:
        state = "waits for" if self.waiting else "holds"
        who = self.name or "an unnamed session"
        return f"{who} (pid {self.pid}) {state} it {self.mode} for {self.seconds:.0f} s"


def holders(cur) -> list[Holder]:
    """Every session that holds (or waits for) the lock, holders first."""
    cur.execute(
        """
        SELECT l.pid, coalesce(a.application_name, ''), l.mode, NOT l.granted,
               extract(epoch FROM now() - coalesce(a.backend_start, now()))
        FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database
                                                       WHERE datname = current_database())
          AND ((l.classid::bigint << 32) | l.objid::bigint) = %s AND l.objsubid = 1
        ORDER BY NOT l.granted, l.pid
        """,
        (LOCK_KEY,),
    )
    return [
        Holder(
            pid,
            name.removeprefix(APPLICATION_PREFIX),
            "shared" if "Share" in mode else "exclusive",
            waiting,
            float(seconds),
        )
        for pid, name, mode, waiting, seconds in cur.fetchall()
    ]


def _connect(maintenance_dsn: str, holder: str):
    import psycopg2

    conn = psycopg2.connect(maintenance_dsn, application_name=(APPLICATION_PREFIX + holder)[:63])
    conn.autocommit = True
    return conn


@contextmanager
def schema_lock(
    maintenance_dsn: str,
    holder: str,
    *,
    exclusive: bool,
    wait_seconds: float,
    on_wait: Callable[[list[Holder]], None] | None = None,
) -> Iterator[None]:
    """Hold the lock for the block, waiting up to `wait_seconds` (``SchemaLocked`` naming the
    holders after that). `on_wait` hears who holds it, once, when the lock is not free at once."""
    import psycopg2.errors

    suffix = "" if exclusive else "_shared"
    conn = _connect(maintenance_dsn, holder)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT pg_try_advisory_lock{suffix}(%s)", (LOCK_KEY,))
            if not cur.fetchone()[0]:
                ahead = holders(cur)
                named = "; ".join(map(str, ahead)) or "released meanwhile"
                logger.warning("waiting up to %.0f s for the schema lock: %s", wait_seconds, named)
                if on_wait:
                    on_wait(ahead)
                cur.execute("SET lock_timeout = %s", (f"{max(int(wait_seconds * 1000), 1)}ms",))
                try:
                    cur.execute(f"SELECT pg_advisory_lock{suffix}(%s)", (LOCK_KEY,))
                except psycopg2.errors.LockNotAvailable:
                    ahead = holders(cur)
                    raise SchemaLocked(
                        f"{holder}: the schema lock was not free within {wait_seconds:.0f} s: "
                        + ("; ".join(map(str, ahead)) or "its holder has just released it")
                    ) from None
                cur.execute("RESET lock_timeout")
        yield
    finally:
        conn.close()  # ends the session, and with it the lock


@contextmanager
def shared_schema_lock_if_free(maintenance_dsn: str, holder: str) -> Iterator[list[Holder]]:
    """Take the lock shared if no one holds or waits for it exclusively; yields [] when held,
    else the sessions in the way (and holds nothing). For work that should step aside rather
    than wait, as drains do while a restore or a migration runs."""
    conn = _connect(maintenance_dsn, holder)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock_shared(%s)", (LOCK_KEY,))
            acquired = cur.fetchone()[0]
            in_the_way = [] if acquired else [h for h in holders(cur) if h.mode == "exclusive"]
            if not acquired and not in_the_way:  # released between the try and the look
                cur.execute("SELECT pg_try_advisory_lock_shared(%s)", (LOCK_KEY,))
                if not cur.fetchone()[0]:
                    in_the_way = holders(cur)
        yield in_the_way
    finally:
        conn.close()
