"""Measuring the queue: per-type figures of the tasks a run finished, and the bottleneck report
(where each task type's time goes: queued, executing; how many answers came from the cache; how
long a task waits to be picked up), for the tables and CloudWatch.

Pickup latency is the time from a task's enqueueing (or the moment it was due, for a task
enqueued for later) to its first claim: what event-driven starts and hot drains shorten. It is
read from tasks claimed once (`attempts = 1`): a claim overwrites `started_at`, so a retried
task's first pickup is gone (its wait after the backoff is in the queue wait)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TYPE_STATS_SQL = """
SELECT task_type,
       count(*) AS tasks,
       count(*) FILTER (WHERE status IN ('failed', 'dead')) AS failures,
       coalesce(avg(duration_ms), 0) AS avg_ms,
       coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), 0) AS p50_ms,
       coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms), 0) AS p95_ms,
       coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms), 0) AS queue_wait_p50_ms,
       coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_ms), 0) AS queue_wait_p95_ms,
       coalesce(sum(wait_ms), 0) AS queue_wait_ms_sum,
       coalesce(sum(duration_ms), 0) AS exec_ms_sum,
       coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY pickup_ms), 0) AS pickup_p50_ms,
       coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY pickup_ms), 0) AS pickup_p95_ms
FROM (SELECT task_type, status, duration_ms,
             greatest(extract(epoch FROM started_at - available_at) * 1000, 0) AS wait_ms,
             CASE WHEN attempts = 1 THEN greatest(
                 extract(epoch FROM started_at - greatest(created_at, available_at)) * 1000, 0)
             END AS pickup_ms
      FROM execution_tasks
      WHERE status IN ('succeeded', 'failed', 'dead') AND finished_at >= %(since)s
        AND finished_at <= %(until)s) finished
GROUP BY task_type ORDER BY task_type
"""

TYPE_STAT_COLUMNS = (
    "tasks",
    "failures",
    "avg_ms",
    "p50_ms",
    "p95_ms",
    "queue_wait_p50_ms",
    "queue_wait_p95_ms",
    "queue_wait_ms_sum",
    "exec_ms_sum",
    "pickup_p50_ms",
    "pickup_p95_ms",
)


def type_stats(cursor, since, until) -> dict[str, dict[str, float]]:
    """Per task type, over the tasks finished in [since, until]: count, failures, duration,
    queue-wait and pickup-latency percentiles (milliseconds)."""
    cursor.execute(TYPE_STATS_SQL, {"since": since, "until": until})
    return {
        row[0]: {c: float(v) for c, v in zip(TYPE_STAT_COLUMNS, row[1:], strict=True)}
        for row in cursor.fetchall()
    }


def record_type_metrics(
    cursor,
    run_id: str,
    stats: Mapping[str, Mapping[str, float]],
    drained: Mapping[str, Mapping[str, float]],
) -> None:
    """Upsert one `task_batch_metrics` row per type for the run (a re-run overwrites its rows)."""
    for task_type, s in stats.items():
        d = drained.get(task_type, {})
        cursor.execute(
            """
            INSERT INTO task_batch_metrics (run_id, task_type, tasks, failures, retries, avg_ms, p50_ms,
                p95_ms,
                queue_wait_p50_ms, queue_wait_p95_ms, queue_wait_ms_sum, exec_ms_sum, cache_hits,
                    cache_hit_ms_sum)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (run_id, task_type) DO UPDATE SET
                measured_at = now(), tasks = EXCLUDED.tasks, failures = EXCLUDED.failures,
                retries = EXCLUDED.retries, avg_ms = EXCLUDED.avg_ms, p50_ms = EXCLUDED.p50_ms,
                p95_ms = EXCLUDED.p95_ms, queue_wait_p50_ms = EXCLUDED.queue_wait_p50_ms,
                queue_wait_p95_ms = EXCLUDED.queue_wait_p95_ms, queue_wait_ms_sum =
                    EXCLUDED.queue_wait_ms_sum,
                exec_ms_sum = EXCLUDED.exec_ms_sum, cache_hits = EXCLUDED.cache_hits,
                cache_hit_ms_sum = EXCLUDED.cache_hit_ms_sum
            """,
            (
                run_id,
                task_type,
                int(s["tasks"]),
                int(s["failures"]),
                int(d.get("retried", 0)),
                s["avg_ms"],
                s["p50_ms"],
                s["p95_ms"],
                s["queue_wait_p50_ms"],
                s["queue_wait_p95_ms"],
                s["queue_wait_ms_sum"],
                s["exec_ms_sum"],
                int(d.get("cache_hits", 0)),
                float(d.get("cache_hit_ms", 0.0)),
            ),
        )


def bottleneck_report(cursor, since, until) -> list[dict[str, Any]]:
    """Per task type over the window, slowest average first: avg/p50/p95 duration, the share of
    its time spent waiting in queue and executing, the share of its tasks answered from the cache
    (each one an executor call saved), and the p50/p95 pickup latency."""
    stats = type_stats(cursor, since, until)
    cursor.execute(
        "SELECT task_type, sum(cache_hit_ms_sum), sum(cache_hits) FROM task_batch_metrics"
        " WHERE measured_at >= %s AND measured_at <= %s GROUP BY task_type",
        (since, until),
    )
    cached = {t: int(n or 0) for t, _, n in cursor.fetchall()}
    report = []
    for task_type, s in stats.items():
        wait, execute = s["queue_wait_ms_sum"], s["exec_ms_sum"]
        hits, tasks = cached.get(task_type, 0), int(s["tasks"])
        total = wait + execute
        report.append(
            {
                "task_type": task_type,
                "tasks": int(s["tasks"]),
                "failures": int(s["failures"]),
                "avg_ms": round(s["avg_ms"], 1),
                "p50_ms": round(s["p50_ms"], 1),
                "p95_ms": round(s["p95_ms"], 1),
                "queued_share": round(wait / total, 4) if total else 0.0,
                "executing_share": round(execute / total, 4) if total else 0.0,
                "cache_hit_share": round(min(hits, tasks) / tasks, 4) if tasks else 0.0,
                "cache_hits": hits,
                "pickup_p50_ms": round(s["pickup_p50_ms"], 1),
                "pickup_p95_ms": round(s["pickup_p95_ms"], 1),
            }
        )
    return sorted(report, key=lambda r: r["avg_ms"], reverse=True)


REPORT_COLUMNS = (
    "task_type",
    "tasks",
    "failures",
    "avg_ms",
    "p50_ms",
    "p95_ms",
    "queued_share",
    "executing_share",
    "cache_hit_share",
)
INSERT_REPORT = """
INSERT INTO task_bottleneck_reports (run_id, window_start, window_end, task_type, tasks, failures, avg_ms,
    p50_ms, p95_ms, queued_share, executing_share, cache_hit_share)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
