"""The ops dashboard's panels from a real app database, rendered with every value escaped."""

from __future__ import annotations

from decimal import Decimal

import psycopg2
import pytest

pytestmark = pytest.mark.stack


def test_panels_show_backups_migrations_audits_alerts_and_escape_values(app_dsn):
    from execplatform.dashboard import render
    from include.dashboard import all_panels
    from include.migrations import all_revisions

    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO backups (database_name, status, verified_at, size_bytes, restore_seconds)
                VALUES ('app', 'verified', now() - interval '2 hours', 3 * 1024 * 1024, 12.34);
            INSERT INTO alerts (level, fingerprint, dag_id, task_id, message)
                VALUES ('critical', 'f', 'db_backup', 'verify_backup', '<script>alert(1)</script>');
            INSERT INTO audit_runs (dag_run_id, status) VALUES ('manual__1', 'failed');
            INSERT INTO audit_findings (audit_run_id, gate, passed)
                SELECT id, 'queue_dead_without_error', false FROM audit_runs;
        """)
        panels = {p.title: p for p in all_panels(cur)}
    conn.close()
    assert panels["Backups"].rows[0][1:6] == ("verified", Decimal("2.0"), "3072 kB", Decimal("12.3"), True)
    pending = ", ".join(r.revision for r in all_revisions()[1:])
    assert panels["Migrations"].note == f"applied: 0001; pending: {pending}"
    assert panels["Audits"].rows[0][2] == "failed" and panels["Audits"].rows[0][5] == "queue_dead_without_error"
    page = render(panels.values())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
