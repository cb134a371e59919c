"""Hard pass/fail gates over the platform's invariants, each recording its evidence.

A gate is a function `(cursor, limits) -> Evidence`: the query it ran, the value it observed
and the limit it held that value to. `record` stores the evidence in `audit_findings` (a
re-run of the same gate in the same audit replaces its row); the adversarial_audit DAG runs
every gate in `GATES` as its own task and fails, naming each failed gate, when any fails.

Limits are configurable per run (`DEFAULT_LIMITS`, overridden by the DAG's params).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_LIMITS: dict[str, float] = {
    "expired_lease_minutes": 15,  # a running task whose lease expired longer ago: its worker is gone
    "backup_max_age_hours": 26,  # daily backups, with slack for a slow run
    "pending_revision_days": 7,  # a revision on disk but not applied for longer than this
}


@dataclass(frozen=True)
class Evidence:
    gate: str
    passed: bool
    observed: Any
    limit: Any
    query: str

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"gate {self.gate} {verdict}: observed {self.observed!r}, limit {self.limit!r}"


def _scalar(cur, query: str, params: Mapping | tuple = ()) -> Any:
    cur.execute(query, params)
    return cur.fetchone()[0]


def _count_is_zero(gate: str, query: str, params: Mapping | tuple = ()) -> Callable[[Any], Evidence]:
    def check(cur) -> Evidence:
        observed = _scalar(cur, query, params)
        return Evidence(gate, observed == 0, observed, 0, query)

    return check


# --- queue ------------------------------------------------------------------------------------


def queue_expired_leases(cur, limits: Mapping[str, float]) -> Evidence:
    query = ("SELECT count(*) FROM execution_tasks WHERE status = 'running' "
             "AND lease_expires_at < now() - %(minutes)s * interval '1 minute'")  # fmt: skip
    return _count_is_zero("queue_expired_leases", query, {"minutes": limits["expired_lease_minutes"]})(cur)


def queue_dead_without_error(cur, limits: Mapping[str, float]) -> Evidence:
    query = "SELECT count(*) FROM execution_tasks WHERE status = 'dead' AND coalesce(btrim(error), '') = ''"
    return _count_is_zero("queue_dead_without_error", query)(cur)


QUEUE_STATES = ("queued", "running", "succeeded", "failed", "dead")


def queue_valid_status(cur, limits: Mapping[str, float]) -> Evidence:
    """Independent of the table's CHECK constraint, which a hand-made change could drop."""
    query = "SELECT count(*) FROM execution_tasks WHERE status <> ALL(%(states)s)"
    return _count_is_zero("queue_valid_status", query, {"states": list(QUEUE_STATES)})(cur)


def queue_ai_model_after_migration(cur, limits: Mapping[str, float]) -> Evidence:
    """Tasks created after revision 0002 was applied must carry ai_model; before it, none can."""
    gate = "queue_ai_model_after_migration"
    cur.execute("SELECT to_regclass('public.migration_checksums') IS NOT NULL")
    applied_at = None
    if cur.fetchone()[0]:
        cur.execute("SELECT applied_at FROM migration_checksums WHERE revision = '0002'")
        applied_at = (cur.fetchone() or (None,))[0]
    if applied_at is None:
        return Evidence(gate, True, "revision 0002 not applied: no task can carry ai_model yet", None, "")
    query = "SELECT count(*) FROM execution_tasks WHERE created_at > %(applied_at)s AND ai_model IS NULL"
    return _count_is_zero(gate, query, {"applied_at": applied_at})(cur)


# --- backups ----------------------------------------------------------------------------------


def backup_fresh_and_restored(cur, limits: Mapping[str, float]) -> Evidence:
    """The newest verified backup is younger than the limit, and its restore was timed."""
    query = ("SELECT id, extract(epoch FROM now() - verified_at) / 3600, restore_seconds FROM backups "
             "WHERE status = 'verified' ORDER BY verified_at DESC LIMIT 1")  # fmt: skip
    cur.execute(query)
    row = cur.fetchone()
    limit = limits["backup_max_age_hours"]
    if row is None:
        return Evidence("backup_fresh_and_restored", False, "no verified backup", f"<= {limit} h", query)
    backup_id, age_hours, restore_seconds = row
    observed = {"backup_id": backup_id, "age_hours": round(float(age_hours), 2), "restore_seconds": restore_seconds}
    passed = float(age_hours) <= limit and restore_seconds is not None
    return Evidence("backup_fresh_and_restored", passed, observed, f"<= {limit} h, restore checked", query)


