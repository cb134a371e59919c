"""Planning and measuring task batches: plan sizes, per-type figures and the bottleneck report."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from include.execution.bottleneck import (
    bottleneck_report,
    record_bottleneck_report,
    record_type_metrics,
    type_metrics,
    type_stats,
)
from include.execution.drain import plan_batches


@pytest.mark.parametrize(
    ("ready", "batch", "parallelism", "planned"),
    [
        (0, 100, 4, 1),
        (1, 100, 4, 1),
        (100, 100, 4, 1),
        (101, 100, 4, 2),
        (10_000, 100, 4, 4),
        (250, 50, 8, 5),
    ],
)
def test_plan_batches(ready, batch, parallelism, planned):
    assert plan_batches(ready, batch, parallelism) == planned


def test_plan_batches_refuses_nonsense():
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(10, 0, 4)


def test_the_report_gives_percentiles_and_where_the_time_went(app_head_dsn):
    now = datetime.now(UTC)
    conn = psycopg2.connect(app_head_dsn)
    with conn, conn.cursor() as cur:
        # implementation: 10 tasks of 100..1000 ms, each queued 1 s; idea: 4 tasks of 10 ms, queued 0
        for i in range(1, 11):
            cur.execute(
                "INSERT INTO execution_tasks (task_type, status, available_at, started_at, finished_at, "
                "duration_ms)"
                " VALUES ('implementation', 'succeeded', %s, %s, %s, %s)",
                (
                    now - timedelta(seconds=5),
                    now - timedelta(seconds=4),
                    now - timedelta(seconds=1),
                    i * 100,
                ),
            )
        for status in ("succeeded", "succeeded", "failed", "dead"):
            cur.execute(
                "INSERT INTO execution_tasks (task_type, status, available_at, started_at, finished_at, "
                "duration_ms)"
                " VALUES ('idea', %s, %s, %s, %s, 10)",
                (
                    status,
                    now - timedelta(seconds=2),
                    now - timedelta(seconds=2),
                    now - timedelta(seconds=1),
                ),
            )
        # not finished
        cur.execute("INSERT INTO execution_tasks (task_type, status) VALUES ('idea', 'queued')")
        stats = type_stats(cur, now - timedelta(minutes=1), now)
        record_type_metrics(cur, "run-1", stats, {"implementation": {"cache_hits": 2, "cache_hit_ms": 500.0}})
        report = bottleneck_report(cur, now - timedelta(minutes=1), now + timedelta(seconds=1))
    conn.close()
    impl, idea = stats["implementation"], stats["idea"]
    assert (impl["tasks"], impl["failures"], impl["p50_ms"], impl["avg_ms"]) == (10, 0, 550, 550)
    assert impl["p95_ms"] == pytest.approx(955)
    assert impl["queue_wait_p50_ms"] == pytest.approx(1000, abs=1)
    assert (idea["tasks"], idea["failures"], idea["queue_wait_p95_ms"]) == (4, 2, 0)
    assert [r["task_type"] for r in report] == ["implementation", "idea"]  # slowest first
    top = report[0]
    assert top["queued_share"] == pytest.approx(10_000 / 15_500, abs=1e-3)  # 10 s queued, 5.5 s executing
    assert top["executing_share"] == pytest.approx(5_500 / 15_500, abs=1e-3)
    # 2 of its 10 tasks were answered from the cache (the time they took is no measure of what
    # the cache saves: a hit takes microseconds)
    assert top["cache_hit_share"] == pytest.approx(2 / 10) and top["cache_hits"] == 2
    names = {m.name for m in type_metrics(stats, report)}
    assert {
        "ExecutionDurationP95",
        "QueueWaitP95",
        "ExecutionTaskFailures",
        "BottleneckQueuedShare",
    } <= names


def test_the_report_gives_the_pickup_latency_of_first_claims(app_head_dsn):
    """Enqueue (or due time, for a task enqueued for later) to first claim; a retried task's
    first claim is gone (its started_at is its last), so only tasks claimed once count."""
    now = datetime.now(UTC)
    s = timedelta(seconds=1)
    conn = psycopg2.connect(app_head_dsn)
    with conn, conn.cursor() as cur:
        for created, available, started, attempts in (
            (now - 20 * s, now - 20 * s, now - 19 * s, 1),  # picked up after 1 s
            (now - 20 * s, now - 20 * s, now - 17 * s, 1),  # 3 s
            (now - 20 * s, now - 10 * s, now - 9 * s, 1),  # enqueued for later: 1 s after its due time
            (now - 20 * s, now - 5 * s, now - 4 * s, 2),  # retried: left out
        ):
            cur.execute(
                "INSERT INTO execution_tasks (task_type, status, created_at, available_at, started_at,"
                " finished_at, duration_ms, attempts) VALUES ('idea', 'succeeded', %s, %s, %s, %s, 10, %s)",
                (created, available, started, now - s, attempts),
            )
        report = bottleneck_report(cur, now - timedelta(minutes=1), now)
        record_bottleneck_report(cur, "run-p", now - timedelta(minutes=1), now, report)
        cur.execute("SELECT pickup_p50_ms, pickup_p95_ms FROM task_bottleneck_reports WHERE run_id = 'run-p'")
        stored = cur.fetchone()
    conn.close()
    [idea] = report
    assert idea["pickup_p50_ms"] == pytest.approx(1000, abs=1)
    assert idea["pickup_p95_ms"] == pytest.approx(2800, abs=1)  # between 1 s and 3 s, near 3 s
    assert stored == pytest.approx((1000, 2800), abs=1)
    names = {m.name for m in type_metrics({"idea": type_stats_of(app_head_dsn, now)}, report)}
    assert {"PickupLatencyP50", "PickupLatencyP95"} <= names


def type_stats_of(dsn: str, now: datetime) -> dict:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        stats = type_stats(cur, now - timedelta(minutes=1), now)
    conn.close()
    return stats["idea"]


def test_the_report_is_recorded_without_pickup_before_revision_0011(app_dsn):
    from include.migrations import revision_info, upgrade

    upgrade(app_dsn, revision_info("0011").down_revision)
    now = datetime.now(UTC)
    conn = psycopg2.connect(app_dsn)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO execution_tasks (task_type, status, started_at, finished_at, duration_ms, attempts)"
            " VALUES ('idea', 'succeeded', %s, %s, 10, 1)",
            (now, now),
        )
        report = bottleneck_report(cur, now - timedelta(minutes=1), now + timedelta(seconds=1))
        record_bottleneck_report(cur, "run-old", now, now, report)
        cur.execute("SELECT count(*) FROM task_bottleneck_reports WHERE run_id = 'run-old'")
        assert cur.fetchone()[0] == 1
    conn.close()


def test_revision_0003_adds_the_measurement_tables_and_its_downgrade_removes_them(app_dsn):
    from include.migrations import current, downgrade, upgrade

    def tables() -> set[str]:
        with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'task_b%'")
            names = {name for (name,) in cur.fetchall()}
        conn.close()
        return names

    upgrade(app_dsn, "0003")
    assert tables() == {"task_batch_metrics", "task_bottleneck_reports"}
    downgrade(app_dsn, "0002")
    assert (current(app_dsn), tables()) == ("0002", set())
    upgrade(app_dsn, "0003")
    assert tables() == {"task_batch_metrics", "task_bottleneck_reports"}


def test_a_drain_settles_and_claims_in_one_statement_and_one_transaction_per_step(app_head_dsn):
    from include.execution.drain import drain
    from include.execution.task_handlers import Services
    from include.execution.task_queue import TaskQueue

    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many([{"task_type": "idea", "payload": {"n": i}} for i in range(25)])
        sent = queue.statements
        summary = drain(
            app_head_dsn,
            services=Services(),
            handlers={"idea": lambda task, s: {"n": task.payload["n"]}},
            batch_size=10,
            queue=queue,  # it checks the FSAR block in the claim's own statement: no extra one
        )
        statements = queue.statements - sent
    assert summary.by_type["idea"].succeeded == 25
    # a step claims at least half a batch while the queue has rows (else it waits for its
    # tasks), and the last steps find the queue empty: at most 25/5 claiming steps and two more
    assert 1 + 3 <= statements <= 1 + 5 + 2
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(DISTINCT xmin::text), count(DISTINCT finished_at) FROM execution_tasks"
            " WHERE status = 'succeeded' AND result IS NOT NULL"
        )
        settling, settled_at = cur.fetchone()
        assert settling == settled_at <= statements - 1  # each step's completions: one transaction
        # the steps that settled while the queue had rows claimed in the same transaction (now()
        # is the transaction's start): all but the last two, which found the queue empty
        cur.execute(
            "SELECT count(*) FROM (SELECT DISTINCT started_at FROM execution_tasks) s"
            " JOIN (SELECT DISTINCT finished_at FROM execution_tasks) f ON s.started_at = f.finished_at"
        )
        assert cur.fetchone()[0] >= settled_at - 2
    conn.close()


def test_a_step_encodes_a_result_shared_by_its_tasks_once(app_head_dsn, monkeypatch):
    """One cached answer serves many tasks of a batch: each step encodes it once for all of them."""
    import include.execution.drain as task_batch
    from include.execution.task_handlers import Services
    from include.execution.task_queue import TaskQueue

    shared, encoded = {"answer": "cached"}, []

    def counting(value, what):
        encoded.append(value)
        return to_jsonb_text(value, what)

    to_jsonb_text = task_batch.to_jsonb_text
    monkeypatch.setattr(task_batch, "to_jsonb_text", counting)
    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many([{"task_type": "idea", "payload": {"n": i}} for i in range(30)])
        summary = task_batch.drain(
            app_head_dsn,
            services=Services(),
            handlers={"idea": lambda task, s: shared},
            batch_size=10,
            queue=queue,
        )
    assert summary.by_type["idea"].succeeded == 30
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(DISTINCT finished_at), count(*) FILTER (WHERE result = %s::jsonb)"
            " FROM execution_tasks WHERE status = 'succeeded'",
            ('{"answer": "cached"}',),
        )
        steps, stored = cur.fetchone()
    conn.close()
    assert stored == 30 and len(encoded) == steps < 30


def test_a_slow_task_does_not_hold_up_the_batches_after_it(app_head_dsn):
    from include.execution.drain import drain
    from include.execution.task_handlers import Services
    from include.execution.task_queue import TaskQueue

    released = threading.Event()

    def handler(task, services):
        if task.payload["n"] == 0:  # runs until every other task has been completed
            assert released.wait(60), "the other tasks were not completed while this one ran"
        return {"n": task.payload["n"]}

    def release_when_the_others_are_done() -> None:
        with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
            conn.autocommit = True
            while not released.is_set():
                cur.execute("SELECT count(*) FROM execution_tasks WHERE status = 'succeeded'")
                if cur.fetchone()[0] == 39:
                    released.set()
                time.sleep(0.02)
        conn.close()

    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many(
            [{"task_type": "idea", "payload": {"n": i}, "priority": 9 if i == 0 else 0} for i in range(40)]
        )
    watcher = threading.Thread(target=release_when_the_others_are_done, daemon=True)
    watcher.start()
    summary = drain(
        app_head_dsn, services=Services(), handlers={"idea": handler}, batch_size=10, concurrency=4
    )
    released.set()
    watcher.join()
    # the slow task was in the first batch; the 39 others (three batches and more) were claimed,
    # run and completed while it ran (else its wait failed it), and then it completed too
    assert (summary.by_type["idea"].succeeded, summary.errors) == (40, [])
    assert summary.batches >= 4


def test_a_drain_out_of_budget_finishes_what_it_holds_and_leaves_the_rest_queued(app_head_dsn):
    from include.execution.drain import drain
    from include.execution.task_handlers import Services
    from include.execution.task_queue import TaskQueue

    def handler(task, services):
        time.sleep(0.02)
        return {"n": task.payload["n"]}

    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many([{"task_type": "idea", "payload": {"n": i}} for i in range(500)])
    summary = drain(
        app_head_dsn,
        services=Services(),
        handlers={"idea": handler},
        batch_size=10,
        concurrency=2,
        budget_seconds=0.5,
    )
    assert summary.stopped_by == "budget"
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM execution_tasks GROUP BY status")
        counts = dict(cur.fetchall())
    conn.close()
    # every task it claimed was run and recorded (none left running on a lease), the rest wait
    assert counts.get("running", 0) == 0 and counts["queued"] > 0
    assert (
        counts["succeeded"] == summary.by_type["idea"].succeeded
        and counts["succeeded"] + counts["queued"] == 500
    )


def test_tasks_of_one_type_model_and_payload_text_share_one_cache_key():
    from include.execution.drain import cache_lookups
    from include.execution.task_handlers import PermanentError, Services
    from include.execution.task_queue import ClaimedTask

    made = []

    def key_of(task, services):
        made.append(task.id)
        if "bad" in task.payload:
            raise PermanentError("payload.bad is bad")
        return f"executor:{task.ai_model}", {"p": task.payload["p"]}

    def task(i, payload, model="m", text=True):
        return ClaimedTask(i, "idea", payload, model, 1, 5, "", 0.0, str(payload) if text else None)

    tasks = [
        task(0, {"p": 1}),
        task(1, {"p": 1}),
        task(2, {"p": 1}, model="other"),
        task(3, {"p": 2}),
        task(4, {"p": 1}, text=False),
        task(5, {"p": 1}, text=False),
        task(6, {"bad": 1}),
        task(7, {"bad": 1}),
    ]
    keys = cache_lookups({"idea": key_of}, tasks, Services(cache=object()))
    # a task whose payload text is unknown, or whose key failed, makes its own
    assert made == [
        0,
        2,
        3,
        4,
        5,
        6,
        7,
    ]
    assert (
        keys[1] is keys[0] and keys[2] == ("executor:other", {"p": 1}) and keys[3] == ("executor:m", {"p": 2})
    )
    # the bad payloads are left to their handler's clear failure
    assert set(keys) == {
        0,
        1,
        2,
        3,
        4,
        5,
    }


def _pickup_ms(dsn: str, task_id: int) -> float:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM started_at - created_at) * 1000 FROM execution_tasks WHERE id = %s",
            (task_id,),
        )
        (ms,) = cur.fetchone()
    conn.close()
    return float(ms)


def test_a_hot_drain_claims_new_work_within_milliseconds_and_ends_once_idle(app_head_dsn):
    """Once the queue is empty, a drain with idle_seconds waits on the notifications: work
    enqueued later is claimed by it at once (no new drain), and it ends idle_seconds after the
    last work, not at once and not at its budget."""
    from datetime import UTC, datetime, timedelta

    from include.execution.drain import drain
    from include.execution.task_handlers import Services
    from include.execution.task_queue import TaskQueue

    idle = 1.5
    late: list[int] = []

    def produce() -> None:
        with TaskQueue(app_head_dsn) as producer:
            time.sleep(0.5)  # the drain has emptied the queue and waits
            late.append(producer.enqueue("idea", {"n": 100}))
            time.sleep(0.8)  # less than idle: the same drain is still there
            late.append(producer.enqueue("idea", {"n": 101}))
            # due 0.5 s from now: a wait for the time it falls due, not for a notification
            late.append(
                producer.enqueue("idea", {"n": 102}, available_at=datetime.now(UTC) + timedelta(seconds=0.5))
            )

    with TaskQueue(app_head_dsn) as queue:
        queue.enqueue_many([{"task_type": "idea", "payload": {"n": i}} for i in range(5)])
    producer = threading.Thread(target=produce)
    producer.start()
    started = time.monotonic()
    summary = drain(
        app_head_dsn,
        services=Services(),
        handlers={"idea": lambda task, s: {"n": task.payload["n"]}},
        budget_seconds=60,
        idle_seconds=idle,
    )
    took = time.monotonic() - started
    producer.join()
    assert summary.by_type["idea"].succeeded == 8 and summary.stopped_by == "empty"
    assert summary.woken == 3
    # the last task ran about 1.8 s in, after its due time; then idle_seconds without work
    assert 1.8 + idle - 0.2 < took < 1.8 + idle + 2.0
    pickups = [_pickup_ms(app_head_dsn, task_id) for task_id in late[:2]]
    assert max(pickups) < 250, pickups


def test_a_hot_drain_stops_at_its_budget_and_a_cold_one_ends_at_once(app_head_dsn):
    from include.execution.drain import drain
    from include.execution.task_handlers import Services

    handlers = {"idea": lambda task, s: {}}
    started = time.monotonic()
    cold = drain(app_head_dsn, services=Services(), handlers=handlers)
    assert time.monotonic() - started < 1.0 and cold.stopped_by == "empty"
    started = time.monotonic()
    hot = drain(app_head_dsn, services=Services(), handlers=handlers, budget_seconds=1.0, idle_seconds=30)
    assert 0.9 < time.monotonic() - started < 3.0 and hot.stopped_by == "budget" and hot.woken == 0
