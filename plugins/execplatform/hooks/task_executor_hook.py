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

    The connection's host is the base URL (scheme included; a port, when set, is appended);
    its extra may set ``timeout_seconds`` (default 30) and ``retries`` (default 3, for
    timeouts, 5xx and 429). A login and password are sent as HTTP basic auth, a password alone as
    a bearer token; neither is ever logged.

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
        from include.execution.executor_client import ExecutorClient

        conn = self.get_connection(self.task_executor_conn_id)
        base = conn.host if "://" in (conn.host or "") else f"http://{conn.host}"
        if conn.port:
            base = f"{base.rstrip('/')}:{conn.port}"
        extra = conn.extra_dejson
        return ExecutorClient(
            base,
            timeout_seconds=float(extra.get("timeout_seconds", 30)),
            retries=int(extra.get("retries", 3)),
            basic_auth=(conn.login, conn.password or "") if conn.login else None,
            token=None
            if conn.login
            else conn.password or None,  # a token alone: TASK_EXECUTOR_TOKEN in compose
        )
