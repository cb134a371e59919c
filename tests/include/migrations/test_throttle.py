"""The backfill throttle: its decisions from given timings (no database), then revision 0002's
throttled backfill on the real PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import psycopg2
import pytest

from include.migrations import Settings, current, upgrade
from include.migrations import throttle as throttling
from include.migrations.throttle import Observation, Throttle, ThrottleConfig

CONFIG = ThrottleConfig(
    initial_batch=1000,
    target_batch_s=0.1,
    min_batch=100,
    max_batch=50_000,
    nice_ratio=4.0,
    max_pause_s=1.0,
    budget_s=10.0,
    probe_factor=3.0,
    probe_slack_s=0.002,
)


def observe(throttle: Throttle, seconds: float = 0.1, ids: int | None = None, **kw) -> throttling.Decision:
    return throttle.observe(Observation(seconds=seconds, ids=ids or throttle.batch, **kw))


# chunk time ---------------------------------------------------------------------------------


def test_fast_batches_grow_at_most_twofold_per_batch_up_to_the_maximum():
    throttle = Throttle(CONFIG)
    sizes = [observe(throttle, seconds=0.001).batch for _ in range(8)]
    assert sizes == [2000, 4000, 8000, 16_000, 32_000, 50_000, 50_000, 50_000]


def test_slow_batches_shrink_toward_the_target_time_but_not_below_the_minimum():
    throttle = Throttle(dataclasses.replace(CONFIG, initial_batch=10_000))
    # 10k ids in 1 s: 10k ids/s, so 0.1 s is 1000 ids
    assert observe(throttle, seconds=1.0).batch == 1000
    throttle = Throttle(dataclasses.replace(CONFIG, initial_batch=10_000))
    assert observe(throttle, seconds=100.0).batch == CONFIG.min_batch


def test_the_rate_is_a_decaying_average_so_one_odd_batch_moves_the_size_only_part_way():
    throttle = Throttle(dataclasses.replace(CONFIG, initial_batch=10_000))
    for _ in range(20):
        steady = observe(throttle, seconds=0.1).batch  # 100k ids/s: 0.1 s is 10k ids
    assert steady == 10_000
    after_one_slow = observe(throttle, seconds=1.0, ids=10_000).batch  # one batch at 10k ids/s
    assert 1000 < after_one_slow < 10_000


def test_a_starting_size_below_the_minimum_is_its_own_floor_and_target_zero_keeps_the_size():
    throttle = Throttle(dataclasses.replace(CONFIG, initial_batch=50))
    assert observe(throttle, seconds=100.0).batch == 50
    fixed = Throttle(dataclasses.replace(CONFIG, target_batch_s=0))
    assert [observe(fixed, seconds=s).batch for s in (0.001, 5.0, 0.5)] == [1000, 1000, 1000]


# pauses -------------------------------------------------------------------------------------


def test_no_pause_on_a_quiet_database_and_a_nice_ratio_pause_while_others_are_active():
    throttle = Throttle(CONFIG)
    quiet = observe(throttle, seconds=0.1, active=0, probe_s=0.001)
    assert (quiet.pause_s, quiet.reason) == (0.0, "quiet")
    busy = observe(throttle, seconds=0.1, active=3, probe_s=0.001)
    assert busy.pause_s == pytest.approx(0.4) and busy.reason == "busy"
    assert throttle.report.pause_s == pytest.approx(0.4) and throttle.report.paused_batches == 1


def test_lock_waiters_double_the_pause_batch_after_batch_up_to_the_maximum_then_it_resets():
    throttle = Throttle(CONFIG)
    pauses = [observe(throttle, seconds=0.05, active=1, waiting=2).pause_s for _ in range(5)]
    assert pauses == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])
    assert throttle.report.contended_batches == 5
    calm = observe(throttle, seconds=0.05, active=1, waiting=0)
    assert calm.reason == "busy" and calm.pause_s == pytest.approx(0.2)
    again = observe(throttle, seconds=0.05, active=1, waiting=1)
    assert again.reason == "contended" and again.pause_s == pytest.approx(0.2)


def test_contention_pauses_even_when_the_nice_ratio_is_zero():
    throttle = Throttle(dataclasses.replace(CONFIG, nice_ratio=0))
    assert observe(throttle, seconds=0.05, active=1).pause_s == 0
    contended = observe(throttle, seconds=0.05, active=1, waiting=1)
    assert contended.reason == "contended" and contended.pause_s == pytest.approx(CONFIG.target_batch_s)


def test_a_probe_slower_than_its_fastest_by_the_factor_and_slack_is_contention():
    throttle = Throttle(CONFIG)
    for probe in (0.002, 0.001, 0.0012):  # the fastest seen is the reference: 1 ms
        assert observe(throttle, active=1, probe_s=probe).reason == "busy"
    assert observe(throttle, active=1, probe_s=0.0049).reason == "busy"  # under 3 x 1 ms + 2 ms
    assert observe(throttle, active=1, probe_s=0.0051).reason == "contended"
    assert observe(throttle, active=0, probe_s=0.0500).reason == "contended"  # even with no one active


def test_pauses_stop_when_the_budget_is_spent_and_the_last_pause_is_cut_to_fit():
    throttle = Throttle(dataclasses.replace(CONFIG, budget_s=1.0))
    pauses = [observe(throttle, seconds=0.1, active=1).pause_s for _ in range(4)]
    assert pauses == pytest.approx([0.4, 0.4, 0.2, 0.0])
    spent = observe(throttle, seconds=0.1, active=1, waiting=5)
    assert (spent.pause_s, spent.reason) == (0.0, "budget spent")
    assert throttle.report.budget_spent and throttle.report.pause_s == pytest.approx(1.0)
    assert throttle.report.paused_batches == 3


def test_no_pause_after_the_last_batch():
    throttle = Throttle(CONFIG)
    decision = throttle.observe(Observation(seconds=0.1, ids=1000, active=5, waiting=5), more=False)
    assert decision.pause_s == 0 and throttle.report.pause_s == 0 and throttle.report.batches == 1


# the loop -----------------------------------------------------------------------------------


def test_run_covers_every_id_once_in_adjacent_ranges_and_sleeps_what_it_reports():
    spans, sleeps = [], []

    def batch(lo: int, size: int) -> Observation:
        spans.append((lo, lo + size))
        return Observation(seconds=size / 100_000, ids=size, rows=size // 3, active=1)

    throttle = Throttle(dataclasses.replace(CONFIG, initial_batch=700))
    report = throttling.run(throttle, 5, 123_456, batch, sleep=sleeps.append)
    assert spans[0][0] == 5 and spans[-1][1] > 123_456
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert report.batches == len(spans) and report.final_batch == throttle.batch
    assert len(sleeps) == len(spans) - 1  # none after the last
    assert sum(sleeps) == pytest.approx(report.pause_s) and report.paused_batches == len(sleeps)
    assert report.rows == sum((b - a) // 3 for a, b in spans)


def test_run_with_nothing_to_do_makes_no_batch():
    report = throttling.run(Throttle(CONFIG), 1, 0, lambda lo, size: pytest.fail("no batch expected"))
    assert report.batches == 0 and report.pause_s == 0


def test_settings_give_the_throttle_its_config():
    settings = Settings(
        backfill_batch_size=2500,
        backfill_target_batch_s=0.2,
        backfill_nice_ratio=3,
        backfill_max_pause_s=2,
        backfill_throttle_budget_s=60,
    )
    config = throttling.config_from(settings)
    assert (config.initial_batch, config.target_batch_s, config.nice_ratio) == (2500, 0.2, 3.0)
    assert (config.max_pause_s, config.budget_s) == (2.0, 60.0)


def test_the_report_summary_names_batches_final_size_and_pause_time(caplog):
    report = throttling.Report("x", batches=12, rows=400, final_batch=3000, pause_s=2.5, paused_batches=11)
    report.phases["validate"] = (10.0, 11.5)
    with caplog.at_level(logging.INFO, logger=throttling.__name__):
        throttling.record(report)
    assert throttling.last_report() is report
    assert caplog.messages == [
        "x: 12 batches, 400 rows, final batch 3000 ids, paused 2.5 s after 11 batches (0 contended); "
        "validate 1.5 s"
    ]


# revision 0002 on the real PostgreSQL --------------------------------------------------------

ROWS = 20_000
BATCH = 500
# every batch pauses (another session is always active, and the nice ratio makes the pause
# reach the cap), 20 ms each, until the 0.2 s budget is spent: ten pauses, then full speed
THROTTLED = Settings(
    lock_timeout_ms=2000,
    backfill_batch_size=BATCH,
    backfill_target_batch_s=0,  # keep the size: the batch count is known
    backfill_nice_ratio=1000,
    backfill_max_pause_s=0.02,
    backfill_throttle_budget_s=0.2,
)


def _query(dsn: str, sql: str):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return rows


@pytest.fixture
def tasks(app_dsn) -> str:
    """ROWS tasks: a third name a model, some with names that break the format, the rest none."""
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO execution_tasks (task_type, payload, status)
            SELECT 'implementation',
                   CASE WHEN g %% 100 = 1 THEN '{"ai_model": "NOT a model name!"}'
                        WHEN g %% 100 = 2 THEN jsonb_build_object('ai_model', repeat('a', 65))
                        WHEN g %% 3 = 0 THEN jsonb_build_object('ai_model', 'gpt-4.1-' || (g %% 7))
                        ELSE '{"prompt": "x"}' END,
                   'succeeded'
              FROM generate_series(1, %s) g
            """,
            (ROWS,),
        )
    conn.close()
    return app_dsn


