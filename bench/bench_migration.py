"""Revision 0002 (execution_tasks.ai_model): its exclusive lock is constant in table size, and
what concurrent writers feel while the whole revision runs.

1. `migration_lock_hold`: the time revision 0002's exclusive-lock step (ADD COLUMN and the NOT
   VALID check, one transaction) holds ACCESS EXCLUSIVE on execution_tasks with 1M rows against
   10k rows, median of BENCH_MIGRATION_ROUNDS (default 7). Goal: near 1 (no rewrite).
   Peer, same run, same tables: a column added with a volatile default
   (`DEFAULT gen_random_uuid()::text`, which rewrites the table), printed as
   `migration_lock_hold_vs_rewrite: ratio=X (ours/peer)` at 1M rows.
2. `migration_insert_p99`: p99 latency of single-row inserts from BENCH_MIGRATION_WRITERS
   (default 4) writers while the whole revision runs on 1M rows (backfill, validation,
   concurrent index) against p99 over the same length of time with no migration.

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

from include.migrations import HERE, Settings, upgrade
from include.migrations.runner import apply

ROUNDS = int(os.environ.get("BENCH_MIGRATION_ROUNDS", "7"))
WRITERS = int(os.environ.get("BENCH_MIGRATION_WRITERS", "4"))
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


def make_table(stack, name: str, rows: int) -> str:
    admin = psycopg2.connect(stack.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER app')
    admin.close()
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


def writers(dsn: str, stop: threading.Event, latencies: list[float]) -> list[threading.Thread]:
    def write():
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                start = time.perf_counter()
                cur.execute("INSERT INTO execution_tasks (task_type, payload) VALUES ('idea', '{}')")
                latencies.append(time.perf_counter() - start)
        conn.close()

    threads = [threading.Thread(target=write) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    return threads


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


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

            during, without, stop = [], [], threading.Event()
            threads = writers(large, stop, during)
            start = time.perf_counter()
            apply(large, "0002", Settings())
            elapsed = time.perf_counter() - start
            stop.set()
            [t.join() for t in threads]
            stop = threading.Event()
            threads = writers(large, stop, without)
            time.sleep(elapsed)
            stop.set()
            [t.join() for t in threads]
            log(
                f"revision 0002 on 1M rows took {elapsed:.1f} s; inserts: {len(during)} during "
                f"(p99 {p99(during) * 1e3:.1f} ms, max {max(during) * 1e3:.1f} ms), {len(without)} without "
                f"(p99 {p99(without) * 1e3:.1f} ms, max {max(without) * 1e3:.1f} ms)"
            )
            print(
                f"migration_insert_p99: ratio={p99(during) / p99(without):.2f} (during migration / without)"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