# --- migrations -------------------------------------------------------------------------------


def migrations_match_files(cur, limits: Mapping[str, float]) -> Evidence:
    """Every applied revision's file is unchanged, and the applied head is a known revision."""
    from include.migrations import checksum_problems, current_revision

    problems = checksum_problems(cur)
    revision = current_revision(cur)
    return Evidence("migrations_match_files", not problems, {"current": revision, "changed": problems}, [],
                    "migration_checksums vs the revision files")  # fmt: skip


def migrations_not_pending_too_long(cur, limits: Mapping[str, float]) -> Evidence:
    """A revision first seen pending by an audit more than the limit ago has waited too long."""
    from include.migrations import current_revision, pending_after

    gate = "migrations_not_pending_too_long"
    pending = [r.revision for r in pending_after(current_revision(cur))]
    query = ("SELECT extract(epoch FROM now() - min(created_at)) / 86400 FROM audit_findings "
             "WHERE gate = %(gate)s AND observed -> 'pending' ? %(revision)s")  # fmt: skip
    waiting = {}
    for revision in pending:
        days = _scalar(cur, query, {"gate": gate, "revision": revision})
        waiting[revision] = round(float(days), 2) if days is not None else 0.0
    limit = limits["pending_revision_days"]
    passed = all(days <= limit for days in waiting.values())
    return Evidence(gate, passed, {"pending": pending, "days_waiting": waiting}, f"<= {limit} days", query)


# --- security ---------------------------------------------------------------------------------


def security_api_requires_login(cur, limits: Mapping[str, float]) -> Evidence:
    """The Airflow REST API (and the UI behind the same login) refuses a request without a
    token. The address is Airflow's own `[api] base_url`."""
    import os
    import urllib.error
    import urllib.request

    gate = "security_api_requires_login"
    base = os.environ.get("AIRFLOW__API__BASE_URL", "").rstrip("/")
    if not base:
        return Evidence(gate, False, "AIRFLOW__API__BASE_URL is not set: cannot reach the API", "401", "")
    url = f"{base}/api/v2/dags"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return Evidence(gate, False, f"GET {url} failed: {exc}", "401 or 403", f"GET {url}")
    return Evidence(gate, status in (401, 403), status, "401 or 403", f"GET {url} without a token")


GATES: dict[str, Callable[..., Evidence]] = {
    gate.__name__: gate
    for gate in (
        queue_expired_leases, queue_dead_without_error, queue_valid_status, queue_ai_model_after_migration,
        backup_fresh_and_restored, migrations_match_files, migrations_not_pending_too_long,
        security_api_requires_login,
    )
}  # fmt: skip


# --- the audit record -------------------------------------------------------------------------


def start_audit(cur, dag_run_id: str) -> int:
    cur.execute("SELECT id FROM audit_runs WHERE dag_run_id = %s", (dag_run_id,))
    if row := cur.fetchone():
        cur.execute("UPDATE audit_runs SET status = 'running', finished_at = NULL WHERE id = %s", (row[0],))
        return row[0]
    cur.execute("INSERT INTO audit_runs (dag_run_id) VALUES (%s) RETURNING id", (dag_run_id,))
    return cur.fetchone()[0]


def record(cur, audit_run_id: int, evidence: Evidence) -> None:
    cur.execute("DELETE FROM audit_findings WHERE audit_run_id = %s AND gate = %s", (audit_run_id, evidence.gate))
    cur.execute(
        "INSERT INTO audit_findings (audit_run_id, gate, passed, observed, threshold, query) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (audit_run_id, evidence.gate, evidence.passed, json.dumps(evidence.observed, default=str),
         json.dumps(evidence.limit, default=str), evidence.query),
    )  # fmt: skip


def finish_audit(cur, audit_run_id: int, expected_gates: list[str]) -> list[str]:
    """Mark the audit passed or failed; returns the failed gates (a gate with no finding,
    because its task never ran, counts as failed)."""
    cur.execute("SELECT gate, passed FROM audit_findings WHERE audit_run_id = %s", (audit_run_id,))
    results = dict(cur.fetchall())
    failed = sorted(g for g in expected_gates if not results.get(g, False))
    cur.execute("UPDATE audit_runs SET status = %s, finished_at = now() WHERE id = %s",
                ("failed" if failed else "passed", audit_run_id))  # fmt: skip
    return failed
