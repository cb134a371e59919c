"""Connection probes: time one round trip to a service and record the outcome in the app DB."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    conn_id: str
    ok: bool
    latency_ms: float
    detail: str


def run_probe(conn_id: str, probe: Callable[[], str]) -> ProbeResult:
    """Run `probe` (which returns a short description of what it saw) and time it."""
    start = time.perf_counter()
    try:
        detail, ok = probe(), True
    except Exception as exc:  # any failure is the finding, named with its type
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return ProbeResult(conn_id, ok, (time.perf_counter() - start) * 1000, detail[:1000])


RECORD_SQL = """
INSERT INTO healthcheck_results (run_id, conn_id, ok, latency_ms, detail)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (run_id, conn_id) DO UPDATE
SET ok = EXCLUDED.ok, latency_ms = EXCLUDED.latency_ms, detail = EXCLUDED.detail,
    checked_at = now()
"""


def record(cursor, run_id: str, result: ProbeResult) -> None:
    """Upsert on (run_id, conn_id): a retried probe replaces its row instead of adding one."""
    cursor.execute(RECORD_SQL, (run_id, result.conn_id, result.ok, result.latency_ms, result.detail))
