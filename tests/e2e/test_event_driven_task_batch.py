"""task_batch started by the queue's notifications, under the real scheduler and triggerer of the
shared stack (its time schedule set years away: 29 February), with the app database at head.

1. The stack's own DAG-run start-up is measured first: a manual run with one task waiting, from
   the trigger to the task's claim. Every bound below derives from it (no wall-clock constant).
2. From idle, one enqueued task is claimed by an asset-triggered run within twice that start-up
   (plus the trigger's coalescing window), long before the next scheduled run; the next task,
   while that run's drain is still hot, within a small part of it and without a new run.
3. A burst of 10,000 tasks across types gives a bounded number of runs, each task claimed once.
4. The app database's server restarted while the trigger listens (the stack runs Airflow's
   metadata on a server of its own, as production does, so only the app's server restarts):
   tasks enqueued as soon as it is back, and after, are claimed without the schedule.
5. The triggerer killed: tasks enqueued meanwhile wait (nothing else starts a run); restarted,
   it announces them and they are claimed, each once. (That the time schedule drains the queue
   without a triggerer is played by test_celery_scaleout.py, whose schedules run every minute.)
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg2
import pytest

from execplatform.dag_defaults import TASK_QUEUE
from execplatform.triggers.queued_tasks_trigger import APPLICATION_NAME
from tests.airflow_api import api, dag_url, rows, set_paused, token_for, wait_for
from tests.dags.test_task_batch_dag import VALID

log = logging.getLogger(__name__)
DAG_ID = "task_batch"
TRIGGER = TASK_QUEUE.watchers[0].trigger
BURST = 10_000
EVER = datetime(2000, 1, 1, tzinfo=UTC)  # runs_started_since(EVER): every run


@pytest.fixture(scope="module")
def token(app_db_at_head) -> str:
    return token_for(app_db_at_head.info.login)


@pytest.fixture(scope="module")
def stack(app_db_at_head, token):
    """The shared stack with task_batch unpaused (its trigger then listens), paused again after."""
    set_paused(app_db_at_head, DAG_ID, False, token)
    yield app_db_at_head
    set_paused(app_db_at_head, DAG_ID, True, token)


def listeners(stack) -> set[int]:
    """The pids of the trigger's sessions on the app database that listen (one, or two for a
    while after a pause and unpause, when the triggerer runs the new watcher beside the old)."""
    found = rows(
        stack,
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = 'app' AND state = 'idle'",
        (APPLICATION_NAME,),
    )
    return {pid for (pid,) in found}


def active_runs(stack, token: str) -> list[dict]:
    return api(f"{dag_url(stack, DAG_ID)}/dagRuns?state=running&state=queued", token)["dag_runs"]


def runs_started_since(stack, token: str, since: datetime) -> list[dict]:
    """The runs that started at or after `since` (an asset-triggered run's run_after is its
    first queued event's time, which may be older)."""
    runs = api(f"{dag_url(stack, DAG_ID)}/dagRuns?order_by=-id&limit=100", token)["dag_runs"]
    return [r for r in runs if r["start_date"] and datetime.fromisoformat(r["start_date"]) >= since]


def idle(stack, token: str) -> bool:
    return bool(
        listeners(stack)
        and not active_runs(stack, token)
        # an asset event queued while a run was going makes the next run once that one ends
        and api(f"{dag_url(stack, DAG_ID)}/assets/queuedEvents", token)["total_entries"] == 0
        and rows(
            stack,
            "SELECT count(*) FROM execution_tasks WHERE status IN ('queued', 'running') "
            "AND available_at <= now()",
        )
        == [(0,)]
    )


def wait_until_idle(stack, token: str) -> None:
    """The trigger listens, no run is active or due to start, nothing is ready, and it stays so
    for a scheduler loop or two: a task enqueued now starts cold."""

    def idle_and_staying_so() -> bool:
        if not idle(stack, token):
            return False
        time.sleep(3)
        return idle(stack, token)

    wait_for(idle_and_staying_so, 600, "task_batch idle with its trigger listening")


def enqueue(stack, label: str, n: int = 1, per_transaction: int = 100) -> list[int]:
    """`n` tasks across the types (a few inputs, so most answers come from the cache)."""
    from include.execution.task_queue import TaskQueue

    types = sorted(VALID)
    tasks = [
        {
            "task_type": types[i % len(types)],
            "ai_model": "gpt-4.1",
            "idempotency_key": f"{label}-{i}",
            "payload": {**VALID[types[i % len(types)]], "prompt": f"{label} {i % 7}"},
        }
        for i in range(n)
    ]
    ids = []
    with TaskQueue(stack.app_dsn()) as queue:
        for lo in range(0, n, per_transaction):
            ids += queue.enqueue_many(tasks[lo : lo + per_transaction])
    return ids


def claimed(stack, ids: list[int], timeout: float) -> dict[int, tuple[datetime, float]]:
    """{id: (claimed at, pickup seconds: claim - enqueue)} once every task was claimed."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(
            stack,
            "SELECT id, started_at, extract(epoch FROM started_at - created_at)::float8 FROM execution_tasks "
            "WHERE id = ANY(%s) AND started_at IS NOT NULL",
            (ids,),
        )
        if len(found) == len(ids):
            return {i: (at, seconds) for i, at, seconds in found}
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(ids) - len(found)} of {len(ids)} tasks not claimed within {timeout:.0f}s"
            )
        time.sleep(0.1)


def run_that_claimed(stack, token: str, at: datetime) -> dict:
    for run in runs_started_since(stack, token, EVER):
        start = datetime.fromisoformat(run["start_date"]) if run["start_date"] else None
        end = datetime.fromisoformat(run["end_date"]) if run["end_date"] else None
        if start and start <= at and (end is None or at <= end):
            return run
    raise AssertionError(f"no task_batch run was running at {at}")


@pytest.fixture(scope="module")
def start_up_seconds(stack, token) -> float:
    """The stack's own DAG-run start-up: trigger a manual run with one task waiting (task_batch
    paused meanwhile, so no event starts another), until the drain claims the task."""
    wait_until_idle(stack, token)
    set_paused(stack, DAG_ID, True, token)
    [probe] = enqueue(stack, f"start-up-{uuid.uuid4().hex[:6]}")
    [(asked,)] = rows(stack, "SELECT clock_timestamp()")
    run_id = api(
        f"{dag_url(stack, DAG_ID)}/dagRuns",
        token,
        {"logical_date": None, "conf": {"idle_seconds": 0, "parallelism": 1}},
    )["dag_run_id"]
    set_paused(stack, DAG_ID, False, token)
    at, _ = claimed(stack, [probe], 600)[probe]
    seconds = (at - asked).total_seconds()
    wait_for(
        lambda: api(f"{dag_url(stack, DAG_ID)}/dagRuns/{run_id}", token)["state"] in ("success", "failed"),
        600,
        "the start-up run to end",
    )
    log.warning("task_batch start-up on this stack (trigger to claim): %.1fs", seconds)
    return seconds


def test_from_idle_a_task_is_claimed_within_a_run_s_start_up_long_before_the_schedule(
    stack, token, start_up_seconds
):
    wait_until_idle(stack, token)
    [first] = enqueue(stack, f"idle-{uuid.uuid4().hex[:6]}")
    at, pickup = claimed(stack, [first], 600)[first]
    bound = 2 * start_up_seconds + TRIGGER.coalesce_seconds
    log.warning("pickup from idle: %.2fs (bound %.1fs)", pickup, bound)
    assert pickup <= bound
    assert run_that_claimed(stack, token, at)["run_type"] == "asset_triggered"
    # the time schedule would have been no help: its next run is years away
    next_run = api(dag_url(stack, DAG_ID), token)["next_dagrun_run_after"]
    assert (datetime.fromisoformat(next_run) - datetime.now(UTC)).total_seconds() > 1000 * bound

    # the run's drain is hot (it waits TASK_BATCH_IDLE_SECONDS for more): the next task is its own
    runs_before = {r["dag_run_id"] for r in runs_started_since(stack, token, EVER)}
    [second] = enqueue(stack, f"hot-{uuid.uuid4().hex[:6]}")
    at2, hot_pickup = claimed(stack, [second], 60)[second]
    log.warning("pickup by a hot drain: %.3fs", hot_pickup)
    assert hot_pickup < start_up_seconds / 10
    assert run_that_claimed(stack, token, at2)["dag_run_id"] in runs_before


def test_a_burst_of_ten_thousand_tasks_starts_a_bounded_number_of_runs(stack, token):
    wait_until_idle(stack, token)
    [(began,)] = rows(stack, "SELECT clock_timestamp()")
    ids = enqueue(stack, f"burst-{uuid.uuid4().hex[:6]}", BURST)
    claimed(stack, ids, 900)
    wait_until_idle(stack, token)
    runs = runs_started_since(stack, token, began)
    log.warning("a burst of %d tasks: %d runs %s", BURST, len(runs), [r["dag_run_id"] for r in runs])
    # the first event starts a run; events while it drains queue at most one more (max_active_runs=1)
    assert 1 <= len(runs) <= 3 and {r["run_type"] for r in runs} == {"asset_triggered"}
    assert rows(
        stack,
        "SELECT status, attempts, count(*) FROM execution_tasks WHERE id = ANY(%s) GROUP BY 1, 2",
        (ids,),
    ) == [("succeeded", 1, BURST)]


def test_tasks_enqueued_as_the_app_database_restarts_and_after_are_claimed_without_the_schedule(
    stack, token, start_up_seconds
):
    wait_until_idle(stack, token)
    before = listeners(stack)
    label = f"restart-{uuid.uuid4().hex[:6]}"
    during: list[int] = []

    def enqueue_as_soon_as_it_is_back() -> None:
        # as a producer does: its insert fails while the server is down, and is sent again
        deadline = time.monotonic() + 120
        while not during and time.monotonic() < deadline:
            try:
                during.extend(enqueue(stack, f"{label}-during"))
            except psycopg2.OperationalError:
                time.sleep(0.05)

    service = stack.supervisor.stop("postgres")  # Airflow's metadata server runs on
    writer = threading.Thread(target=enqueue_as_soon_as_it_is_back)
    writer.start()
    time.sleep(2)
    stack.supervisor.start(service)
    writer.join()
    assert during, "the producer could not enqueue after the restart"
    wait_for(lambda: listeners(stack) - before, 120, "the trigger to listen again")
    after = enqueue(stack, f"{label}-after")
    found = claimed(stack, during + after, 600)
    # the trigger finds the server back within its longest reconnection delay, then counts
    bound = 2 * start_up_seconds + TRIGGER.coalesce_seconds + TRIGGER.reconnect_max_seconds
    log.warning(
        "pickups around the restart: %s (bound %.1fs)", {i: round(s, 2) for i, (_, s) in found.items()}, bound
    )
    for at, pickup in found.values():
        assert pickup <= bound
        assert run_that_claimed(stack, token, at)["run_type"] == "asset_triggered"


def test_the_triggerer_killed_and_restarted_loses_nothing(stack, token, start_up_seconds):
    wait_until_idle(stack, token)
    triggerer = stack.supervisor.stop("triggerer", sig=signal.SIGKILL, grace=10)
    try:
        ids = enqueue(stack, f"triggerer-down-{uuid.uuid4().hex[:6]}", 50)
        # with no triggerer, no event: nothing starts a run for them (the schedule is years away)
        time.sleep(3 * start_up_seconds)
        assert rows(
            stack, "SELECT count(*) FROM execution_tasks WHERE id = ANY(%s) AND started_at IS NULL", (ids,)
        ) == [(50,)]
        assert not active_runs(stack, token)
    finally:
        stack.supervisor.start(triggerer)
    # a new triggerer adopts the dead one's trigger once its heartbeat is stale, then counts
    found = claimed(stack, ids, 600)
    wait_until_idle(stack, token)
    assert {run_that_claimed(stack, token, at)["run_type"] for at, _ in found.values()} == {"asset_triggered"}
    assert rows(
        stack,
        "SELECT status, attempts, count(*) FROM execution_tasks WHERE id = ANY(%s) GROUP BY 1, 2",
        (ids,),
    ) == [("succeeded", 1, 50)]