# with revision 0011's columns
INSERT_REPORT_WITH_PICKUP = """
INSERT INTO task_bottleneck_reports (run_id, window_start, window_end, task_type, tasks, failures, avg_ms,
    p50_ms, p95_ms, queued_share, executing_share, cache_hit_share, pickup_p50_ms, pickup_p95_ms)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def record_bottleneck_report(cursor, run_id: str, since, until, report: Sequence[Mapping[str, Any]]) -> None:
    """Replace the run's rows; with the pickup latency once revision 0011 has made its columns
    (the code runs before its revision is applied, too)."""
    cursor.execute(
        "SELECT count(*) = 2 FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'task_bottleneck_reports' AND column_name IN ('pickup_p50_ms', 'pickup_p95_ms')"
    )
    with_pickup = cursor.fetchone()[0]
    cursor.execute("DELETE FROM task_bottleneck_reports WHERE run_id = %s", (run_id,))
    for r in report:
        values = (run_id, since, until, *(r[c] for c in REPORT_COLUMNS))
        if with_pickup:
            cursor.execute(INSERT_REPORT_WITH_PICKUP, (*values, r["pickup_p50_ms"], r["pickup_p95_ms"]))
        else:
            cursor.execute(INSERT_REPORT, values)


def type_metrics(
    stats: Mapping[str, Mapping[str, float]],
    report: Sequence[Mapping[str, Any]],
    dag_id: str = "task_batch",
) -> list:
    """CloudWatch datapoints per task type: the run's figures and the window's bottleneck shares."""
    from include.observability.metrics import Metric, standard_dimensions

    metrics = []
    for task_type, s in stats.items():
        dims = standard_dimensions(dag_id=dag_id, task_type=task_type)
        metrics += [
            Metric("ExecutionTasks", s["tasks"], dimensions=dims),
            Metric("ExecutionTaskFailures", s["failures"], dimensions=dims),
            Metric("ExecutionDurationP50", s["p50_ms"], unit="Milliseconds", dimensions=dims),
            Metric("ExecutionDurationP95", s["p95_ms"], unit="Milliseconds", dimensions=dims),
            Metric("QueueWaitP50", s["queue_wait_p50_ms"], unit="Milliseconds", dimensions=dims),
            Metric("QueueWaitP95", s["queue_wait_p95_ms"], unit="Milliseconds", dimensions=dims),
            Metric("PickupLatencyP50", s["pickup_p50_ms"], unit="Milliseconds", dimensions=dims),
            Metric("PickupLatencyP95", s["pickup_p95_ms"], unit="Milliseconds", dimensions=dims),
        ]
    for r in report:
        dims = standard_dimensions(dag_id=dag_id, task_type=r["task_type"])
        metrics += [
            Metric("BottleneckAvgDuration", r["avg_ms"], unit="Milliseconds", dimensions=dims),
            Metric("BottleneckQueuedShare", r["queued_share"] * 100, unit="Percent", dimensions=dims),
            Metric(
                "BottleneckExecutingShare",
                r["executing_share"] * 100,
                unit="Percent",
                dimensions=dims,
            ),
            Metric(
                "BottleneckCacheHitShare",
                r["cache_hit_share"] * 100,
                unit="Percent",
                dimensions=dims,
            ),
        ]
    return metrics


def cache_metrics(report: Mapping[str, Mapping[str, float]], dag_id: str = "task_batch") -> list:
    """Hit ratio and counts per cache namespace."""
    from include.observability.metrics import Metric, standard_dimensions

    metrics = []
    for namespace, s in report.items():
        dims = {**standard_dimensions(dag_id=dag_id), "CacheNamespace": namespace}
        metrics += [
            Metric("CacheHits", s["hits"], dimensions=dims),
            Metric("CacheMisses", s["misses"], dimensions=dims),
            Metric("CacheHitRatio", s["hit_ratio"] * 100, unit="Percent", dimensions=dims),
        ]
    return metrics
