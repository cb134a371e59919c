"""Talking to a running Airflow as a user's script would: REST API v2 with a bearer token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


def api(url: str, token: str | None = None, body: dict | None = None, method: str | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method=method)  # fmt: skip
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


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
