"""The FSAR block check's cost: the queue drained with the check before every claim, against the
same drain without it, same database, workers and jobs, in the same run.

A drain asks before each claim whether an open FSAR report blocks execution
(`TaskQueue.blocking_report`: one more round trip per step, an index scan of
`fsar_reports_blocking_idx`, a partial index holding only the open blocking reports, here none,
as in normal operation). This measures what that costs where it costs most, on no-op handlers:
BENCH_BLOCK_JOBS jobs (default 50000) drained by BENCH_QUEUE_WORKERS processes (default 4) with
batches of BENCH_QUEUE_BATCH (default 100), exactly as bench_task_queue.py's `ours` side runs
(its enqueue, its workers, its clock from a start barrier), once with `check_block=True` (what
the platform and bench_task_queue run) and once with `check_block=False`, BENCH_BLOCK_ROUNDS
rounds (default 3), the order rotated each round, medians.

Prints `block_check: ratio=X (ours/peer ...)`: jobs per second with the check over jobs per
second without (1.00: free). bench_task_queue's `task_queue` ratio (ours over pgqueuer) moves by
the same factor, so the goal is X >= 0.98 (the check lowers that ratio by at most 2%). The line
also gives the check's own latency per claim (BENCH_BLOCK_PROBES calls of `blocking_report` on one
connection, default 5000) and how many claims a job costs, so the per-job cost can be read off.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("BENCH_QUEUE_JOBS", os.environ.get("BENCH_BLOCK_JOBS", "50000"))

import bench_task_queue as queue_bench  # noqa: E402 (after its job count is set)

ROUNDS = int(os.environ.get("BENCH_BLOCK_ROUNDS", "3"))
PROBES = int(os.environ.get("BENCH_BLOCK_PROBES", "5000"))


def worker(dsn: str, start, done, check_block: bool) -> None:
    from include.execution.drain import drain
    from include.execution.task_handlers import REQUIRED_INPUTS, Services
    from include.execution.task_queue import TaskQueue

    with TaskQueue(dsn) as queue:
        start.wait()
        cpu = time.process_time()
        summary = drain(
            dsn,
            services=Services(),
            handlers=dict.fromkeys(REQUIRED_INPUTS, queue_bench.noop),
            batch_size=queue_bench.BATCH,
            concurrency=4,
            queue=queue,
            check_block=check_block,
        )
    done.put((sum(t.succeeded for t in summary.by_type.values()), time.process_time() - cpu))


def checked(dsn: str, start, done) -> None:
    worker(dsn, start, done, True)


def unchecked(dsn: str, start, done) -> None:
    worker(dsn, start, done, False)


def check_latency_us(dsn: str) -> tuple[float, float]:
    """(median, p95) microseconds of one block check, on an open connection."""
    from include.execution.task_queue import TaskQueue

    samples = []
    with TaskQueue(dsn) as queue:
        for _ in range(PROBES):
            began = time.perf_counter()
            assert queue.blocking_report() is None
            samples.append((time.perf_counter() - began) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def claims_per_job(dsn: str) -> float:
    """Claims (steps that claim) a drain makes per job, counted on one drain of the jobs."""
    from include.execution.drain import drain
    from include.execution.task_handlers import REQUIRED_INPUTS, Services
    from include.execution.task_queue import TaskQueue

    queue_bench.our_enqueue(dsn)
    with TaskQueue(dsn) as queue:
        calls = 0
        probe = queue.blocking_report

        def counted():
            nonlocal calls
            calls += 1
            return probe()

        queue.blocking_report = counted
        summary = drain(
            dsn,
            services=Services(),
            handlers=dict.fromkeys(REQUIRED_INPUTS, queue_bench.noop),
            batch_size=queue_bench.BATCH,
            concurrency=4,
            queue=queue,
        )
    jobs = sum(t.succeeded for t in summary.by_type.values())
    return calls / jobs


def main() -> None:
    from devstack.stack import LocalStack

    os.environ.setdefault("SEED_SCALE", "0.01")
    jobs = queue_bench.JOBS
    with tempfile.TemporaryDirectory(prefix="bench_block_") as tmp:
        stack = LocalStack(Path(tmp) / "stack", with_airflow=False, api_port=0)
        try:
            stack.start()
            from include.migrations import upgrade

            dsn = stack.app_dsn()
            upgrade(dsn, "head")
            median_us, p95_us = check_latency_us(dsn)
            per_job = claims_per_job(dsn)
            times: dict[str, list[float]] = {"checked": [], "unchecked": []}
            sides = [("checked", checked), ("unchecked", unchecked)]
            for i in range(ROUNDS):
                for name, side in sides[i % 2 :] + sides[: i % 2]:
                    queue_bench.our_enqueue(dsn)
                    seconds, count, _ = queue_bench.timed(side, dsn)
                    if count != jobs:
                        raise SystemExit(f"{name} processed {count} of {jobs} jobs")
                    times[name].append(seconds)
                    queue_bench.log(
                        f"round {i} {name}: {jobs} jobs in {seconds:.2f}s = {jobs / seconds:.0f}/s"
                    )
            with_check, without = statistics.median(times["checked"]), statistics.median(times["unchecked"])
            print(
                f"block_check: ratio={without / with_check:.3f} (ours/peer, jobs per second with the block "
                f"check before every claim / without it; task_queue's ratio moves by this factor) goal>=0.98"
                f" check_us_per_claim={median_us:.0f} (p95 {p95_us:.0f}) claims_per_job={per_job:.4f}"
                f" check_us_per_job={median_us * per_job:.2f} checked={jobs / with_check:.0f}/s"
                f" unchecked={jobs / without:.0f}/s jobs={jobs} workers={queue_bench.WORKERS}"
                f" batch={queue_bench.BATCH} rounds={ROUNDS}",
                flush=True,
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
