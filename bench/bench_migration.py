"""Revision 0002 (execution_tasks.ai_model): its exclusive lock is constant in table size, and
what concurrent writers feel while the whole revision runs.

1. `migration_lock_hold`: the time revision 0002's exclusive-lock step (ADD COLUMN and the NOT
   VALID check, one transaction) holds ACCESS EXCLUSIVE on execution_tasks with 1M rows against
   10k rows, median of BENCH_MIGRATION_ROUNDS (default 7). Goal: near 1 (no rewrite).
   Peer, same run, same tables: a column added with a volatile default
   (`DEFAULT gen_random_uuid()::text`, which rewrites the table), printed as
   `migration_lock_hold_vs_rewrite: ratio=X (ours/peer)` at 1M rows.
2. `migration_insert_p99`: p99 latency of single-row inserts from BENCH_MIGRATION_WRITERS
   (default 4) writers while the whole revision runs on 1M rows (throttled backfill, validation,
   concurrent index; `Settings()` defaults) against p99 over the same length of time with no
   migration, right after it. Each of BENCH_MIGRATION_P99_ROUNDS (default 1) rounds runs on a
   fresh copy of the same 1M-row database; the ratio printed is the median round's. Beside it:
   the migration's total seconds and the seconds its backfill spent paused (from
   `include.migrations.throttle.last_report()`); stderr has each round's step durations and the
   p99 of the inserts that started during each step.

A LocalStack (without Airflow) in a temp folder; the tables are built with generate_series.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

from include.migrations import HERE, Settings, throttle, upgrade
from include.migrations.runner import apply

ROUNDS = int(os.environ.get("BENCH_MIGRATION_ROUNDS", "7"))
WRITERS = int(os.environ.get("BENCH_MIGRATION_WRITERS", "4"))
P99_ROUNDS = int(os.environ.get("BENCH_MIGRATION_P99_ROUNDS", "1"))
REVISION_0002 = HERE / "versions" / "0002_execution_tasks_ai_model.py"
PEER_ADD = "ALTER TABLE execution_tasks ADD COLUMN ai_model text DEFAULT gen_random_uuid()::text"
DROP = (
    "ALTER TABLE execution_tasks DROP CONSTRAINT IF EXISTS execution_tasks_ai_model_format, "
    "DROP COLUMN IF EXISTS ai_model"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def revision_0002():
    spec = importlib.util.spec_from_file_location("revision_0002", REVISION_0002)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def admin_sql(stack, *statements: str) -> None:
    admin = psycopg2.connect(stack.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    admin.close()


def make_table(stack, name: str, rows: int) -> str:
    admin_sql(stack, f'CREATE DATABASE "{name}" OWNER app')
    dsn = stack.app_dsn(name)
    upgrade(dsn, "0001")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO execution_tasks (task_type, payload, status) "
            "SELECT 'implementation', CASE WHEN g %% 3 = 0 THEN '{\"ai_model\": \"gpt-4.1\"}'::jsonb "
            "ELSE '{\"prompt\": \"x\"}'::jsonb END, 'succeeded' FROM generate_series(1, %s) g",
            (rows,),
        )
        cur.execute("VACUUM ANALYZE execution_tasks")
    conn.close()
    return dsn


def lock_hold(dsn: str, statement: str) -> float:
    """Seconds from the ALTER's start to its commit: how long ACCESS EXCLUSIVE is held."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '5s'")
            conn.commit()
            start = time.perf_counter()
            cur.execute(statement)
            conn.commit()
            held = time.perf_counter() - start
            cur.execute(DROP)
            conn.commit()
    finally:
        conn.close()
    return held


