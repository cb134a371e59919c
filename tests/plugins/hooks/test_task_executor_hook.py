"""TaskExecutorHook builds its client from the `task_executor` connection."""

from __future__ import annotations

import base64
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, payload, close: bool = False) -> None:
        """200 with `payload` as JSON; `close` ends the connection after it."""
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """A threaded HTTP server on a free port (yielded) for the block's duration."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


@pytest.fixture
def echo_server():
    """An HTTP server that answers every GET with the request's path and Authorization header."""

    class Echo(Quiet):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.reply(
                {
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "version": "7",
                }
            )

    with serving(Echo) as port:
        yield port


@pytest.mark.parametrize(
    ("login", "password", "expected"),
    [
        (None, "s3cret-token", "Bearer s3cret-token"),
        ("svc", "s3cret", "Basic " + base64.b64encode(b"svc:s3cret").decode()),
        (None, None, None),
    ],
)
def test_the_client_follows_the_connection(monkeypatch, echo_server, login, password, expected):
    from execplatform.hooks.task_executor_hook import TaskExecutorHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_EXEC_TOKEN",
        json.dumps(
            {
                "conn_type": "http",
                "host": "http://127.0.0.1",
                "port": echo_server,
                "login": login,
                "password": password,
                "extra": {"timeout_seconds": 7, "retries": 1},
            }
        ),
    )
    client = TaskExecutorHook("exec_token").get_conn()
    assert client.base_url == f"http://127.0.0.1:{echo_server}"
    assert (client.retries, client.timeout_seconds) == (1, 7)
    seen = client._request("GET", "/v1/models/gpt-4.1")
    assert seen["path"] == "/v1/models/gpt-4.1" and seen["authorization"] == expected
    client.close()


def test_the_stack_connection_reaches_the_reference_executor(local_stack):
    from execplatform.hooks.task_executor_hook import TaskExecutorHook

    client = TaskExecutorHook().get_conn()
    assert client.model_version("gpt-4.1") == "1"
    assert client.execute("idea", "gpt-4.1", {"q": 1})["output"]["digest"]
    client.close()


def test_the_client_keeps_its_connections_alive_and_follows_a_server_that_closes_them():
    """Requests reuse a kept-alive connection; after a server answers `Connection: close`, or ends
    a connection left idle, the next request opens a new one (with no retry spent: `retries=0`);
    the URL's path is a prefix of every request's."""
    from include.execution.executor_client import ExecutorClient

    connections, paths = [], []

    class Echo(Quiet):
        protocol_version = "HTTP/1.1"
        timeout = 0.3  # the server ends a connection idle this long

        def setup(self):
            connections.append(self.client_address)
            super().setup()

        def do_GET(self):  # noqa: N802 (http.server's name)
            paths.append(self.path)
            self.reply({"version": "1"}, close=self.path.endswith("/close"))

    with serving(Echo) as port:
        client = ExecutorClient(f"http://127.0.0.1:{port}/api/", retries=0)
        for _ in range(5):
            assert client._request("GET", "/v1/models/m") == {"version": "1"}
        assert len(connections) == 1
        assert client._request("GET", "/v1/models/close") == {"version": "1"}
        assert client._request("GET", "/v1/models/m") == {"version": "1"}
        assert len(connections) == 2
        time.sleep(0.6)  # the server closes the idle connection: the next request opens another
        assert client._request("GET", "/v1/models/m") == {"version": "1"}
        assert len(connections) == 3
        assert set(paths) == {"/api/v1/models/m", "/api/v1/models/close"}
        client.close()


def test_the_client_refuses_a_url_that_is_not_http_without_repeating_it():
    from include.execution.executor_client import ExecutorClient

    with pytest.raises(ValueError, match="scheme is 'ftp'") as caught:
        ExecutorClient("ftp://svc:s3cret@executor")
    assert "s3cret" not in str(caught.value)


def _client_of(monkeypatch, host: str, **extra):
    from execplatform.hooks.task_executor_hook import TaskExecutorHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_EXEC_URL",
        json.dumps({"conn_type": "ai_executor", "host": host, "password": "tok3n-s3cret", "extra": extra}),
    )
    return TaskExecutorHook("exec_url").get_conn()


def test_a_host_without_a_scheme_is_https_and_plain_http_leaves_this_machine_only_when_allowed(
    monkeypatch,
):
    """The bearer token must not cross a network in clear: https unless the host is loopback or
    the connection says plain http is meant."""
    assert _client_of(monkeypatch, "executor.internal").base_url == "https://executor.internal"
    for loopback in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert _client_of(monkeypatch, loopback).base_url == loopback
    with pytest.raises(
        ValueError, match="plain http to 'executor.internal', which is not this machine"
    ) as no:
        _client_of(monkeypatch, "http://executor.internal")
    assert "tok3n" not in str(no.value)
    allowed = _client_of(monkeypatch, "http://executor.internal", allow_insecure_http=True)
    assert allowed.base_url == "http://executor.internal"
    limits = _client_of(monkeypatch, "https://x", max_response_bytes=2048, max_retry_after_seconds=5)
    assert (limits.max_response_bytes, limits.max_retry_after_seconds) == (2048, 5.0)


def test_retry_after_reads_seconds_and_dates():
    from datetime import UTC, datetime

    from include.execution.executor_client import retry_after_seconds

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # in the past: at once
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None
