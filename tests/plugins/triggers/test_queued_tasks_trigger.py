"""task_batch's event trigger against the real PostgreSQL: it fires for a backlog when it connects,
coalesces bursts, stays quiet when a hot drain took the work, and reconnects after its session
is cut or the server restarts, announcing what was enqueued while it was away."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from execplatform.triggers.queued_tasks_trigger import APPLICATION_NAME, QueuedTasksTrigger
from include.execution.task_queue import TaskQueue
from tests.airflow_api import postgres_connection
from tests.pg import query

CONN_ID = "trigger_test_db"
PAYLOAD = {"prompt": "p", "repo": "r", "inputs": {"count": 3}}


class Running:
    """The trigger's run() on an event loop of its own thread, as the triggerer runs it: its
    events (arrival time, payload) in a queue."""

    def __init__(self, trigger: QueuedTasksTrigger) -> None:
        self.trigger = trigger
        self.events: queue.Queue = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.task = self.loop.create_task(self._consume())
            ready.set()
            try:
                self.loop.run_until_complete(self.task)
            except asyncio.CancelledError:
                pass
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()

    async def _consume(self) -> None:
        async for event in self.trigger.run():
            self.events.put((time.monotonic(), event.payload))

    def next_event(self, timeout: float) -> tuple[float, dict] | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(10)


@pytest.fixture
def db(app_head_dsn, monkeypatch) -> str:
    """A fresh database at head, reachable as connection CONN_ID (as the triggerer reads it)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", postgres_connection(app_head_dsn))
    return app_head_dsn


@pytest.fixture
def start(db):
    started: list[Running] = []

    def start_trigger(**settings) -> Running:
        running = Running(QueuedTasksTrigger(conn_id=CONN_ID, **settings))
        started.append(running)
        return running

    yield start_trigger
    for running in started:
        running.stop()


