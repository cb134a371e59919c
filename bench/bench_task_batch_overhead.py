"""Airflow's overhead: the task_batch DAG run by the scheduler against the queue library direct.

BENCH_OVERHEAD_TASKS execution tasks (default 200000, the issue's size: at 20000 the run's fixed
cost, a few seconds of scheduling and task start-up, is a third of the DAG's time) whose
handler waits BENCH_OVERHEAD_LATENCY_MS (default 5) on the reference executor (I/O-bound), with
distinct inputs and the cache emptied before each run (every call a cache miss on both sides),
drained:

- peer: `include.execution.drain.drain` in BENCH_OVERHEAD_PARALLELISM processes (default 4), each
  with BENCH_OVERHEAD_CONCURRENCY handler threads (default 16) and BENCH_OVERHEAD_BATCH claims
  (default 200), through the same executor client and Redis cache as the DAG;
- ours: `task_batch` triggered through the REST API of a full local stack (scheduler,
  LocalExecutor) with the same parallelism, concurrency and batch size, timed from the trigger
  to the run's success as the API reports it.

BENCH_OVERHEAD_ROUNDS (default 2) interleaved rounds, medians; the DAG's schedule is set to
yearly, the triggerer stopped (no event-driven run: manual runs with `idle_seconds` 0 only) and
every other DAG paused, so that only the benchmark's runs happen, and the
dag-processor parses each file every 30 s, Airflow's default (the dev stack's 10 s, for quick
edits, costs about a sixth of a core all the time). Goal: ratio (DAG / direct wall time) <= 1.3.
Prints `task_batch_overhead: ratio=X (ours/peer)`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

TASKS = int(os.environ.get("BENCH_OVERHEAD_TASKS", "200000"))
LATENCY_MS = os.environ.get("BENCH_OVERHEAD_LATENCY_MS", "5")
PARALLELISM = int(os.environ.get("BENCH_OVERHEAD_PARALLELISM", "4"))
CONCURRENCY = int(os.environ.get("BENCH_OVERHEAD_CONCURRENCY", "16"))
BATCH = int(os.environ.get("BENCH_OVERHEAD_BATCH", "200"))
ROUNDS = int(os.environ.get("BENCH_OVERHEAD_ROUNDS", "2"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def api(url: str, token: str | None = None, body: dict | None = None, method: str | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def query(dsn: str, sql: str):
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def refill(dsn: str, redis_port: int) -> None:
    """The same tasks for every run, and an empty cache: each run's calls all miss (else the
    side that runs second would be answered from the first side's cache)."""
    import redis

    from include.execution.task_queue import TaskQueue

    redis.Redis(host="127.0.0.1", port=redis_port).flushdb()
    query(dsn, "TRUNCATE execution_tasks")
    with TaskQueue(dsn) as q:
        for lo in range(0, TASKS, 5000):
            q.enqueue_many(
                [
                    {
                        "task_type": "idea",
                        "ai_model": "gpt-4.1",
                        "payload": {
                            "prompt": f"Suggest ideas #{i}",
                            "repo": "r",
                            "inputs": {"count": 3},
                        },
                    }
                    for i in range(lo, min(TASKS, lo + 5000))
                ]
            )
    query(dsn, "VACUUM ANALYZE execution_tasks")


def executions(stack) -> int:
    """Calls the reference executor has answered so far."""
    return api(f"http://127.0.0.1:{stack.ports['executor']}/admin/stats")["executions"]


def succeeded(dsn: str) -> int:
    return query(dsn, "SELECT count(*) FROM execution_tasks WHERE status = 'succeeded'")[0][0]


def direct_worker(dsn: str, executor_url: str, redis_port: int, start) -> None:
    import redis

    from include.execution.drain import drain
    from include.execution.executor_client import ExecutorClient
    from include.execution.task_cache import TaskCache
    from include.execution.task_handlers import Services

    executor = ExecutorClient(executor_url, max_connections=CONCURRENCY)
    cache = TaskCache(redis.Redis(host="127.0.0.1", port=redis_port))
    start.wait()
    drain(
        dsn,
        services=Services(executor=executor, cache=cache),
        batch_size=BATCH,
        concurrency=CONCURRENCY,
        budget_seconds=3600,
    )
    executor.close()


def run_direct(stack) -> float:
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    args = (
        stack.app_dsn(),
        f"http://127.0.0.1:{stack.ports['executor']}",
        stack.ports["redis"],
        start,
    )
    procs = [ctx.Process(target=direct_worker, args=args) for _ in range(PARALLELISM)]
    for p in procs:
        p.start()
    time.sleep(3)  # imports and connections, before the clock
    began = time.perf_counter()
    start.set()
    for p in procs:
        p.join()
    return time.perf_counter() - began


