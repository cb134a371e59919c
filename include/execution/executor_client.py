"""The AI executor's HTTP client: keep-alive connections shared by a drain's handler threads,
timeouts, and retries of what may pass (timeouts, connection errors, 5xx, 429)."""

from __future__ import annotations

import base64
import functools
import http.client
import json
import select
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from include.execution.task_handlers import PermanentError, RetryableError


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server: an idle socket that is
    readable has reached its end (or holds bytes no request asked for): either way, not reusable."""
    if connection.sock is None:
        return True
    poller = select.poll()
    poller.register(connection.sock, select.POLLIN)
    return bool(poller.poll(0))


class ExecutorClient:
    """The AI executor's HTTP API, with timeouts and retries of transient failures.

    Timeouts, connection errors, HTTP 5xx and 429 are retried up to `retries` times with
    exponential backoff, then raised as RetryableError (the queue retries the task later);
    any other answer outside 2xx is a PermanentError carrying the response body.

    Thread-safe: one client serves a drain's handler threads over up to `max_connections`
    keep-alive connections (a thread waits for a free one). The standard library's http.client,
    not urllib3 or httpx: it sends a request's headers and body in one write (urllib3 sends them
    apart), and at 64 threads a call cost about 40% less CPU than through urllib3 (httpx's pool
    scans every connection for every request: 2-3x urllib3's CPU).

    :param base_url: the `task_executor` connection's host (scheme included; a path is a prefix).
    :param basic_auth: (login, password) sent as HTTP basic auth; `token` as a bearer token.
        Neither is ever logged or put in an error.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = 30.0,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        max_connections: int = 64,
        basic_auth: tuple[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"the executor's URL must be http(s)://host[:port][/prefix]; its scheme is {url.scheme!r}"
            )
        connection = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self._connect = functools.partial(connection, url.hostname, url.port, timeout=timeout_seconds)
        self._prefix = url.path
        self._idle: list[http.client.HTTPConnection] = []  # kept alive for the next request
        self._idle_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if basic_auth is not None:
            self._headers["Authorization"] = (
                "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode()
            )
        elif token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._versions: dict[str, str] = {}
        self._versions_lock = threading.Lock()

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, str]:
        """(status, body) of one request, on a kept-alive connection when one is free."""
        with self._slots:
            with self._idle_lock:
                connection = self._idle.pop() if self._idle else None
            if connection is not None and _closed_by_peer(connection):
                connection.close()  # the server ended it while it was idle (its keep-alive timeout)
                connection = None
            connection = connection or self._connect()
            try:
                connection.request(method, self._prefix + path, body=data, headers=self._headers)
                response = connection.getresponse()
                body = response.read().decode(errors="replace")
            except BaseException:
                connection.close()  # in an unknown state (a late answer may still come on it)
                raise
            if response.will_close:
                connection.close()
            else:
                with self._idle_lock:
                    self._idle.append(connection)
            return response.status, body

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                status, text = self._exchange(method, path, data)
            except (OSError, http.client.HTTPException) as exc:  # timed out, refused, reset...
                problem = (
                    f"executor timed out on {method} {path}: {type(exc).__name__}"
                    if isinstance(exc, TimeoutError)
                    else f"executor unreachable on {method} {path}: {type(exc).__name__}: {exc}"
                )
            else:
                if 200 <= status < 300:
                    try:
                        return json.loads(text)
                    except ValueError:
                        raise RetryableError(
                            f"executor answered HTTP {status} on {method} {path} "
                            f"with a body that is not JSON: {text[:200]!r}"
                        ) from None
                problem = f"executor answered HTTP {status} on {method} {path}: {text[:500]}"
                if status < 500 and status != 429:
                    raise PermanentError(problem)
            if attempt < self.retries:
                time.sleep(self.backoff_seconds * 2**attempt)
        raise RetryableError(f"{problem} (after {self.retries + 1} tries)")

    def model_version(self, ai_model: str) -> str:
        """The model's current version, asked once per client (one client serves one batch)."""
        with self._versions_lock:
            if ai_model in self._versions:
                return self._versions[ai_model]
        version = str(self._request("GET", f"/v1/models/{ai_model}")["version"])
        with self._versions_lock:
            self._versions[ai_model] = version
        return version

    def execute(self, task_type: str, ai_model: str, task_input: dict) -> dict:
        return self._request(
            "POST",
            "/v1/execute",
            {"task_type": task_type, "ai_model": ai_model, "input": task_input},
        )
