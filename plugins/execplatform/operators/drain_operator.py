"""The operator that drains the execution-task queue: many execution tasks per Airflow task."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from include.ids import APP_DB, REDIS, TASK_EXECUTOR

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context


def _number(value: Any) -> Any:
    """A rendered template's text as a number (what `int()` and `float()` took before); else as is."""
    for kind in (int, float):
        try:
            return kind(value) if isinstance(value, str) else value
        except ValueError:
            continue
    return value


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
    :param idle_seconds: (templated) once the queue is empty, wait this long for new work (the
        queue's notifications) before ending; 0 ends at once.
    :param cache_ttl_seconds: (templated) TTL per cache namespace (``executor`` covers all models).

    A claim holds its tasks for ``$TASK_LEASE_SECONDS`` (default 300), renewed while the drain
    lives: how long the tasks of a worker that died wait before the reaper requeues them.
    """

    template_fields = (
        "task_types",
        "batch_size",
        "concurrency",
        "budget_seconds",
        "idle_seconds",
        "cache_ttl_seconds",
    )

    def __init__(
        self,
        *,
        drain_index: int = 0,
        task_types: Sequence[str] | None = None,
        batch_size: int = 100,
        concurrency: int = 16,
        budget_seconds: float = 240.0,
        idle_seconds: float = 0.0,
        cache_ttl_seconds: dict[str, int] | None = None,
        use_cache: bool = True,
        app_conn_id: str = APP_DB,
        task_executor_conn_id: str = TASK_EXECUTOR,
        redis_conn_id: str = REDIS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.drain_index = drain_index
        self.task_types = task_types
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.budget_seconds = budget_seconds
        self.idle_seconds = idle_seconds
        self.cache_ttl_seconds = cache_ttl_seconds
        self.use_cache = use_cache
        self.app_conn_id = app_conn_id
        self.task_executor_conn_id = task_executor_conn_id
        self.redis_conn_id = redis_conn_id
        self.executor_url: str | None = None  # once the drain has begun (for lineage)

    def execute(self, context: Context) -> dict[str, Any]:
        from execplatform.hooks.app_db_hook import (
            AppDatabaseHook,
            failing_hard_when_schema_is_behind,
        )
        from execplatform.hooks.redis_cache_hook import TaskCacheHook
        from execplatform.hooks.task_executor_hook import TaskExecutorHook
        from execplatform.steps import checked_number
        from include.execution.drain import DrainSummary, drain
        from include.execution.task_handlers import Services
        from include.migrations.schema_lock import shared_schema_lock_if_free

        # templated: a rendered value that is not a usable number fails now, without retries
        batch_size = checked_number("batch_size", _number(self.batch_size), low=1, high=100_000, integer=True)
        concurrency = checked_number("concurrency", _number(self.concurrency), low=1, high=1024, integer=True)
        budget_seconds = checked_number(
            "budget_seconds", _number(self.budget_seconds), low=0, low_open=True, high=86_400
        )
        idle_seconds = checked_number("idle_seconds", _number(self.idle_seconds), low=0, high=86_400)

        cache = (
            TaskCacheHook(self.redis_conn_id).get_cache(ttl_seconds=self.cache_ttl_seconds)
            if self.use_cache
            else None
        )
        alerted: list[bool] = []

        def alert_once_if_cache_down(_batch=None) -> None:
            if cache is not None and cache.unavailable is not None and not alerted:
                alerted.append(True)
                self._alert_cache_down(cache.unavailable)

        ti = context["ti"]
        owner = (
            f"{ti.dag_id}/{ti.run_id}/{ti.task_id}[{self.drain_index}]@{os.uname().nodename}:{os.getpid()}"
        )
        db = AppDatabaseHook(self.app_conn_id)
        with (
            shared_schema_lock_if_free(
                db.maintenance_dsn(), f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
            ) as in_the_way,
            closing(TaskExecutorHook(self.task_executor_conn_id).get_conn()) as executor,
            failing_hard_when_schema_is_behind(),
        ):
            if in_the_way:  # a restore or a migration has the database: claim nothing, end now
                self.log.warning(
                    "drain %d steps aside: %s", self.drain_index, "; ".join(map(str, in_the_way))
                )
                return {
                    **DrainSummary(stopped_by="schema_lock").as_dict(),
                    "cache": {},
                    "cache_available": True,
                    "blocked_by": [str(h) for h in in_the_way],
                }
            self.executor_url = executor.base_url
            summary = drain(
                db.worker_dsn(),  # as the DML-only workers' role: payloads and answers are untrusted
                services=Services(executor=executor, cache=cache),
                task_types=self.task_types or None,
                batch_size=batch_size,
                concurrency=concurrency,
                budget_seconds=budget_seconds,
                idle_seconds=idle_seconds,
                owner=owner,
                lease_seconds=float(os.environ.get("TASK_LEASE_SECONDS", "300")),
                on_batch=alert_once_if_cache_down,
            )
        alert_once_if_cache_down()
        result = {
            **summary.as_dict(),
            "cache": cache.report() if cache else {},
            "cache_available": not alerted,
        }
        self.log.info(
            "drained %d batches in %.1fs (%s): %s",
            summary.batches,
            summary.seconds,
            summary.stopped_by,
            result["by_type"],
        )
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """Read and settled the app database's execution tasks and sent them to the executor;
        nothing when the drain stepped aside for a restore or a migration."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from execplatform.lineage import app_table, executor_tasks

        if self.executor_url is None:
            return OperatorLineage()
        queue = app_table(AppDatabaseHook(self.app_conn_id), "execution_tasks")
        return OperatorLineage(inputs=[queue], outputs=[queue, executor_tasks(self.executor_url)])

    def _alert_cache_down(self, error: Exception) -> None:
        from execplatform.notifiers.alert_notifier import send_alert

        self.log.warning("Redis cache unavailable, running uncached: %s", error)
        send_alert(
            "error",
            f"task cache (Redis) unavailable; tasks run uncached: {type(error).__name__}: {error}",
        )
