"""Talking to a running Airflow as a user's script would (REST API v2 with a bearer token), and
running a whole local stack for a test module."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def api(url: str, token: str | None = None, body: dict | None = None, method: str | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def dag_url(stack, dag_id: str) -> str:
    """The REST API v2 address of `dag_id` on a running LocalStack."""
    return f"{stack.info.login['url']}/api/v2/dags/{dag_id}"


def token_for(login: dict[str, str]) -> str:
    body = {"username": login["username"], "password": login["password"]}
    return api(f"{login['url']}/auth/token", body=body)["access_token"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def exists(url: str, token: str) -> bool:
    """False for "not yet": an error status, or a server too busy to answer this poll in time."""
    try:
        api(url, token)
    except (urllib.error.URLError, TimeoutError):
        return False
    return True


@contextmanager
def running(stack, env: dict[str, str] | None = None) -> Iterator:
    """Start `stack` (a LocalStack) as a user would, without this test session's AIRFLOW* settings
    but with `env`, and stop it on leaving; a failed start stops what it started."""
    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("AIRFLOW")]}
    os.environ.update(env or {})
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    finally:
        for key in env or {}:
            del os.environ[key]
        os.environ.update(saved)
    try:
        yield stack
    finally:
        stack.stop()


def postgres_connection(dsn: str) -> str:
    """What an AIRFLOW_CONN_* variable holds for a postgres connection to the libpq DSN `dsn`."""
    from psycopg2.extensions import parse_dsn

    p = parse_dsn(dsn)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": p["host"],
            "port": int(p["port"]),
            "schema": p["dbname"],
            "login": p["user"],
            "password": p.get("password", ""),
        }
    )
