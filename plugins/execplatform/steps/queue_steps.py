"""task_batch's steps around the drains: the backlog that plans them, the reaper, and the run's
per-type metrics and bottleneck report. Each runs as the drains do, in a session of the workers'
DML-only role (`AppDatabaseHook.worker_dsn()`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook, failing_hard_when_schema_is_behind
from include.ids import APP_DB

logger = logging.getLogger(__name__)


def measure_backlog(task_types: Sequence[str] | None = None, app_conn_id: str = APP_DB) -> dict[str, dict]:
    """Ready tasks per type (and the oldest one's age); their total is published as
    `QueueBacklog` (the alarm `execplatform-queue-backlog` watches it), blocked or not."""
    from execplatform.hooks.cloudwatch_hook import publish_metrics
    from include.execution.task_queue import TaskQueue
    from include.observability.metrics import Metric

    with (
        failing_hard_when_schema_is_behind(),
        TaskQueue(AppDatabaseHook(app_conn_id).worker_dsn()) as queue,
    ):
        backlog = queue.backlog(task_types or None)
    ready = sum(b["ready"] for b in backlog.values())
    try:
        publish_metrics([Metric("QueueBacklog", float(ready), unit="Count")])
    except Exception as exc:  # the drains go on without the metric: the alarm then sees no data
        logger.warning("QueueBacklog (%d) not published: %s: %s", ready, type(exc).__name__, exc)
    return backlog


def reap_expired_leases(app_conn_id: str = APP_DB) -> dict[str, int]:
    """Tasks whose worker died (lease expired) go back to the queue, or `dead` past their tries."""
    from include.execution.task_queue import TaskQueue

    dsn = AppDatabaseHook(app_conn_id).worker_dsn()
    with failing_hard_when_schema_is_behind(), TaskQueue(dsn, owner="task_batch-reaper") as queue:
        queue.record_session()
        return queue.reap()


def publish_task_metrics(
    run_id: str,
    run_started: datetime,
    drains: Sequence[dict] | None,
    window_hours: float = 24.0,
    app_conn_id: str = APP_DB,
) -> dict[str, Any]:
    """Per-type metrics of the tasks finished since the run started, and the bottleneck report
    over the last `window_hours`: into the tables and CloudWatch. Returns both (the task output)."""
    from execplatform.hooks.cloudwatch_hook import publish_metrics
    from execplatform.steps import checked_number
    from include.execution.bottleneck import (
        bottleneck_report,
        cache_metrics,
        record_bottleneck_report,
        record_type_metrics,
        type_metrics,
        type_stats,
    )
    from include.execution.drain import merge_summaries

    window_hours = checked_number("report_window_hours", window_hours, low=0, low_open=True, high=87_600)
    drains = [d for d in (drains or []) if d]
    now = datetime.now(UTC)
    since = now - timedelta(hours=window_hours)
    # task_batch_metrics arrives with revision 0003
    with AppDatabaseHook(app_conn_id).cursor(as_worker=True) as cur:
        stats = type_stats(cur, run_started, now)
        record_type_metrics(cur, run_id, stats, merge_summaries(drains))
        report = bottleneck_report(cur, since, now)
        record_bottleneck_report(cur, run_id, since, now, report)
    namespaces: dict[str, dict[str, float]] = {}
    for d in drains:
        for namespace, s in (d.get("cache") or {}).items():
            total = namespaces.setdefault(namespace, {"hits": 0, "misses": 0})
            total["hits"] += s["hits"]
            total["misses"] += s["misses"]
    for s in namespaces.values():
        calls = s["hits"] + s["misses"]
        s["hit_ratio"] = s["hits"] / calls if calls else 0.0
    publish_metrics([*type_metrics(stats, report), *cache_metrics(namespaces)])
    return {
        "per_type": stats,
        "bottleneck_report": report,
        "cache_hit_ratio": namespaces,
        "window": [since.isoformat(), now.isoformat()],
    }
