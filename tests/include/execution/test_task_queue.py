"""The queue's semantics against the real PostgreSQL: leases, tokens, retries, reaping, idempotency."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from include.execution.task_queue import (
    DEADLOCK_RETRIES,
    Completion,
    Failure,
    SchemaBehindError,
    TaskQueue,
)
from tests.pg import notified

PAYLOAD = {"prompt": "p", "repo": "r", "inputs": {"count": 3}}


def rows(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        result = cur.fetchall()
    conn.close()
    return result


def test_enqueue_with_an_idempotency_key_never_duplicates(app_head_dsn):
    with TaskQueue(app_head_dsn) as q:
        first = q.enqueue("idea", PAYLOAD, ai_model="gpt-4.1", idempotency_key="k-1")
        again = q.enqueue("idea", {"other": True}, idempotency_key="k-1")
        ids = q.enqueue_many(
            [
                {"task_type": "idea", "payload": PAYLOAD, "idempotency_key": k}
                for k in ("k-2", "k-1", "k-2", None, None)
            ]
        )
    assert again == first
    assert ids[1] == first and ids[0] == ids[2] and len(set(ids)) == 4
    assert rows(app_head_dsn, "SELECT count(*), count(ai_model) FROM execution_tasks") == [(4, 1)]
    assert rows(app_head_dsn, "SELECT payload FROM execution_tasks WHERE id = %s", (first,)) == [(PAYLOAD,)]


def test_a_payload_jsonb_cannot_hold_is_refused_by_name_before_anything_is_written(app_head_dsn):
    with (
        TaskQueue(app_head_dsn) as q,
        pytest.raises(ValueError, match=r"task 1's payload contains a NUL"),
    ):
        q.enqueue_many(
            [
                {"task_type": "idea", "payload": PAYLOAD},
                {"task_type": "idea", "payload": {"a": "x\x00"}},
            ]
        )
    assert rows(app_head_dsn, "SELECT count(*) FROM execution_tasks") == [(0,)]


def test_a_claimed_task_carries_its_payload_and_the_payload_text_equal_payloads_share(app_head_dsn):
    with TaskQueue(app_head_dsn) as q:
        q.enqueue_many(
            [
                {
                    "task_type": "idea",
                    "payload": {"prompt": "p", "inputs": {"a": 1, "b": [2.5, None]}},
                },
                {
                    "task_type": "idea",
                    "payload": {"inputs": {"b": [2.5, None], "a": 1}, "prompt": "p"},
                },
                {"task_type": "idea", "payload": {"prompt": "p", "inputs": {"a": 2}}},
            ]
        )
        first, second, third = sorted(q.claim(3), key=lambda t: t.id)
    assert first.payload == second.payload == {"prompt": "p", "inputs": {"a": 1, "b": [2.5, None]}}
    assert first.payload_text == second.payload_text != third.payload_text  # jsonb's text is canonical
    assert [json.loads(t.payload_text) for t in (first, third)] == [first.payload, third.payload]


def test_claims_go_by_priority_then_age_and_never_overlap(app_head_dsn):
    with TaskQueue(app_head_dsn) as q:
        low = q.enqueue_many([{"task_type": "idea", "payload": PAYLOAD} for _ in range(200)])
        high = q.enqueue("implementation", PAYLOAD, priority=5)
        assert [t.id for t in q.claim(2)] == sorted([high, low[0]])
    queues = [TaskQueue(app_head_dsn, owner=f"w{i}") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        claimed = list(
            pool.map(lambda q: [t.id for batch in iter(lambda: q.claim(7), []) for t in batch], queues)
        )
    for q in queues:
        q.close()
    every = [i for ids in claimed for i in ids]
    assert len(every) == len(set(every)) == 199  # all the rest, each by exactly one worker
    owners = rows(
        app_head_dsn,
        "SELECT count(DISTINCT lease_owner) FROM execution_tasks WHERE id <> ALL(%s)",
        ([high, low[0]],),
    )
    assert owners[0][0] >= 2


def test_a_stale_workers_late_completion_is_refused(app_head_dsn):
    stale = TaskQueue(app_head_dsn, owner="stale", lease_seconds=0.2)
    fresh = TaskQueue(app_head_dsn, owner="fresh")
    stale.enqueue_many([{"task_type": "idea", "payload": PAYLOAD} for _ in range(3)])
    old = stale.claim(10)
    time.sleep(0.3)
    assert stale.heartbeat(old) == [t.id for t in old]  # expired but not reaped: still the holder
    time.sleep(0.3)
    assert fresh.reap() == {"requeued": 3, "dead": 0}
    assert stale.heartbeat(old) == []
    new = fresh.claim(10)
    assert [t.id for t in new] == [t.id for t in old] and all(t.attempts == 2 for t in new)
    assert stale.complete([Completion(t, {"by": "stale"}, 1) for t in old]) == []
    assert stale.fail([Failure(t, "late", retryable=True) for t in old]).refused == [t.id for t in old]
    assert fresh.complete([Completion(t, {"by": "fresh"}, 1) for t in new]) == [t.id for t in new]
    assert rows(app_head_dsn, "SELECT DISTINCT status, result->>'by', lease_token FROM execution_tasks") == [
        ("succeeded", "fresh", None)
    ]
    stale.close()
    fresh.close()


def test_retries_back_off_exponentially_then_the_task_is_dead_with_its_last_error(app_head_dsn):
    with TaskQueue(app_head_dsn, backoff_base_seconds=10, backoff_cap_seconds=25) as q:
        task_id = q.enqueue("idea", PAYLOAD, max_attempts=3)
        delays = []
        for attempt in (1, 2):
            [task] = q.claim(1)
            assert task.attempts == attempt
            assert q.fail([Failure(task, f"boom {attempt}", retryable=True)]).requeued == [task_id]
            (delay,) = rows(
                app_head_dsn, "SELECT extract(epoch FROM available_at - now()) FROM execution_tasks"
            )[0]
            delays.append(float(delay))
            assert q.claim(1) == []  # not ready before its backoff
            rows(app_head_dsn, "UPDATE execution_tasks SET available_at = now() RETURNING id")
        [task] = q.claim(1)
        assert q.fail([Failure(task, "boom 3", retryable=True)]).dead == [task_id]
    assert 9 < delays[0] <= 10 and 19 < delays[1] <= 20
    assert rows(app_head_dsn, "SELECT status, attempts, error FROM execution_tasks") == [
        ("dead", 3, "gave up after 3 attempts: boom 3")
    ]


def test_a_permanent_failure_is_not_retried(app_head_dsn):
    with TaskQueue(app_head_dsn) as q:
        q.enqueue("idea", PAYLOAD)
        [task] = q.claim(1)
        assert q.fail([Failure(task, "payload.inputs.count must be an integer", retryable=False)]).failed == [
            task.id
        ]
    assert rows(app_head_dsn, "SELECT status, attempts, error FROM execution_tasks") == [
        ("failed", 1, "payload.inputs.count must be an integer")
    ]


def test_the_reaper_sends_an_expired_last_attempt_to_dead(app_head_dsn):
    with TaskQueue(app_head_dsn, lease_seconds=0.1) as q:
        q.enqueue("idea", PAYLOAD, max_attempts=1)
        q.enqueue("idea", PAYLOAD, max_attempts=2)
        q.claim(2)
        time.sleep(0.2)
        assert q.reap() == {"requeued": 1, "dead": 1}
        assert q.reap() == {"requeued": 0, "dead": 0}
    assert rows(
        app_head_dsn,
        "SELECT status, error LIKE 'lease of %% expired during attempt 1' FROM execution_tasks ORDER BY id",
    ) == [("dead", True), ("queued", True)]


def test_backlog_counts_ready_rows_per_type(app_head_dsn):
    with TaskQueue(app_head_dsn) as q:
        q.enqueue_many([{"task_type": t, "payload": PAYLOAD} for t in ("idea", "idea", "implementation")])
        assert {t: b["ready"] for t, b in q.backlog().items()} == {"idea": 2, "implementation": 1}
        assert list(q.backlog(["implementation"])) == ["implementation"]


def test_against_the_baseline_schema_the_queue_fails_naming_the_missing_column(app_dsn):
    with pytest.raises(SchemaBehindError, match=r"execution_tasks\.ai_model does not exist.*0002"):
        TaskQueue(app_dsn)


def test_a_step_rolled_back_to_end_a_deadlock_is_sent_again(app_head_dsn, caplog):
    """A claim that rechecks a row's newer version keeps its lock on it until its statement ends,
    and can wait on the settle it blocks: PostgreSQL rolls one statement back. Here another
    session plays that claim: it holds the lock on a row the worker settles, then waits on a row
    the worker's step has updated. The worker's step, waiting first, is the one rolled back, and
    is sent again once the other session is done."""
    with TaskQueue(app_head_dsn, owner="a") as q, psycopg2.connect(app_head_dsn) as other:
        q.enqueue_many([{"task_type": "idea", "payload": PAYLOAD} for _ in range(4)])
        first, second = q.claim(2)
        with other.cursor() as cur:
            # a wait that is not a deadlock fails the test, not hangs it
            cur.execute("SET lock_timeout = '10s'")
            cur.execute("SELECT id FROM execution_tasks WHERE id = %s FOR UPDATE", (second.id,))
        sent = q.statements
        with ThreadPoolExecutor(1) as pool:
            step = pool.submit(q.settle_and_claim, [Completion(first, 1, 1), Completion(second, 2, 1)], (), 2)
            while not rows(
                app_head_dsn,
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                (q.conn.info.backend_pid,),
            ):
                assert not step.done(), step.result()
                time.sleep(0.01)
            with other.cursor() as cur:  # waits on the worker's step, which waits on this session
                cur.execute("UPDATE execution_tasks SET updated_at = now() WHERE id = %s", (first.id,))
            other.commit()
            completed, _, claimed = step.result(timeout=30)
    assert completed == [first.id, second.id] and len(claimed) == 2
    # rolled back, then sent again; once more if the resend took its row lock back before the other
    # session's waiting update woke up (the same cycle again), at most DEADLOCK_RETRIES times
    retried = q.statements - sent - 1
    assert 1 <= retried <= DEADLOCK_RETRIES and caplog.text.count("chosen to end a deadlock") == retried
    assert rows(app_head_dsn, "SELECT status, count(*) FROM execution_tasks GROUP BY 1 ORDER BY 1") == [
        ("running", 2),
        ("succeeded", 2),
    ]


def test_a_step_reads_only_the_rows_it_settles_not_every_running_one(app_head_dsn):
    """Settling goes by primary key and lease token. With a test of status too, and statistics
    taken while nothing ran, the planner read the whole lease index (every running row) for the
    completions and again for the failures, at every step."""

    def lease_index_reads() -> int:  # a backend publishes its counters when it exits
        time.sleep(0.3)
        return rows(
            app_head_dsn,
            "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'execution_tasks_lease_idx'",
        )[0][0]

    with TaskQueue(app_head_dsn) as q:
        q.enqueue_many([{"task_type": "idea", "payload": PAYLOAD} for _ in range(300)])
        q.conn.cursor().execute("ANALYZE execution_tasks")  # statistics from an idle moment: none running
    with TaskQueue(app_head_dsn, owner="busy") as others:
        others.claim(290)  # held by another worker all along
    with TaskQueue(app_head_dsn, owner="me") as q:
        mine = q.claim(10)
    before = lease_index_reads()
    with TaskQueue(app_head_dsn, owner="me") as q:
        completed, outcome, _ = q.settle_and_claim(
            [Completion(t, 1, 1) for t in mine[:5]],
            [Failure(t, "x", retryable=False) for t in mine[5:]],
            0,
        )
        assert q.heartbeat(mine) == []  # settled: no lease left to extend
    assert len(completed) == 5 and len(outcome.failed) == 5
    assert lease_index_reads() == before


def test_a_step_is_planned_once_per_connection_and_its_plan_never_reads_the_whole_table(
    app_head_dsn,
):
    """The step runs as a prepared statement with a generic plan. Left to choose, PostgreSQL
    planned each step anew; and a claim that joined its rows to the table got a generic plan that
    read the whole table at every step (it guesses a tenth of the table for LIMIT $n)."""

    def rows_read_by_seq_scan() -> int:  # a backend publishes its counters when it exits
        time.sleep(0.3)
        return rows(
            app_head_dsn,
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'execution_tasks'",
        )[0][0]

    with TaskQueue(app_head_dsn) as q:
        q.enqueue_many([{"task_type": "idea", "payload": {"n": i}} for i in range(20_000)])
        q.conn.cursor().execute("ANALYZE execution_tasks")
    before = rows_read_by_seq_scan()
    with TaskQueue(app_head_dsn) as q:
        done: list[Completion] = []
        tokens: list[set[str]] = []  # each step's claim: one lease, one token for its rows
        for _ in range(8):
            completed, _, claimed = q.settle_and_claim(done, (), 50)
            assert len(completed) == len(done) and len(claimed) == 50
            done = [Completion(t, None, 1) for t in claimed]
            tokens.append({t.lease_token for t in claimed})
        with q.conn.cursor() as cur:
            cur.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements")
            assert cur.fetchall() == [(8, 0)]
    assert rows_read_by_seq_scan() == before
    assert all(len(t) == 1 for t in tokens) and len(set.union(*tokens)) == 8


def test_a_task_past_attempt_1024_neither_overflows_the_backoff_nor_loses_the_batch(app_dsn):
    """2 ** 1024 overflows float8: one such row failed the statement that settles a whole batch,
    losing its completions, again after every reap. The exponent stops at 60 (the delay at its
    cap long before). On a schema before revision 0009, whose CHECK now bounds max_attempts."""
    from include.migrations import upgrade

    upgrade(app_dsn, "0008")
    rows(
        app_dsn,
        "INSERT INTO execution_tasks (task_type, payload, attempts, max_attempts) VALUES"
        " ('idea', '{}', 1100, 5000), ('idea', '{}', 0, 5) RETURNING id",
    )
    with TaskQueue(app_dsn, backoff_base_seconds=5, backoff_cap_seconds=600) as q:
        veteran, other = q.claim(2)
        assert veteran.attempts == 1101
        done, failed, _ = q.settle_and_claim(
            [Completion(other, {"ok": True}, 1)], [Failure(veteran, "again", retryable=True)], 0
        )
    assert done == [other.id] and failed.requeued == [veteran.id]
    [(delay,)] = rows(
        app_dsn, "SELECT extract(epoch FROM available_at - now()) FROM execution_tasks WHERE attempts = 1101"
    )
    assert 590 < float(delay) <= 600


@pytest.mark.parametrize("max_attempts", [0, -1, 101, 10**6, True, 2.5])
def test_max_attempts_is_bounded_before_anything_is_written(app_head_dsn, max_attempts):
    with TaskQueue(app_head_dsn) as q:
        with pytest.raises(ValueError, match=r"task 1's max_attempts must be an integer from 1 to 100"):
            q.enqueue_many(
                [
                    {"task_type": "idea", "payload": PAYLOAD},
                    {"task_type": "idea", "payload": PAYLOAD, "max_attempts": max_attempts},
                ]
            )
        assert q.enqueue("idea", PAYLOAD, max_attempts=100)
    assert rows(app_head_dsn, "SELECT max_attempts FROM execution_tasks") == [(100,)]


@pytest.mark.parametrize(
    "settings",
    [{"backoff_base_seconds": float("nan")}, {"backoff_cap_seconds": float("inf")}, {"lease_seconds": 0}],
)
def test_the_queue_refuses_settings_it_cannot_compute_with(app_head_dsn, settings):
    with pytest.raises(ValueError, match="must be"):
        TaskQueue(app_head_dsn, **settings)


@pytest.mark.parametrize("at", ["before", "with"], ids=["before-0011", "with-0011"])
def test_enqueueing_wakes_listeners_once_per_task_type(app_dsn, at):
    """The library notifies itself (before revision 0011 too); with the revision's trigger, its
    identical notifications of the same transaction are delivered once."""
    from include.execution.task_queue import NOTIFY_CHANNEL
    from include.migrations import revision_info, upgrade

    upgrade(app_dsn, revision_info("0011").down_revision if at == "before" else "0011")
    listening = psycopg2.connect(app_dsn)
    listening.autocommit = True
    listening.cursor().execute(f"LISTEN {NOTIFY_CHANNEL}")
    with TaskQueue(app_dsn) as q:
        q.enqueue_many(
            [{"task_type": t, "payload": PAYLOAD} for t in ("idea", "idea", "implementation", "idea")]
        )
        assert sorted(notified(listening)) == ["idea", "implementation"]
        q.enqueue("idea", PAYLOAD, idempotency_key="once")
        assert notified(listening) == ["idea"]
        q.enqueue("idea", PAYLOAD, idempotency_key="once")  # nothing inserted: nothing to announce
        assert notified(listening) == []
    listening.close()


def test_a_listening_queue_waits_for_its_types_and_knows_when_the_next_task_falls_due(app_head_dsn):
    from datetime import UTC, datetime, timedelta

    with TaskQueue(app_head_dsn) as waiting, TaskQueue(app_head_dsn) as producer:
        assert waiting.seconds_until_due() is None
        waiting.listen()
        started = time.monotonic()
        assert not waiting.wait(0.3)
        assert 0.3 <= time.monotonic() - started < 1.0

        producer.enqueue("implementation", PAYLOAD)
        assert not waiting.wait(0.5, task_types=["idea"])  # another type's news does not wake it
        producer.enqueue("idea", PAYLOAD)
        started = time.monotonic()
        assert waiting.wait(5.0, task_types=["idea"])
        assert time.monotonic() - started < 0.5
        assert waiting.seconds_until_due(["idea"]) == 0.0

        waiting.claim(10)
        producer.enqueue("idea", PAYLOAD, available_at=datetime.now(UTC) + timedelta(seconds=30))
        assert 25 < waiting.seconds_until_due() <= 30
        assert waiting.seconds_until_due(["implementation"]) is None
