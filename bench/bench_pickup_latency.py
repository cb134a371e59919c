"""Pickup latency: enqueue to claim of tasks that arrive at random times, event-driven task_batch
against today's scheduled task_batch, on the same stack in the same run, and pgqueuer's own
LISTEN-based pickup as the floor.

One full local stack (scheduler, triggerer, LocalExecutor; every other DAG paused), the app
database at head. Each side gets tasks enqueued one at a time at random times (exponential gaps
of mean BENCH_PICKUP_GAP_SECONDS, default 10, from a fixed seed) for BENCH_PICKUP_MINUTES (default
5), and each task's pickup is its claim minus its enqueueing: for task_batch by the database's
clock (`started_at - created_at`, the claim statement's start), for pgqueuer the job's start in
its handler (the worker's clock, the same machine's) minus its `created`, a millisecond or two
more of the path than ours:

- ours (event-driven): task_batch as it ships, on its Asset or its schedule: the triggerer's
  QueuedTasksTrigger starts a run on the queue's notification, and a drain that emptied the
  queue stays hot for `idle_seconds` (60 by default) and claims what comes within milliseconds;
- scheduled (today's task_batch): the same DAG on its time schedule alone (`$TASK_BATCH_SCHEDULE`,
  every 5 minutes by default; BENCH_PICKUP_SCHEDULE sets it for both sides), as it ran before:
  the triggerer stopped, so no event starts a run, and the dag-processor restarted with
  `TASK_BATCH_IDLE_SECONDS=0`, so a drain ends as soon as the queue is empty;
- floor: pgqueuer 1.6 (asyncpg), one `QueueManager` worker, which LISTENs on its own channel
  and dequeues when a job's NOTIFY arrives: a queue library inside a long-running worker
  process, with no orchestration to start.

Prints `pickup_latency_p95: ratio=X (ours/scheduled)` (goal <= 0.05) with each side's p50, p95
and count, and pgqueuer's beside them; then `pickup_latency_p50: ratio=...` the same way.
Progress goes to stderr. About BENCH_PICKUP_MINUTES x 3 plus a schedule period and the stack's
start (some 25 minutes at the defaults).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.error
from contextlib import closing
from pathlib import Path

MINUTES = float(os.environ.get("BENCH_PICKUP_MINUTES", "5"))
GAP_SECONDS = float(os.environ.get("BENCH_PICKUP_GAP_SECONDS", "10"))
SCHEDULE = os.environ.get("BENCH_PICKUP_SCHEDULE", "*/5 * * * *")
SEED = int(os.environ.get("BENCH_PICKUP_SEED", "29"))

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "plugins"),
]
from bench_task_batch_overhead import api, log, query, token_and_dags  # noqa: E402
from bench_task_queue import as_url, peer_install  # noqa: E402


def arrivals(rng: random.Random) -> list[float]:
    """Seconds from the start of a side at which its tasks are enqueued."""
    at, times = 0.0, []
    while (at := at + rng.expovariate(1 / GAP_SECONDS)) < MINUTES * 60:
        times.append(at)
    return times


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summary(values: list[float]) -> str:
    return (
        f"p50={percentile(values, 50):.3f}s p95={percentile(values, 95):.3f}s max={max(values):.3f}s "
        f"n={len(values)}"
    )


def run_side(dsn: str, side: str, times: list[float]) -> list[float]:
    """Enqueue one task at each of `times`, wait until all are claimed: their pickups (seconds)."""
    from include.execution.task_queue import TaskQueue

    began, ids = time.monotonic(), []
    with TaskQueue(dsn) as queue:
        for i, at in enumerate(times):
            time.sleep(max(0.0, began + at - time.monotonic()))
            payload = {"prompt": f"pickup {side} {i}", "repo": "r", "inputs": {"count": 3}}
            ids.append(queue.enqueue("idea", payload, ai_model="gpt-4.1", idempotency_key=f"{side}-{i}"))
    log(f"{side}: {len(ids)} tasks enqueued over {time.monotonic() - began:.0f}s; waiting for their claims")
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        rows = pickups_of(dsn, ids)
        if len(rows) == len(ids):
            return [seconds for (seconds,) in rows]
        time.sleep(1)
    raise SystemExit(f"{side}: tasks not claimed within an hour")


def pickups_of(dsn: str, ids: list[int]) -> list[tuple[float]]:
    import psycopg2

    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(
            "SELECT extract(epoch FROM started_at - created_at)::float8 FROM execution_tasks"
            " WHERE id = ANY(%s) AND started_at IS NOT NULL",
            (ids,),
        )
        return cur.fetchall()


def peer_worker(dsn: str, ready, stop, pickups) -> None:
    from datetime import UTC, datetime

    import asyncpg
    from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    async def run() -> None:
        conn = await asyncpg.connect(as_url(dsn))
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("pickup")
        async def pickup(job) -> None:
            pickups.put((datetime.now(UTC) - job.created).total_seconds())

        async def stop_when_told() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)
            qm.shutdown.set()

        ready.set()
        await asyncio.gather(qm.run(), stop_when_told())
        await conn.close()

    asyncio.run(run())


def run_peer(dsn: str, times: list[float]) -> list[float]:
    import asyncpg
    from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
    from pgqueuer.queries import Queries

    ctx = mp.get_context("spawn")
    ready, stop, pickups = ctx.Event(), ctx.Event(), ctx.Queue()
    worker = ctx.Process(target=peer_worker, args=(dsn, ready, stop, pickups))
    worker.start()
    ready.wait(60)
    time.sleep(2)  # its LISTEN is in place

    async def enqueue() -> None:
        conn = await asyncpg.connect(as_url(dsn))
        queries, began = Queries(AsyncpgDriver(conn)), time.monotonic()
        for i, at in enumerate(times):
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            await queries.enqueue(["pickup"], [str(i).encode()], [0])
        await conn.close()

    asyncio.run(enqueue())
    found = [pickups.get(timeout=120) for _ in times]
    stop.set()
    worker.join(60)
    return found


def wait_until_idle(stack, what: str) -> None:
    """No task_batch run in flight and nothing ready in the queue."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        try:
            token, dags = token_and_dags(stack)
            runs = api(f"{dags}/task_batch/dagRuns?state=running&state=queued", token)["total_entries"]
            ready = query(
                stack.app_dsn(), "SELECT count(*) FROM execution_tasks WHERE status IN ('queued', 'running')"
            )[0][0]
            if runs == 0 and ready == 0:
                return
        except (urllib.error.URLError, TimeoutError):
            pass
        time.sleep(2)
    raise SystemExit(f"task_batch never became idle ({what})")


