"""The AI executor's HTTP client: keep-alive connections shared by a drain's handler threads,
deadlines, a cap on what it reads, and retries of what may pass (timeouts, connection errors,
5xx, 429 after the server's Retry-After)."""

from __future__ import annotations

import base64
import email.utils
import functools
import http.client
import ipaddress
import itertools
import json
import select
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from include.execution.task_handlers import PermanentError, RetryableError

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # an answer is stored as jsonb: far less in practice
DEFAULT_MAX_RETRY_AFTER_SECONDS = 30.0  # a longer Retry-After is left to the queue's own retry
_READ_CHUNK = 64 * 1024


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (where plain http leaves nothing on a network)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header's wait in seconds (a number of seconds or an HTTP date); None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class _Deadlines:
    """Ends the exchanges that run past their deadline, whatever they are blocked on (a
    connection's setup, headers or a body trickled a byte at a time, each read well within the
    socket's timeout): one daemon thread per client looks every `tick` seconds and shuts the
    socket of each late exchange down, so its blocked read returns at once."""

    def __init__(self, tick: float) -> None:
        self._tick = tick
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, socket.socket]] = {}
        self._late: set[int] = set()
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, sock: socket.socket, deadline: float) -> int:
        key = next(self._keys)
        with self._lock:
            self._due[key] = (deadline, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="executor-deadlines", daemon=True)
                self._thread.start()
        return key

    def release(self, key: int) -> bool:
        """Stop watching; whether the exchange was ended for being late."""
        with self._lock:
            self._due.pop(key, None)
            if key in self._late:
                self._late.discard(key)
                return True
        return False

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                late = [(key, sock) for key, (deadline, sock) in self._due.items() if deadline <= now]
                for key, _ in late:
                    del self._due[key]
                    self._late.add(key)
            for _, sock in late:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # closed meanwhile

    def stop(self) -> None:
        self._stop.set()


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection was closed by the server: an idle socket that is
    readable has reached its end (or holds bytes no request asked for): either way, not reusable."""
    if connection.sock is None:
        return True
    poller = select.poll()
    poller.register(connection.sock, select.POLLIN)
    return bool(poller.poll(0))


class ExecutorClient:
    """The AI executor's HTTP API, with deadlines and retries of transient failures.

    Each exchange (connecting, sending, the whole answer) ends within `timeout_seconds`, however
    slowly the server trickles its bytes, and reads at most `max_response_bytes` of answer (a
    larger one is a PermanentError, refused before or while it is read). Timeouts, connection
    errors, HTTP 5xx and 429 are retried up to `retries` times with exponential backoff, or
    after the server's Retry-After when it asks for longer (up to `max_retry_after_seconds`; a
    longer wait is left to the queue, which retries the task later), then raised as
    RetryableError; any other answer outside 2xx is a PermanentError carrying the response body.

    The bearer token or password goes only over https, or plain http to this machine (loopback),
    unless `allow_insecure_http` says otherwise. A model's name is quoted as one path segment.

    Thread-safe: one client serves a drain's handler threads over up to `max_connections`
    keep-alive connections (a thread waits for a free one). The standard library's http.client,
    not urllib3 or httpx: it sends a request's headers and body in one write (urllib3 sends them
    apart), and at 64 threads a call cost about 40% less CPU than through urllib3 (httpx's pool
    scans every connection for every request: 2-3x urllib3's CPU).

    :param base_url: the `task_executor` connection's host (scheme included; a path is a prefix).
    :param basic_auth: (login, password) sent as HTTP basic auth; `token` as a bearer token.
        Neither is ever logged or put in an error.
    :param allow_insecure_http: plain http to a host that is not this machine (credentials and
        payloads then cross the network in clear).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        max_connections: int = 64,
        basic_auth: tuple[str, str] | None = None,
        token: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retry_after_seconds: float = DEFAULT_MAX_RETRY_AFTER_SECONDS,
        allow_insecure_http: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_response_bytes = max_response_bytes
        self.max_retry_after_seconds = max_retry_after_seconds
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"the executor's URL must be http(s)://host[:port][/prefix]; its scheme is {url.scheme!r}"
            )
        if url.scheme == "http" and not (is_loopback(url.hostname) or allow_insecure_http):
            raise ValueError(
                f"the executor's URL is plain http to {url.hostname!r}, which is not this machine: use "
                "https (or set allow_insecure_http to send its credentials and payloads in clear)"
            )
        if not (0 < timeout_seconds < float("inf")) or max_response_bytes < 1:
            raise ValueError("timeout_seconds must be finite and above 0, max_response_bytes at least 1")
        connection = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self._connect = functools.partial(connection, url.hostname, url.port, timeout=timeout_seconds)
        self._deadlines = _Deadlines(tick=min(0.25, max(0.01, timeout_seconds / 10)))
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
        self._deadlines.stop()
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _read_body(self, response: http.client.HTTPResponse, method: str, path: str) -> bytes:
        """The whole body, or PermanentError as soon as it is known to exceed the cap (from its
        Content-Length before reading, else while reading)."""
        cap = self.max_response_bytes

        def too_large(size: str) -> PermanentError:
            return PermanentError(
                f"executor answered {size} bytes on {method} {path}, over the {cap}-byte limit; not read"
            )

        if response.length is not None:  # Content-Length
            if response.length > cap:
                raise too_large(str(response.length))
            return response.read()
        chunks, size = [], 0
        while chunk := response.read1(_READ_CHUNK):  # chunked, or until the server closes
            size += len(chunk)
            if size > cap:
                raise too_large(f"more than {cap}")
            chunks.append(chunk)
        return b"".join(chunks)

    def _exchange(self, method: str, path: str, data: bytes | None) -> tuple[int, str, float | None]:
        """(status, body, Retry-After seconds) of one request, on a kept-alive connection when
        one is free; TimeoutError when it is not over within `timeout_seconds`."""
        with self._slots:
            with self._idle_lock:
                connection = self._idle.pop() if self._idle else None
            if connection is not None and _closed_by_peer(connection):
                connection.close()  # the server ended it while it was idle (its keep-alive timeout)
                connection = None
            connection = connection or self._connect()
            late = False
            try:
                if connection.sock is None:
                    connection.connect()  # each step bounded by the socket's timeout
                watch = self._deadlines.watch(connection.sock, time.monotonic() + self.timeout_seconds)
                try:
                    connection.request(method, self._prefix + path, body=data, headers=self._headers)
                    response = connection.getresponse()
                    body = self._read_body(response, method, path)
                finally:
                    late = self._deadlines.release(watch)
                if late:
                    raise TimeoutError
            except BaseException as exc:
                connection.close()  # in an unknown state (a late answer may still come on it)
                if late:
                    raise TimeoutError(f"no complete answer within {self.timeout_seconds:g} s") from exc
                raise
            if response.will_close or not response.isclosed():
                connection.close()
            else:
                with self._idle_lock:
                    self._idle.append(connection)
            asks_later = response.status in (429, 503)
            retry_after = retry_after_seconds(response.getheader("Retry-After")) if asks_later else None
            return response.status, body.decode(errors="replace"), retry_after

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                status, text, retry_after = self._exchange(method, path, data)
            except (OSError, http.client.HTTPException) as exc:  # timed out, refused, reset...
                problem = (
                    f"executor timed out on {method} {path}: {exc or type(exc).__name__}"
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
                delay = self.backoff_seconds * 2**attempt
                if retry_after is not None:
                    if retry_after > self.max_retry_after_seconds:
                        raise RetryableError(
                            f"{problem} (it asks to retry after {retry_after:g} s, longer than this "
                            f"client waits, {self.max_retry_after_seconds:g} s: the queue retries the task)"
                        )
                    delay = max(delay, retry_after)
                time.sleep(delay)
        raise RetryableError(f"{problem} (after {self.retries + 1} tries)")

    def model_version(self, ai_model: str) -> str:
        """The model's current version, asked once per client (one client serves one batch)."""
        with self._versions_lock:
            if ai_model in self._versions:
                return self._versions[ai_model]
        # one path segment, whatever the name holds: nothing in it can climb out of /v1/models/
        version = str(self._request("GET", f"/v1/models/{quote(ai_model, safe='')}")["version"])
        with self._versions_lock:
            self._versions[ai_model] = version
        return version

    def execute(self, task_type: str, ai_model: str, task_input: dict) -> dict:
        return self._request(
            "POST",
            "/v1/execute",
            {"task_type": task_type, "ai_model": ai_model, "input": task_input},
        )
