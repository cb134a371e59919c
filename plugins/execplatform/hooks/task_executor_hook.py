"""The AI task executor over HTTP, from the `task_executor` connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from include.ids import TASK_EXECUTOR

if TYPE_CHECKING:
    from include.execution.executor_client import ExecutorClient


class TaskExecutorHook(BaseHook):
    """
    Build an :class:`include.execution.executor_client.ExecutorClient` from a connection of type
    ``ai_executor`` (registered by this provider, so the UI's form names its fields; a connection
    of type ``http`` works the same).

    The connection's host is the base URL (a port, when set, is appended); without a scheme it
    is ``https``. Plain ``http`` is allowed only to this machine (a loopback host) or when the
    extra sets ``allow_insecure_http`` (credentials and payloads then cross the network in
    clear). The extra may also set ``timeout_seconds`` (each exchange's deadline, default 30),
    ``retries`` (default 3, for timeouts, 5xx and 429), ``max_response_bytes`` (the largest
    answer read, default 16 MiB) and ``max_retry_after_seconds`` (the longest Retry-After waited
    for, default 30). A login and password are sent as HTTP basic auth, a password alone as a
    bearer token; neither is ever logged.

    :param task_executor_conn_id: the connection id.
    """

    conn_name_attr = "task_executor_conn_id"
    default_conn_name = TASK_EXECUTOR
    conn_type = "ai_executor"
    hook_name = "AI task executor"

    def __init__(self, task_executor_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_executor_conn_id = task_executor_conn_id

    def get_conn(self) -> ExecutorClient:
        from include.execution import executor_client as ec

        conn = self.get_connection(self.task_executor_conn_id)
        base = conn.host if "://" in (conn.host or "") else f"https://{conn.host}"
        if conn.port:
            base = f"{base.rstrip('/')}:{conn.port}"
        extra = conn.extra_dejson
        return ec.ExecutorClient(
            base,
            timeout_seconds=float(extra.get("timeout_seconds", ec.DEFAULT_TIMEOUT_SECONDS)),
            retries=int(extra.get("retries", 3)),
            max_response_bytes=int(extra.get("max_response_bytes", ec.DEFAULT_MAX_RESPONSE_BYTES)),
            max_retry_after_seconds=float(
                extra.get("max_retry_after_seconds", ec.DEFAULT_MAX_RETRY_AFTER_SECONDS)
            ),
            allow_insecure_http=str(extra.get("allow_insecure_http", False)).lower() in ("true", "1", "yes"),
            basic_auth=(conn.login, conn.password or "") if conn.login else None,
            token=None
            if conn.login
            else conn.password or None,  # a token alone: TASK_EXECUTOR_TOKEN in compose
        )
