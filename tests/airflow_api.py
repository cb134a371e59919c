"""Talking to a running Airflow as a user's script would (REST API v2 with a bearer token, and
`airflow dags test`), running a whole local stack for a test suite, and reading its app database."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta


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


def set_paused(stack, dag_id: str, paused: bool, token: str | None = None) -> None:
    """Pause or unpause `dag_id` on a running LocalStack, once its file is parsed."""
    token = token or token_for(stack.info.login)
    url = dag_url(stack, dag_id)
    wait_for(lambda: exists(url, token), 180, f"{dag_id} to be parsed")
    api(url, token, {"is_paused": paused}, method="PATCH")


def trigger(stack, token: str, dag_id: str, conf: dict) -> str:
    """A manual run with `conf`. Its run_after lies a day back: queued runs start in order of
    run_after, so it goes before any run queued meanwhile (an asset-triggered audit, say)."""
    early = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    body = {
        "logical_date": None,
        "run_after": early,
        "conf": conf,
        "dag_run_id": f"rest_{uuid.uuid4().hex[:8]}",
    }
    return api(f"{dag_url(stack, dag_id)}/dagRuns", token, body)["dag_run_id"]


def xcom(stack, token: str, run: dict, task_id: str, key: str = "return_value", map_index: int = -1):
    return api(
        f"{dag_url(stack, run['dag_id'])}/dagRuns/{run['dag_run_id']}/taskInstances/{task_id}/xcomEntries/"
        f"{key}?map_index={map_index}&deserialize=true",
        token,
    )["value"]


def dag_runs(stack, dag_id: str) -> list[dict]:
    """The runs of `dag_id`, newest first; none while its file is not parsed yet."""
    try:
        return api(f"{dag_url(stack, dag_id)}/dagRuns?order_by=-run_after", token_for(stack.info.login))[
            "dag_runs"
        ]
    except urllib.error.HTTPError:  # not parsed yet
        return []


def wait_for_success(stack, dag_id: str, timeout: float = 1800) -> dict:
    """A successful run of `dag_id`; fails fast when every run so far has failed."""

    def succeeded():
        runs = dag_runs(stack, dag_id)
        if runs and all(r["state"] == "failed" for r in runs):
            raise AssertionError(f"every run of {dag_id} failed: {[r['dag_run_id'] for r in runs]}")
        return next((r for r in runs if r["state"] == "success"), None)

    return wait_for(succeeded, timeout, f"a successful run of {dag_id}")


def dags_test(
    stack, dag_id: str, conf: dict, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`airflow dags test dag_id --conf ...` against a running LocalStack, as a user runs it, with
    `env` added; its output is kept in the stack's folder (the path is logged)."""
    run = subprocess.run(
        ["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)],
        env={**stack.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = stack.folder / f"dags-test-{uuid.uuid4().hex[:6]}.log"
    log.write_text(run.stdout + run.stderr)
    logging.getLogger(__name__).warning(
        "airflow dags test %s %s: exit %s, output in %s", dag_id, conf, run.returncode, log
    )
    return run


def rows(stack, sql: str, params: tuple | None = None, dbname: str = "app") -> list[tuple]:
    """The rows `sql` returns from database `dbname` of a running LocalStack, committed."""
    import psycopg2

    with psycopg2.connect(stack.app_dsn(dbname)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        result = cur.fetchall()
    conn.close()
    return result
