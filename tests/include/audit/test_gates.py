"""Each audit gate on the real PostgreSQL: it passes while its invariant holds, and fails when
the invariant is broken on purpose."""

from __future__ import annotations

import json

import psycopg2
import pytest

from include.audit.gates import DEFAULT_LIMITS, GATES, finish_audit, record, start_audit
from include.migrations import all_revisions


def gate(dsn: str, name: str, setup: str | None = None, args=()):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        if setup:
            cur.execute(setup, args)
        evidence = GATES[name](cur, DEFAULT_LIMITS)
    conn.close()
    return evidence


TASK = (
    "INSERT INTO execution_tasks (task_type, status, lease_owner, lease_token, lease_expires_at, error, "
    "ai_model) "
)


def test_expired_leases(app_head_dsn):
    fresh = (
        TASK
        + "VALUES ('idea', 'running', 'w1', gen_random_uuid(), now() + interval '1 minute', NULL, 'gpt-4.1')"
    )
    assert gate(app_head_dsn, "queue_expired_leases", fresh).passed
    stale = (
        TASK + "VALUES ('idea', 'running', 'w2', gen_random_uuid(), now() - interval '20 minutes', NULL, "
        "'gpt-4.1')"
    )
    evidence = gate(app_head_dsn, "queue_expired_leases", stale)
    assert not evidence.passed and evidence.observed == 1 and "lease_expires_at" in evidence.query
    assert evidence.limit == "0 with a lease expired over 15 min"  # the limit, as configured


def test_dead_tasks_keep_their_error(app_head_dsn):
    assert gate(
        app_head_dsn,
        "queue_dead_without_error",
        TASK + "VALUES ('idea', 'dead', NULL, NULL, NULL, 'HTTP 400', 'gpt-4.1')",
    ).passed
    evidence = gate(
        app_head_dsn,
        "queue_dead_without_error",
        TASK + "VALUES ('idea', 'dead', NULL, NULL, NULL, ' ', 'gpt-4.1')",
    )
    assert not evidence.passed and evidence.observed == 1


def test_status_values_even_without_the_check_constraint(app_head_dsn):
    assert gate(app_head_dsn, "queue_valid_status").passed
    broken = (
        "ALTER TABLE execution_tasks DROP CONSTRAINT execution_tasks_status_check; "
        "INSERT INTO execution_tasks (task_type, status) VALUES ('idea', 'zombie')"
    )
    assert gate(app_head_dsn, "queue_valid_status", broken).observed == 1


def test_tasks_created_after_the_migration_carry_ai_model(app_dsn, app_head_dsn):
    before = gate(app_dsn, "queue_ai_model_after_migration")
    assert before.passed and "not applied" in before.observed
    with_model = "INSERT INTO execution_tasks (task_type, ai_model) VALUES ('idea', 'gpt-4.1')"
    assert gate(app_head_dsn, "queue_ai_model_after_migration", with_model).passed
    without = "INSERT INTO execution_tasks (task_type) VALUES ('idea')"
    assert gate(app_head_dsn, "queue_ai_model_after_migration", without).observed == 1


def test_backup_freshness_and_restore(app_head_dsn):
    assert gate(app_head_dsn, "backup_fresh_and_restored").observed == "no verified backup"
    backup = (
        "INSERT INTO backups (database_name, status, verified_at, restore_seconds) "
        "VALUES ('app', 'verified', now() - %s * interval '1 hour', %s)"
    )
    assert not gate(app_head_dsn, "backup_fresh_and_restored", backup, (30, 12.5)).passed  # too old
    assert not gate(app_head_dsn, "backup_fresh_and_restored", backup, (1, None)).passed  # restore not timed
    evidence = gate(app_head_dsn, "backup_fresh_and_restored", backup, (0.5, 12.5))
    assert evidence.passed and evidence.observed["restore_seconds"] == 12.5


def test_applied_revisions_match_their_files(app_head_dsn):
    assert gate(app_head_dsn, "migrations_match_files").passed
    edited = "UPDATE migration_checksums SET sha256 = repeat('0', 64) WHERE revision = '0002'"
    evidence = gate(app_head_dsn, "migrations_match_files", edited)
    assert not evidence.passed and "revision 0002" in evidence.observed["changed"][0]


def test_a_revision_pending_too_long(app_dsn):
    first = gate(app_dsn, "migrations_not_pending_too_long")
    assert first.passed and first.observed["pending"] == [r.revision for r in all_revisions()[1:]]
    seen_long_ago = (
        "INSERT INTO audit_runs (dag_run_id) VALUES ('old'); "
        "INSERT INTO audit_findings (audit_run_id, gate, passed, observed, created_at) "
        "SELECT id, 'migrations_not_pending_too_long', true, %s, now() - interval '8 days' "
        "FROM audit_runs WHERE dag_run_id = 'old'"
    )
    evidence = gate(app_dsn, "migrations_not_pending_too_long", seen_long_ago, (json.dumps(first.observed),))
    assert not evidence.passed and evidence.observed["days_waiting"]["0002"] >= 8


def test_an_audit_fails_naming_failed_and_missing_gates(app_head_dsn):
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        run = start_audit(cur, "manual__1")
        assert start_audit(cur, "manual__1") == run  # a re-run continues the same audit
        for name in ("queue_valid_status", "backup_fresh_and_restored"):
            record(cur, run, GATES[name](cur, DEFAULT_LIMITS))
        record(cur, run, GATES["queue_valid_status"](cur, DEFAULT_LIMITS))  # a retried gate replaces its row
        failed = finish_audit(
            cur, run, ["queue_valid_status", "backup_fresh_and_restored", "queue_expired_leases"]
        )
        cur.execute("SELECT status FROM audit_runs WHERE id = %s", (run,))
        status = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM audit_findings WHERE audit_run_id = %s", (run,))
        findings = cur.fetchone()[0]
    conn.close()
    assert failed == ["backup_fresh_and_restored", "queue_expired_leases"]
    assert status == "failed" and findings == 2


@pytest.mark.parametrize(("answer", "passed"), [(401, True), (403, True), (200, False)])
def test_the_api_refuses_requests_without_a_login(app_head_dsn, monkeypatch, answer, passed):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(answer if self.path == "/api/v2/dags" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        evidence = gate(app_head_dsn, "security_api_requires_login")
    finally:
        server.shutdown()
    assert (evidence.passed, evidence.observed) == (passed, answer)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:9/")  # nothing listens on the discard port
    assert not gate(app_head_dsn, "security_api_requires_login").passed


def test_without_a_base_url_the_login_gate_asks_the_api_server_the_workers_reach(app_head_dsn, monkeypatch):
    """Compose sets no `[api] base_url` (the browser's address); the api-server's address for the
    workers, `[core] execution_api_server_url` less its path, is the deployment's own setting."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(401 if self.path == "/api/v2/dags" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    execution = f"http://127.0.0.1:{server.server_address[1]}/execution/"
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", execution)
    try:
        evidence = gate(app_head_dsn, "security_api_requires_login")
    finally:
        server.shutdown()
    assert (evidence.passed, evidence.observed) == (True, 401)
    assert evidence.query == f"GET http://127.0.0.1:{server.server_address[1]}/api/v2/dags without a token"
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL")
    evidence = gate(app_head_dsn, "security_api_requires_login")
    assert not evidence.passed and "cannot reach the API" in evidence.observed