def listener_pid(dsn: str, timeout: float = 20.0, other_than: int | None = None) -> int:
    """The trigger's session once it listens (a new one, when `other_than` is the old one)."""
    dbname = psycopg2.extensions.parse_dsn(dsn)["dbname"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = query(
                dsn,
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s "
                "AND state = 'idle' AND pid <> %s",
                (APPLICATION_NAME, dbname, other_than or 0),
            )
        except psycopg2.OperationalError:  # the server is starting
            found = []
        if found:
            return found[0][0]
        time.sleep(0.05)
    raise AssertionError(f"the trigger did not listen on {dbname} within {timeout}s")


def enqueue(dsn: str, *types: str, **fields) -> None:
    with TaskQueue(dsn) as q:
        q.enqueue_many([{"task_type": t, "payload": PAYLOAD, **fields} for t in types])


def test_a_backlog_found_on_connecting_fires_at_once(db, start):
    enqueue(db, "idea", "idea", "implementation")
    running = start()
    arrived = running.next_event(20)
    assert arrived is not None
    assert arrived[1] == {"reason": "connected", "ready": 3, "by_type": {"idea": 2, "implementation": 1}}
    assert running.next_event(1.5) is None  # and once


def test_a_burst_of_transactions_is_one_event(db, start):
    # a window far longer than the burst needs (0.5 s on a quiet machine), so that a busy one
    # still sends all 20 inside it
    running = start(coalesce_seconds=4.0, min_interval_seconds=10.0)
    listener_pid(db)
    assert running.next_event(0.5) is None  # an empty queue: nothing to announce
    began = time.monotonic()
    for i in range(20):  # 20 transactions
        enqueue(db, ("idea", "implementation")[i % 2])
        time.sleep(0.025)
    arrived = running.next_event(15)
    assert arrived is not None
    at, payload = arrived
    assert payload["reason"] == "notified" and payload["ready"] == 20
    assert at - began >= 4.0  # not before the coalescing window after the first notification
    assert running.next_event(2.0) is None


def test_work_that_a_hot_drain_claimed_meanwhile_fires_nothing(db, start):
    running = start(coalesce_seconds=0.5)
    listener_pid(db)
    claimed = threading.Event()

    def hot_drain() -> None:
        with TaskQueue(db) as worker:
            worker.listen()
            if worker.wait(10) and worker.claim(10):
                claimed.set()

    drain = threading.Thread(target=hot_drain)
    drain.start()
    time.sleep(0.2)
    enqueue(db, "idea")
    drain.join()
    assert claimed.is_set()
    assert running.next_event(2.0) is None
    # a task nobody takes is announced
    enqueue(db, "idea")
    arrived = running.next_event(5)
    assert arrived is not None and arrived[1]["ready"] == 1


def test_two_events_are_min_interval_apart_and_what_came_between_is_not_dropped(db, start):
    running = start(coalesce_seconds=0.1, min_interval_seconds=2.0)
    listener_pid(db)
    enqueue(db, "idea")
    first = running.next_event(5)
    assert first is not None and first[1]["ready"] == 1
    time.sleep(0.3)
    enqueue(db, "implementation")
    second = running.next_event(5)
    assert second is not None
    assert second[0] - first[0] >= 2.0 - 0.05
    assert second[1]["by_type"] == {"idea": 1, "implementation": 1}


def test_a_poll_fires_for_requeued_tasks_but_not_again_for_the_same_backlog(db, start):
    enqueue(db, "idea", "idea")
    running = start(poll_seconds=0.5, min_interval_seconds=0.1)
    assert running.next_event(20)[1]["reason"] == "connected"
    assert running.next_event(2.0) is None  # the same two tasks: the time schedule's, not a run per poll
    # a task requeued as the reaper does it (an UPDATE: no notification)
    query(
        db,
        "INSERT INTO execution_tasks (task_type, status, attempts) VALUES ('implementation', 'running', 1)",
    )
    query(db, "UPDATE execution_tasks SET status = 'queued' WHERE status = 'running'")
    arrived = running.next_event(3.0)
    assert arrived is not None and arrived[1]["reason"] == "poll" and arrived[1]["ready"] == 3


def test_a_task_enqueued_for_later_fires_when_it_falls_due(db, start):
    running = start(poll_seconds=60)
    listener_pid(db)
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    enqueue(db, "idea", available_at=due)
    arrived = running.next_event(10)
    assert arrived is not None and arrived[1]["reason"] == "due"
    assert datetime.now(UTC) >= due


def test_it_reconnects_after_its_session_is_cut_and_announces_what_came_meanwhile(db, start, pg_server):
    running = start(reconnect_max_seconds=1.0)
    pid = listener_pid(db)
    dbname = psycopg2.extensions.parse_dsn(db)["dbname"]
    producer = TaskQueue(db)  # opened before the database stops taking connections
    admin = psycopg2.connect(pg_server.superuser_dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # enqueued while the trigger cannot reconnect: its notification reaches no one
            producer.enqueue("idea", PAYLOAD)
            assert running.next_event(2.0) is None
            cur.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        arrived = running.next_event(10)
        assert arrived is not None and arrived[1] == {
            "reason": "connected",
            "ready": 1,
            "by_type": {"idea": 1},
        }
        assert listener_pid(db, other_than=pid) != pid
    finally:
        producer.close()
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        admin.close()


def test_it_survives_a_restart_of_the_server(db, start, local_stack):
    """The database server stops (as a restart does: fast shutdown) and starts again; what is
    enqueued as soon as it is back, and later, is announced without waiting for any schedule."""
    running = start(reconnect_max_seconds=2.0)
    pid = listener_pid(db)
    service = local_stack.supervisor.stop("postgres")
    time.sleep(1.0)
    local_stack.supervisor.start(service)
    enqueue(db, "idea")  # at once: the trigger is most likely still waiting to reconnect
    first = running.next_event(20)
    assert first is not None and first[1]["by_type"] == {"idea": 1}
    new_pid = listener_pid(db, other_than=pid)
    query(db, "UPDATE execution_tasks SET status = 'succeeded'")
    enqueue(db, "implementation")
    second = running.next_event(10)
    assert second is not None and second[1] == {
        "reason": "notified",
        "ready": 1,
        "by_type": {"implementation": 1},
    }
    assert listener_pid(db) == new_pid


def test_a_session_that_fails_at_once_is_retried_with_a_growing_delay(db, start):
    """The server takes the connection but refuses the count (here: the workers' role lost its
    grant): the trigger backs off (0.5, 1, 2 s...) instead of reconnecting in a tight loop."""
    sessions = "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    query(db, "REVOKE SELECT ON execution_tasks FROM app_worker")
    before = query(db, sessions)[0][0]
    running = start(reconnect_max_seconds=30)
    time.sleep(3.2)
    running.stop()
    assert running.next_event(0) is None
    # its sessions within 3.2 s: at 0, 0.5, 1.5 and 3.5 s with the backoff (and the two queries
    # here); reconnecting at once, it opened one every few milliseconds
    opened = query(db, sessions)[0][0] - before - 1
    assert 2 <= opened <= 4, opened