def writers(dsn: str, stop: threading.Event, inserts: list[tuple[float, float]]) -> list[threading.Thread]:
    """Each insert as (its start, its latency), in `time.perf_counter()` seconds."""

    def write():
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                start = time.perf_counter()
                cur.execute("INSERT INTO execution_tasks (task_type, payload) VALUES ('idea', '{}')")
                inserts.append((start, time.perf_counter() - start))
        conn.close()

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    return threads


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def between(inserts: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [latency for began, latency in inserts if start <= began < end]


def autovacuums(dsn: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'execution_tasks'")
        count = cur.fetchone()[0]
    conn.close()
    return count


def insert_round(stack, template: str, i: int) -> dict:
    """Revision 0002 on a fresh copy of `template` with the writers going, then the writers
    alone for as long; the two p99s and what the throttle did."""
    name = f"p99_round_{i}"
    admin_sql(stack, f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER app', "CHECKPOINT")
    dsn = stack.app_dsn(name)
    load = os.getloadavg()[0]
    try:
        inserts, stop = [], threading.Event()
        threads = writers(dsn, stop, inserts)
        time.sleep(1)  # connected and going
        start = time.perf_counter()
        apply(dsn, "0002", Settings())
        end = time.perf_counter()
        report = throttle.last_report()
        vacuums_during = autovacuums(dsn)
        time.sleep(end - start)
        stop.set()
        [t.join() for t in threads]
        vacuums_after = autovacuums(dsn) - vacuums_during
    finally:
        admin_sql(stack, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elapsed = end - start
    during, without = between(inserts, start, end), between(inserts, end, 2 * end - start)
    # which steps the slow inserts came from: those over 1.5 x the p99 without, as a share of
    # all inserts during the migration (over 1 % in all, and the ratio is over 1.5)
    slow = 1.5 * p99(without)
    steps = []
    for phase, (a, b) in (report.phases if report else {}).items():
        step = between(inserts, a, b)
        if len(step) >= 2:
            share = sum(latency > slow for latency in step) / len(during)
            steps.append(f"{phase} {b - a:.1f} s: p99 {p99(step) * 1e3:.1f} ms, {share:.2%} slow")
    log(
        f"round {i + 1} (load {load:.2f}): revision 0002 on 1M rows took {elapsed:.1f} s "
        f"({report.summary() if report else 'no throttle report'}); "
        f"inserts: {len(during)} during (p99 {p99(during) * 1e3:.2f} ms, max {max(during) * 1e3:.1f} ms), "
        f"{len(without)} without (p99 {p99(without) * 1e3:.2f} ms, max {max(without) * 1e3:.1f} ms); "
        f"by step: {'; '.join(steps) or 'n/a'}; autovacuums of the table: {vacuums_during} during, "
        f"{vacuums_after} after"
    )
    return {
        "ratio": p99(during) / p99(without),
        "elapsed": elapsed,
        "paused": report.pause_s if report else 0.0,
    }


def main() -> None:
    from devstack.stack import LocalStack

    os.environ["SEED_SCALE"] = "0.001"  # the stack's own demo database is not used here
    ours_step = revision_0002().ADD_COLUMN
    with tempfile.TemporaryDirectory(prefix="bench_migration_") as tmp:
        stack = LocalStack(Path(tmp) / "stack", with_airflow=False, api_port=0)
        try:
            stack.start()
            small, large = (
                make_table(stack, "rows_10k", 10_000),
                make_table(stack, "rows_1m", 1_000_000),
            )
            make_table(stack, "rows_1m_p99", 1_000_000)  # copied for every p99 round, never changed
            lock_hold(small, ours_step), lock_hold(large, ours_step)  # warm-up, not counted
            ours = {k: [] for k in ("10k", "1m")}
            for i in range(ROUNDS):  # interleaved, alternating which size goes first
                sides = [("10k", small), ("1m", large)]
                for size, dsn in sides if i % 2 == 0 else sides[::-1]:
                    ours[size].append(lock_hold(dsn, ours_step))
            peer = {
                "10k": [lock_hold(small, PEER_ADD) for _ in range(3)],
                "1m": [lock_hold(large, PEER_ADD) for _ in range(3)],
            }
            o10k, o1m = statistics.median(ours["10k"]), statistics.median(ours["1m"])
            p10k, p1m = statistics.median(peer["10k"]), statistics.median(peer["1m"])
            log(
                f"lock held: ours {o10k * 1e3:.1f} ms at 10k rows, {o1m * 1e3:.1f} ms at 1M; "
                f"volatile default {p10k * 1e3:.1f} ms at 10k, {p1m * 1e3:.1f} ms at 1M"
            )
            print(f"migration_lock_hold: ratio={o1m / o10k:.2f} (1M rows / 10k rows; goal near 1)")
            print(
                f"migration_lock_hold_vs_rewrite: ratio={o1m / p1m:.4f} (ours/peer: volatile default, 1M "
                f"rows)"
            )

            rounds = sorted(
                (insert_round(stack, "rows_1m_p99", i) for i in range(P99_ROUNDS)), key=lambda r: r["ratio"]
            )
            median = rounds[len(rounds) // 2]
            print(
                f"migration_insert_p99: ratio={median['ratio']:.2f} (during migration / without; "
                f"migration {median['elapsed']:.1f} s, throttled {median['paused']:.1f} s)"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
