"""The event trigger behind task_batch's Asset: execution tasks are ready in the app database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from include.ids import APP_DB

# how its session shows in pg_stat_activity (the tests find the listener by it)
APPLICATION_NAME = "task_batch_trigger"
RECONNECT_FIRST_SECONDS = 0.5
# a listener on a connection that died without a word (no FIN: a network partition) learns it
# from TCP keepalives, unless the connection's extras set their own
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}


class QueuedTasksTrigger(BaseEventTrigger):
    """
    Fires when execution tasks are ready to run, so that task_batch starts within seconds.

    Runs in the triggerer (an ``AssetWatcher`` of ``TASK_QUEUE`` in ``execplatform.dag_defaults``).
    It listens on ``NOTIFY_CHANNEL`` of the app database, where enqueueing announces new tasks
    once per transaction and task type, and yields a ``TriggerEvent`` (an asset event, which
    starts a task_batch run) when queued tasks are ready, with the ready count per type:

    - **Bursts coalesce.** After a notification it waits ``coalesce_seconds`` (collecting the
      ones that follow) and then counts the ready tasks: a burst gives one event, and none when a
      hot drain has claimed the tasks meanwhile. Two events are at least ``min_interval_seconds``
      apart; what arrives in between is counted at the end of the interval, never dropped.
    - **Restarts lose nothing.** On every (re)connection it counts the ready tasks before
      waiting, so tasks enqueued while it was away (a database restart, the triggerer down) are
      seen at once. A lost connection is retried with a doubling delay from 0.5 s up to
      ``reconnect_max_seconds``: a server back after a restart is found within that long.
    - **Notifications are not the only source.** It counts again when the next queued task falls
      due (a retry after its backoff, a task enqueued for later), and every ``poll_seconds``,
      when it fires only if the ready count grew (tasks requeued, which sends no notification, or
      written by a writer that does not notify): a backlog that no run drains (runs failing)
      waits for the time schedule instead of starting a run per poll.

    It connects as the task workers' role (``AppDatabaseHook.worker_dsn()``): it only reads
    ``execution_tasks``.

    :param conn_id: the app database's connection.
    :param coalesce_seconds: how long to collect notifications before counting.
    :param min_interval_seconds: the least time between two events.
    :param poll_seconds: the longest time between two counts.
    :param reconnect_max_seconds: the longest wait between two connection attempts.
    """

    def __init__(
        self,
        *,
        conn_id: str = APP_DB,
        coalesce_seconds: float = 1.0,
        min_interval_seconds: float = 5.0,
        poll_seconds: float = 60.0,
        reconnect_max_seconds: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.coalesce_seconds = coalesce_seconds
        self.min_interval_seconds = min_interval_seconds
        self.poll_seconds = poll_seconds
        self.reconnect_max_seconds = reconnect_max_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "coalesce_seconds": self.coalesce_seconds,
                "min_interval_seconds": self.min_interval_seconds,
                "poll_seconds": self.poll_seconds,
                "reconnect_max_seconds": self.reconnect_max_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        delay = RECONNECT_FIRST_SECONDS
        while True:
            began = time.monotonic()
            try:
                async with await self._connect() as conn:
                    async for event in self._listen(conn):
                        yield event
            except Exception as exc:  # unreachable, restarting, lost, or the connection not defined yet
                self.log.warning(
                    "app database unreachable or lost (%s); reconnecting in %.1fs", _brief(exc), delay
                )
            # a connection that had lasted starts the backoff afresh; one that fails at once (a
            # server that takes connections but not this session's queries) does not hammer it
            if time.monotonic() - began > self.reconnect_max_seconds:
                delay = RECONNECT_FIRST_SECONDS
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_seconds)

    async def _connect(self):
        # in a thread: the first call imports psycopg, and the hook reads the connection through
        # the triggerer (and may fetch an IAM token); neither may block the triggerer's loop
        conninfo = await asyncio.to_thread(self._conninfo)
        import psycopg  # imported by now

        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)

    def _conninfo(self) -> str:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        from execplatform.hooks.app_db_hook import AppDatabaseHook

        dsn = AppDatabaseHook(self.conn_id).worker_dsn()
        params = {**KEEPALIVES, "connect_timeout": "10", **conninfo_to_dict(dsn)}
        params["application_name"] = APPLICATION_NAME
        return make_conninfo("", **params)

    async def _listen(self, conn) -> AsyncIterator[TriggerEvent]:
        """Events for as long as the connection lasts; the first count is made at once."""
        from psycopg import sql

        from include.execution.task_queue import NOTIFY_CHANNEL  # in the triggerer, not at parse time

        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        self.log.info("listening on %s for queued execution tasks", NOTIFY_CHANNEL)
        reason, last_event, last_ready = "connected", -float("inf"), 0
        while True:
            if (hold := last_event + self.min_interval_seconds - time.monotonic()) > 0:
                await _notifications(conn, hold)  # what comes meanwhile is counted just after
            ready, due = await _count(conn)
            total = sum(ready.values())
            # a poll announces only a backlog that grew (requeued tasks, a writer that did not
            # notify): one that nobody drains (runs failing) waits for the time schedule
            if total and (reason != "poll" or total > last_ready):
                last_event = time.monotonic()
                yield TriggerEvent({"reason": reason, "ready": total, "by_type": ready})
            last_ready = total
            timeout = self.poll_seconds if due is None else min(self.poll_seconds, due)
            if await _notifications(conn, timeout, stop_after=1):
                reason = "notified"
                await _notifications(conn, self.coalesce_seconds)
            else:
                reason = "due" if due is not None and due <= self.poll_seconds else "poll"


async def _notifications(conn, seconds: float, stop_after: int | None = None) -> set[str]:
    """The task types notified within `seconds` (at most `stop_after` notifications, then at once)."""
    if seconds <= 0:
        return set()
    async with aclosing(conn.notifies(timeout=seconds, stop_after=stop_after)) as stream:
        return {notify.payload async for notify in stream}


async def _count(conn) -> tuple[dict[str, int], float | None]:
    """({task type: ready tasks} for the types with some, seconds until the next one is due)."""
    from include.execution.task_queue import QUEUED_BY_TYPE

    cur = await conn.execute(QUEUED_BY_TYPE, {"types": None})
    rows = await cur.fetchall()
    due = [seconds for _, _, seconds in rows if seconds is not None]
    return {t: n for t, n, _ in rows if n}, (max(min(due), 0.0) if due else None)


def _brief(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
