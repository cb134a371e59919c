"""The task cache on and off: executor calls with a Zipf popularity, through the real handler.

BENCH_CACHE_CALLS executor calls (default 20000) over BENCH_CACHE_INPUTS distinct inputs
(default 1000) drawn with Zipf popularity (exponent BENCH_CACHE_ZIPF, default 1.0, seeded), on
BENCH_CACHE_CONCURRENCY threads (default 64), against the stack's reference executor answering
after BENCH_CACHE_LATENCY_MS (default 50). The calls run through `include.execution.drain.drain`
itself, batches of BENCH_CACHE_BATCH tasks (default 1000; the DAG's `batch_size` param), whose
handler is `include.execution.task_handlers.execute_on_executor` (validation, model version, cache lookup,
HTTP); with the Redis cache (each claimed batch first reads the cached answers of all its tasks
in one round trip) and without it. The drain's queue is a list here (`ListQueue`: claims hand
out the next tasks, settling records the outcomes): the database is not what this measures.
Each task carries its own payload object and the payload's text, as TaskQueue's claims do.

The floor is the share of distinct inputs among the calls: each must miss once, so the cached
run cannot take less than that share of the uncached run's time. Goal: the time ratio
(cached/uncached) at most 1.5x the floor; the miss share against the floor is printed too
(what the cache itself controls: 1.0 means every input missed exactly once). BENCH_CACHE_ROUNDS
(default 3) rounds of both runs, the cache emptied before each cached run; medians. Prints
`task_cache: ratio=X (ours/peer) ...` where ours is the cached run and the peer the uncached one,
with the hit ratio and the floor.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

CALLS = int(os.environ.get("BENCH_CACHE_CALLS", "20000"))
INPUTS = int(os.environ.get("BENCH_CACHE_INPUTS", "1000"))
ZIPF = float(os.environ.get("BENCH_CACHE_ZIPF", "1.0"))
CONCURRENCY = int(os.environ.get("BENCH_CACHE_CONCURRENCY", "64"))
LATENCY_MS = os.environ.get("BENCH_CACHE_LATENCY_MS", "50")
BATCH = int(os.environ.get("BENCH_CACHE_BATCH", "1000"))
ROUNDS = int(os.environ.get("BENCH_CACHE_ROUNDS", "3"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def workload() -> list:
    from include.execution.task_queue import ClaimedTask

    rng = random.Random(6)
    weights = [1 / (k**ZIPF) for k in range(1, INPUTS + 1)]
    picks = rng.choices(range(INPUTS), weights=weights, k=CALLS)
    tasks = []
    for i, n in enumerate(picks):  # each task its own payload object, and its text as the queue gives it
        payload = {"prompt": f"Suggest ideas #{n}", "repo": "r", "inputs": {"count": 3}}
        tasks.append(
            ClaimedTask(i, "idea", payload, "gpt-4.1", 1, 5, "", 0.0, json.dumps(payload, sort_keys=True))
        )
    return tasks


class ListQueue:
    """TaskQueue's interface for a drain, over a list. Checks each completion as it comes and
    keeps only its task id (the harness should not grow the heap the drain's GC walks)."""

    owner, lease_seconds = "bench", 3600.0  # no heartbeat is due during a run

    def __init__(self, tasks: list) -> None:
        self.left, self.completed, self.failures = iter(tasks), set(), []

    def claim(self, limit: int, task_types=None) -> list:
        return list(itertools.islice(self.left, limit))

    def settle_and_claim(self, completions, failures, limit: int, task_types=None):
        from include.execution.task_queue import FailOutcome

        assert all(c.result["output"]["digest"] for c in completions)
        self.completed.update(c.task.id for c in completions)
        self.failures += failures
        return (
            [c.task.id for c in completions],
            FailOutcome(failed=[f.task.id for f in failures]),
            self.claim(limit),
        )


def run(tasks: list, services) -> float:
    from include.execution.drain import drain

    queue = ListQueue(tasks)
    started = time.perf_counter()
    drain(
        "",
        services=services,
        batch_size=BATCH,
        concurrency=CONCURRENCY,
        budget_seconds=3600,
        queue=queue,
    )
    seconds = time.perf_counter() - started
    assert len(queue.completed) == len(tasks) and not queue.failures, [f.error for f in queue.failures[:3]]
    return seconds


def main() -> None:
    import redis

    from devstack.stack import LocalStack
    from include.execution.executor_client import ExecutorClient
    from include.execution.task_cache import TaskCache
    from include.execution.task_handlers import Services

    os.environ.setdefault("SEED_SCALE", "0.01")
    os.environ["STACK_EXECUTOR_LATENCY_MS"] = LATENCY_MS
    tasks = workload()
    gc.collect()
    # the workload is the harness's: the drain's collections need not walk its 20k tasks
    gc.freeze()
    distinct = len({t.payload["prompt"] for t in tasks})
    floor = distinct / len(tasks)
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        stack = LocalStack(Path(tmp) / "stack", with_airflow=False, api_port=0)
        try:
            stack.start()
            url = f"http://127.0.0.1:{stack.ports['executor']}"
            client = redis.Redis(host="127.0.0.1", port=stack.ports["redis"], max_connections=CONCURRENCY * 2)
            executor = ExecutorClient(url, max_connections=CONCURRENCY)
            executor.model_version("gpt-4.1")  # both runs start with the version known
            uncached_runs, cached_runs = [], []
            for i in range(ROUNDS):
                uncached_runs.append(run(tasks, Services(executor=executor)))
                client.flushdb()
                cache = TaskCache(client)
                cached_runs.append(run(tasks, Services(executor=executor, cache=cache)))
                stats = cache.report()["executor:gpt-4.1"]
                log(f"round {i}: uncached {uncached_runs[-1]:.2f}s, cached {cached_runs[-1]:.2f}s {stats}")
            executor.close()
            uncached, cached = statistics.median(uncached_runs), statistics.median(cached_runs)
            ratio = cached / uncached
            print(
                f"task_cache: ratio={ratio:.3f} (ours/peer: cached/uncached wall time) cached={cached:.2f}s "
                f"uncached={uncached:.1f}s hit_ratio={stats['hit_ratio']:.3f} floor={floor:.3f} "
                f"ratio/floor={ratio / floor:.2f} miss_share/floor={(1 - stats['hit_ratio']) / floor:.2f} "
                f"goal<=1.50 "
                f"calls={CALLS} distinct={distinct} inputs={INPUTS} zipf={ZIPF} latency_ms={LATENCY_MS} "
                f"concurrency={CONCURRENCY} batch={BATCH} rounds={ROUNDS} (medians)",
                flush=True,
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
