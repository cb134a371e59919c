"""The FSAR block check's cost: the queue drained with the check in every claim, against the same
drain without it, same database, workers and jobs, in the same run.

Each claim checks that no open FSAR report blocks execution, inside the claim's own statement
(`include.execution.task_queue.unless_blocked`: a probe of `fsar_reports_blocking_idx`, a partial
index holding only the open blocking reports, here none, as in normal operation), so it costs no
round trip. This measures what it costs where it costs most, on no-op handlers:
BENCH_BLOCK_JOBS jobs (default 100000) drained by BENCH_QUEUE_WORKERS processes (default 4) with
batches of BENCH_QUEUE_BATCH (default 100), exactly as bench_task_queue.py's `ours` side runs
(its enqueue, its workers, its clock from a start barrier), once with the check (what the
platform and bench_task_queue run) and once with `TaskQueue(check_block=False)`,
BENCH_BLOCK_ROUNDS rounds (default 6), the order rotated each round. Throughput on 2 cores
drifts by a quarter from round to round, more than the check costs, so each round pairs the two
sides back to back and the ratio is the median of the rounds' ratios; the same for CPU per job
(the server's processes from /proc plus the workers', as bench_task_queue.py counts it).

Prints `block_check: ratio=X (ours/peer ...)`: jobs per second with the check over jobs per
second without (1.00: free), and `cpu_ratio`, CPU per job without over with. bench_task_queue's
`task_queue` ratio (ours over pgqueuer) moves by the same factor, so the goal is X >= 0.98 (the
check lowers that ratio by at most 2%). The line also gives the check's cost per claim: the
difference between a claim with and without it (BENCH_BLOCK_PROBES alternating claims of nothing
on two open connections, default 5000 each), and the claims per job.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("BENCH_QUEUE_JOBS", os.environ.get("BENCH_BLOCK_JOBS", "100000"))

import bench_task_queue as queue_bench  # noqa: E402 (after its job count is set)

ROUNDS = int(os.environ.get("BENCH_BLOCK_ROUNDS", "6"))
PROBES = int(os.environ.get("BENCH_BLOCK_PROBES", "5000"))


def drain_all(dsn: str, check_block: bool, start=None) -> tuple[int, float, int]:
    """(jobs run, the worker's CPU seconds, the queue's statements) of one drain."""
    from include.execution.drain import drain
    from include.execution.task_handlers import REQUIRED_INPUTS, Services
    from include.execution.task_queue import TaskQueue

    with TaskQueue(dsn, check_block=check_block) as queue:
        if queue.checks_block != check_block:
            raise SystemExit(f"the queue checks the block: {queue.checks_block}, wanted {check_block}")
        if start is not None:
            start.wait()
        cpu, sent = time.process_time(), queue.statements
        summary = drain(
            dsn,
            services=Services(),
            handlers=dict.fromkeys(REQUIRED_INPUTS, queue_bench.noop),
            batch_size=queue_bench.BATCH,
            concurrency=4,
            queue=queue,
        )
        jobs = sum(t.succeeded for t in summary.by_type.values())
        return jobs, time.process_time() - cpu, queue.statements - sent


def checked(dsn: str, start, done) -> None:
    done.put(drain_all(dsn, True, start)[:2])


def unchecked(dsn: str, start, done) -> None:
    done.put(drain_all(dsn, False, start)[:2])


def check_cost_per_claim_us(dsn: str) -> tuple[float, float]:
    """(median claim time with the check minus without, in microseconds; the median claim
    without), from alternating claims of nothing on two connections."""
    from include.execution.task_queue import TaskQueue

    times: dict[bool, list[float]] = {True: [], False: []}
    with TaskQueue(dsn, check_block=True) as on, TaskQueue(dsn, check_block=False) as off:
        for _ in range(PROBES):
            for flag, queue in ((True, on), (False, off)):
                began = time.perf_counter()
                queue.claim(0)
                times[flag].append((time.perf_counter() - began) * 1e6)
    with_check, without = statistics.median(times[True]), statistics.median(times[False])
    return with_check - without, without


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
            queue_bench.query(dsn, "TRUNCATE execution_tasks")
            check_us, claim_us = check_cost_per_claim_us(dsn)
            queue_bench.our_enqueue(dsn)
            ran, _, statements = drain_all(dsn, True)
            per_job = statements / ran
            paired, cpu_paired = [], []  # per round: unchecked over checked (each round's sides adjacent)
            rates: dict[str, list[float]] = {"checked": [], "unchecked": []}
            sides = [("checked", checked), ("unchecked", unchecked)]
            for i in range(ROUNDS):
                seconds, cpu = {}, {}
                for name, side in sides[i % 2 :] + sides[: i % 2]:
                    queue_bench.our_enqueue(dsn)
                    server_before = queue_bench.server_cpu(dsn)
                    took, count, worker_cpu = queue_bench.timed(side, dsn)
                    if count != jobs:
                        raise SystemExit(f"{name} processed {count} of {jobs} jobs")
                    seconds[name] = took
                    cpu[name] = (queue_bench.server_cpu(dsn) - server_before + worker_cpu) / jobs * 1e6
                    rates[name].append(jobs / took)
                    queue_bench.log(
                        f"round {i} {name}: {jobs} jobs in {took:.2f}s = {jobs / took:.0f}/s, "
                        f"CPU {cpu[name]:.1f} us per job (server + workers)"
                    )
                paired.append(seconds["unchecked"] / seconds["checked"])
                cpu_paired.append(cpu["unchecked"] / cpu["checked"])
            print(
                f"block_check: ratio={statistics.median(paired):.3f} (ours/peer, jobs per second with the "
                f"FSAR block check in every claim / without it, median of {ROUNDS} rounds each pairing "
                "the two back to back; task_queue's ratio moves by this factor) goal>=0.98"
                f" cpu_ratio={statistics.median(cpu_paired):.3f} (CPU per job without / with, server +"
                f" workers) check_us_per_claim={check_us:.1f} (a claim without it: {claim_us:.0f} us)"
                f" claims_per_job={per_job:.4f} check_us_per_job={check_us * per_job:.3f}"
                f" checked={statistics.median(rates['checked']):.0f}/s"
                f" unchecked={statistics.median(rates['unchecked']):.0f}/s jobs={jobs}"
                f" workers={queue_bench.WORKERS} batch={queue_bench.BATCH} rounds={ROUNDS}",
                flush=True,
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