@pytest.fixture
def busy_during_backfill(app_dsn, monkeypatch):
    """Another session runs a statement all through the backfill, so the throttle sees a busy
    database; it ends with the backfill (its snapshot would hold up the concurrent index)."""
    conn = psycopg2.connect(app_dsn)
    conn.autocommit = True
    thread = threading.Thread(target=_sleep_until_cancelled, args=(conn,))
    thread.start()
    for _ in range(200):  # until pg_stat_activity shows it running
        if _query(app_dsn, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'")[0][
            0
        ]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the busy session did not start")
    run = throttling.run

    def run_then_stop(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        finally:
            conn.cancel()
            thread.join()

    monkeypatch.setattr(throttling, "run", run_then_stop)
    yield
    conn.cancel()
    thread.join()
    conn.close()


def _sleep_until_cancelled(conn) -> None:
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT pg_sleep(600)")
        except psycopg2.errors.QueryCanceled:
            pass


def _expected(dsn: str) -> int:
    return _query(
        dsn,
        "SELECT count(*) FROM execution_tasks WHERE payload->>'ai_model' ~ '^[a-z0-9][a-z0-9._:/-]{0,63}$'",
    )[0][0]


def _check_filled(dsn: str) -> None:
    assert _query(dsn, "SELECT count(ai_model) FROM execution_tasks") == [(_expected(dsn),)]
    assert _query(
        dsn,
        "SELECT count(*) FROM execution_tasks WHERE ai_model IS DISTINCT FROM (payload->>'ai_model') "
        "AND payload->>'ai_model' ~ '^[a-z0-9][a-z0-9._:/-]{0,63}$'",
    ) == [(0,)]
    # names that break the format (a capital and a blank; too long) stay NULL
    assert _query(
        dsn,
        "SELECT count(*), count(ai_model) FROM execution_tasks "
        "WHERE payload->>'ai_model' = 'NOT a model name!' OR length(payload->>'ai_model') = 65",
    ) == [(400, 0)]
    assert _query(
        dsn, "SELECT convalidated FROM pg_constraint WHERE conname = 'execution_tasks_ai_model_format'"
    ) == [(True,)]
    assert _query(
        dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'execution_tasks_ai_model_idx'::regclass"
    ) == [(True,)]


def test_throttled_backfill_fills_every_row_and_reports_its_pauses(tasks, busy_during_backfill, caplog):
    with caplog.at_level(logging.INFO, logger=throttling.__name__):
        upgrade(tasks, "0002", settings=THROTTLED)
    assert current(tasks) == "0002"
    _check_filled(tasks)
    report = throttling.last_report()
    assert report.batches == ROWS // BATCH and report.final_batch == BATCH
    assert report.rows == _expected(tasks)
    assert report.paused_batches == 10 and report.pause_s == pytest.approx(0.2)
    assert report.budget_spent
    assert list(report.phases) == ["backfill", "vacuum", "validate", "index"]
    assert any(
        m.startswith(f"revision 0002 backfill: {ROWS // BATCH} batches") and "paused 0.2 s" in m
        for m in caplog.messages
    )


def test_an_interrupted_backfill_resumes_where_it_stopped(tasks, monkeypatch):
    observe = Throttle.observe

    def interrupt_after_ten(self, obs, more=True):
        if self.report.batches == 10:
            raise RuntimeError("interrupted")
        return observe(self, obs, more)

    monkeypatch.setattr(Throttle, "observe", interrupt_after_ten)
    with pytest.raises(RuntimeError, match="interrupted"):
        upgrade(tasks, "0002", settings=THROTTLED)
    assert current(tasks) == "0001"  # not stamped
    # the column and the first eleven ranges (the eleventh committed before the interruption)
    filled = _query(
        tasks, "SELECT count(ai_model), max(id) FILTER (WHERE ai_model IS NOT NULL) FROM execution_tasks"
    )
    assert 0 < filled[0][0] < _expected(tasks) and filled[0][1] <= 11 * BATCH
    monkeypatch.setattr(Throttle, "observe", observe)
    upgrade(tasks, "0002", settings=THROTTLED)
    assert current(tasks) == "0002"
    _check_filled(tasks)
    report = throttling.last_report()
    assert report.rows == _expected(tasks) - filled[0][0]  # only the rows left over
