"""Airflow adapters of the execution-task queue: backlog, the draining operator, reaping, metrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from execplatform.operators.backup import app_cursor, failing_hard_when_schema_is_behind, libpq_dsn

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.task_cache import TaskCache


def measure_backlog(task_types: Sequence[str] | None = None, app_conn_id: str = "app_db") -> dict[str, dict]:
    """Ready tasks per type (and the oldest one's age)."""
    from include.task_queue import TaskQueue

    with failing_hard_when_schema_is_behind(), TaskQueue(libpq_dsn(app_conn_id)) as queue:
        return queue.backlog(task_types or None)


def reap_expired_leases(app_conn_id: str = "app_db") -> dict[str, int]:
    from include.task_queue import TaskQueue

    with (failing_hard_when_schema_is_behind(),
          TaskQueue(libpq_dsn(app_conn_id), owner="task_batch-reaper") as queue):  # fmt: skip
        return queue.reap()


def redis_cache(redis_conn_id: str = "redis_default", **options: Any) -> TaskCache:
    """The task cache on the `redis_default` connection (short socket timeouts: an outage must
    cost little per call, since tasks then run uncached)."""
    import redis
    from airflow.sdk import BaseHook

    from include.task_cache import TaskCache

    conn = BaseHook.get_connection(redis_conn_id)
    client = redis.Redis(host=conn.host, port=conn.port or 6379, password=conn.password or None,
                         db=int(conn.extra_dejson.get("db", 0)), socket_timeout=2, socket_connect_timeout=2)  # fmt: skip
    return TaskCache(client, **options)


class DrainQueueOperator(BaseOperator):
    """
    Drain execution tasks until the queue has none ready or the time budget is spent.

    One instance runs many execution tasks: it claims ``batch_size`` at a time and runs their
    handlers on ``concurrency`` threads (the work is I/O on the executor and Redis). Through the
    Redis cache when it answers; when Redis fails, the rest runs uncached and one alert is sent
    per drain. Returns the drain's per-type tally and the cache's per-namespace report.

    :param drain_index: which of the run's parallel drains this is (for the lease owner's name).
    :param task_types: (templated) the task types to run; empty for all.
    :param batch_size: (templated) tasks claimed per batch.
    :param concurrency: (templated) handler threads.
    :param budget_seconds: (templated) stop claiming after this long.
    :param cache_ttl_seconds: (templated) TTL per cache namespace (``executor`` covers all models).
    """

    template_fields = ("task_types", "batch_size", "concurrency", "budget_seconds", "cache_ttl_seconds")

    def __init__(
        self,
        *,
        drain_index: int = 0,
        task_types: Sequence[str] | None = None,
        batch_size: int = 100,
        concurrency: int = 16,
        budget_seconds: float = 240.0,
        cache_ttl_seconds: dict[str, int] | None = None,
        use_cache: bool = True,
        app_conn_id: str = "app_db",
        task_executor_conn_id: str = "task_executor",
        redis_conn_id: str = "redis_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.drain_index = drain_index
        self.task_types = task_types
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.budget_seconds = budget_seconds
        self.cache_ttl_seconds = cache_ttl_seconds
        self.use_cache = use_cache
        self.app_conn_id = app_conn_id
        self.task_executor_conn_id = task_executor_conn_id
        self.redis_conn_id = redis_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from execplatform.hooks.task_executor_hook import TaskExecutorHook
        from include.task_batch import drain
        from include.task_handlers import Services

        cache = redis_cache(self.redis_conn_id, ttl_seconds=self.cache_ttl_seconds) if self.use_cache else None
        alerted: list[bool] = []

        def alert_once_if_cache_down(_batch=None) -> None:
            if cache is not None and cache.unavailable is not None and not alerted:
                alerted.append(True)
                self._alert_cache_down(cache.unavailable)

        ti = context["ti"]
        owner = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}[{self.drain_index}]@{os.uname().nodename}:{os.getpid()}"
        with (closing(TaskExecutorHook(self.task_executor_conn_id).get_conn()) as executor,
              failing_hard_when_schema_is_behind()):  # fmt: skip
            summary = drain(
                libpq_dsn(self.app_conn_id), services=Services(executor=executor, cache=cache),
                task_types=self.task_types or None, batch_size=int(self.batch_size),
                concurrency=int(self.concurrency), budget_seconds=float(self.budget_seconds),
                owner=owner, on_batch=alert_once_if_cache_down,
            )  # fmt: skip
        alert_once_if_cache_down()
        result = {**summary.as_dict(), "cache": cache.report() if cache else {}, "cache_available": not alerted}
        self.log.info("drained %d batches in %.1fs (%s): %s", summary.batches, summary.seconds, summary.stopped_by,
                      result["by_type"])  # fmt: skip
        return result

    def _alert_cache_down(self, error: Exception) -> None:
        from execplatform.notifiers.alert_notifier import send_alert

        self.log.warning("Redis cache unavailable, running uncached: %s", error)
        send_alert("error", f"task cache (Redis) unavailable; tasks run uncached: {type(error).__name__}: {error}")


def publish_task_metrics(
    run_id: str,
    run_started: datetime,
    drains: Sequence[dict] | None,
    window_hours: float = 24.0,
    app_conn_id: str = "app_db",
    aws_conn_id: str = "aws_default",
) -> dict[str, Any]:
    """Per-type metrics of the tasks finished since the run started, and the bottleneck report
    over the last `window_hours`: into the tables and CloudWatch. Returns both (the task output)."""
    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from include.metrics import NAMESPACE
    from include.task_batch import (
        bottleneck_report,
        cache_metrics,
        merge_summaries,
        record_bottleneck_report,
        record_type_metrics,
        type_metrics,
        type_stats,
    )

    drains = [d for d in (drains or []) if d]
    now = datetime.now(UTC)
    since = now - timedelta(hours=window_hours)
    with app_cursor(app_conn_id) as cur:  # task_batch_metrics arrives with revision 0003
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
    CloudWatchMetricsHook(aws_conn_id=aws_conn_id).put_metrics(NAMESPACE, [*type_metrics(stats, report),
                                                                        *cache_metrics(namespaces)])  # fmt: skip
    return {"per_type": stats, "bottleneck_report": report, "cache_hit_ratio": namespaces,
            "window": [since.isoformat(), now.isoformat()]}  # fmt: skip