def today_s_task_batch(stack) -> None:
    """task_batch as it ran before: no triggerer (no event starts a run), and drains that end as
    soon as the queue is empty. `idle_seconds` defaults to TASK_BATCH_IDLE_SECONDS where the DAG
    file is parsed: by the dag-processor, and again in each task's process (forked from the
    scheduler, with the LocalExecutor), so both restart with it set to 0."""
    stack.supervisor.stop("triggerer")
    for name in ("dag-processor", "scheduler"):
        service = stack.supervisor.stop(name)
        stack.supervisor.start(
            dataclasses.replace(service, env={**service.env, "TASK_BATCH_IDLE_SECONDS": "0"})
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            token, dags = token_and_dags(stack)
            params = api(f"{dags}/task_batch/details", token)["params"]
            if params["idle_seconds"]["value"] == 0:
                return
        except (urllib.error.URLError, TimeoutError, KeyError):
            pass
        time.sleep(2)
    raise SystemExit("the dag-processor did not parse task_batch again with idle_seconds 0")


def main() -> None:
    from bench_task_batch_overhead import pause_other_dags

    from devstack.stack import LocalStack
    from include.migrations import upgrade

    os.environ["SEED_SCALE"] = "0.001"
    os.environ["TASK_BATCH_SCHEDULE"] = SCHEDULE
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="bench_pickup_") as tmp:
        stack = LocalStack(Path(tmp) / "stack", with_airflow=True, api_port=0)
        try:
            t = time.perf_counter()
            stack.start()
            log(f"stack up in {time.perf_counter() - t:.0f}s")
            dsn = stack.app_dsn()
            upgrade(dsn, "head")
            peer_install(dsn)
            log(f"paused {pause_other_dags(stack)}")
            wait_until_idle(stack, "the seeded backlog")
            ours = run_side(dsn, "event", arrivals(rng))
            log(f"event-driven: {summary(ours)}")
            wait_until_idle(stack, "after the event-driven side")
            floor = run_peer(dsn, arrivals(rng))
            log(f"pgqueuer: {summary(floor)}")
            today_s_task_batch(stack)
            wait_until_idle(stack, "before the scheduled side")
            scheduled = run_side(dsn, "scheduled", arrivals(rng))
            log(f"scheduled: {summary(scheduled)}")
            for q in (95, 50):
                o, s, f = (percentile(v, q) for v in (ours, scheduled, floor))
                print(
                    f"pickup_latency_p{q}: ratio={o / s:.2e} (ours/scheduled: event-driven task_batch / "
                    f"task_batch on its schedule alone, {SCHEDULE!r}) ours={o:.3f}s scheduled={s:.1f}s "
                    f"pgqueuer={f:.4f}s (LISTEN-based floor, ours/pgqueuer={o / f:.2f}) "
                    f"tasks={len(ours)}/{len(scheduled)}/{len(floor)} minutes={MINUTES:g} "
                    f"gap_s={GAP_SECONDS:g}" + (" goal<=0.05" if q == 95 else ""),
                    flush=True,
                )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