def token_and_dags(stack) -> tuple[str, str]:
    """A bearer token, and the REST API's /dags URL."""
    login = stack.info.login
    api_url = f"http://127.0.0.1:{stack.ports['api']}"
    token = api(f"{api_url}/auth/token", body={"username": login["username"], "password": login["password"]})[
        "access_token"
    ]
    return token, f"{api_url}/api/v2/dags"


def pause_other_dags(stack) -> list[str]:
    """Pause every DAG but task_batch: their scheduled runs would share the 2 cores with one side
    or the other at random (what they cost is theirs, not task_batch's overhead)."""
    token, dags = token_and_dags(stack)
    others = [d["dag_id"] for d in api(f"{dags}?limit=100", token)["dags"] if d["dag_id"] != "task_batch"]
    for dag_id in others:
        api(f"{dags}/{dag_id}", token, {"is_paused": True}, method="PATCH")
    return others


def wait_until_idle(stack) -> None:
    """The DAG parsed, and no run of it in flight (neither side may share the machine with one)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:  # a loaded machine's api-server may answer slowly at first: ask again
            token, dags = token_and_dags(stack)
            runs = f"{dags}/task_batch/dagRuns"
            if api(f"{runs}?state=running&state=queued", token)["total_entries"] == 0:
                return
        except (urllib.error.URLError, TimeoutError):
            pass
        time.sleep(1)
    raise SystemExit("task_batch never became idle")


def run_dag(stack) -> float:
    token, dags = token_and_dags(stack)
    runs = f"{dags}/task_batch/dagRuns"
    conf = {
        "batch_size": BATCH,
        "parallelism": PARALLELISM,
        "concurrency": CONCURRENCY,
        "budget_seconds": 1800,  # the param's maximum; a run takes a few minutes
        "idle_seconds": 0,  # end when the queue is empty, as the library's drain does
    }
    began = time.perf_counter()
    run = api(runs, token, {"logical_date": None, "conf": conf})
    while True:
        try:
            state = api(f"{runs}/{run['dag_run_id']}", token)["state"]
        except (urllib.error.URLError, TimeoutError):  # slow to answer, not an end: ask again
            state = "unknown"
        if state in ("success", "failed"):
            break
        time.sleep(1)  # within 1 s of a run of minutes; polling faster would load the api-server
    seconds = time.perf_counter() - began
    if state != "success":
        raise SystemExit(f"task_batch run {run['dag_run_id']} ended {state}; see {stack.folder}/logs")
    return seconds


def main() -> None:
    from devstack.stack import LocalStack
    from include.migrations import upgrade

    os.environ["SEED_SCALE"] = "0.001"
    os.environ["TASK_BATCH_SCHEDULE"] = "0 0 1 1 *"  # no scheduled run during the benchmark: manual ones only
    os.environ["STACK_EXECUTOR_LATENCY_MS"] = LATENCY_MS
    os.environ["STACK_DAG_PARSE_SECONDS"] = "30"  # Airflow's default, not the dev stack's 10 s
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        stack = LocalStack(Path(tmp) / "stack", with_airflow=True, api_port=0)
        try:
            t = time.perf_counter()
            stack.start()
            log(f"stack up in {time.perf_counter() - t:.0f}s")
            dsn = stack.app_dsn()
            upgrade(dsn, "head")
            # no event-driven runs: each refill's tasks would start one, sharing the machine with
            # (or draining for) the side being timed; this benchmark times manual runs only
            stack.supervisor.stop("triggerer")
            wait_until_idle(stack)
            log(f"paused {pause_other_dags(stack)}")
            directs, dags = [], []
            for i in range(ROUNDS):
                sides = [("direct", run_direct, directs), ("dag", run_dag, dags)]
                for name, run, times in sides if i % 2 == 0 else sides[::-1]:
                    wait_until_idle(stack)
                    refill(dsn, stack.ports["redis"])
                    calls = executions(stack)
                    times.append(run(stack))
                    calls = executions(stack) - calls  # one /admin/stats read: it lists every digest
                    if calls != TASKS:
                        raise SystemExit(f"{name}: {calls} executor calls for {TASKS} tasks")
                    if succeeded(dsn) != TASKS:
                        raise SystemExit(f"{name} left {TASKS - succeeded(dsn)} tasks")
                    log(f"round {i} {name}: {TASKS} tasks in {times[-1]:.1f}s")
            direct, dag = statistics.median(directs), statistics.median(dags)
            print(
                f"task_batch_overhead: ratio={dag / direct:.2f} (ours/peer: DAG via scheduler / library "
                f"direct) "
                f"dag={dag:.1f}s direct={direct:.1f}s tasks={TASKS} latency_ms={LATENCY_MS} "
                f"parallelism={PARALLELISM} concurrency={CONCURRENCY} batch={BATCH} goal<=1.30 "
                f"rounds={ROUNDS}",
                flush=True,
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
