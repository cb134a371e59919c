"""TaskExecutorHook builds its client from the `task_executor` connection."""

from __future__ import annotations

import json

import pytest


def test_the_client_follows_the_connection(monkeypatch):
    from execplatform.hooks.task_executor_hook import TaskExecutorHook

    monkeypatch.setenv("AIRFLOW_CONN_EXEC_TOKEN", json.dumps({
        "conn_type": "http", "host": "http://executor.internal", "port": 8000, "password": "s3cret-token",
        "extra": {"timeout_seconds": 7, "retries": 1}}))  # fmt: skip
    client = TaskExecutorHook("exec_token").get_conn()
    assert client.base_url == "http://executor.internal:8000"
    assert client.retries == 1 and client.http.timeout.read == 7
    assert client.http.headers["Authorization"] == "Bearer s3cret-token"
    client.close()


@pytest.mark.stack
def test_the_stack_connection_reaches_the_reference_executor(local_stack):
    from execplatform.hooks.task_executor_hook import TaskExecutorHook

    client = TaskExecutorHook().get_conn()
    assert client.model_version("gpt-4.1") == "1"
    assert client.execute("idea", "gpt-4.1", {"q": 1})["output"]["digest"]
    client.close()
