"""The ops dashboard's panels from a real app database, rendered with every value escaped."""

from __future__ import annotations

from decimal import Decimal

import psycopg2
import pytest

pytestmark = pytest.mark.stack


def test_panels_show_backups_migrations_queue_audits_alerts_and_escape_values(app_dsn):
    from execplatform.dashboard import render
    from include.dashboard import all_panels
    from include.migrations import all_revisions

    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO backups (database_name, status, verified_at, size_bytes, restore_seconds)
                VALUES ('app', 'verified', now() - interval '2 hours', 3 * 1024 * 1024, 12.34);
            INSERT INTO alerts (level, fingerprint, dag_id, task_id, message)
                VALUES ('critical', 'f', 'db_backup', 'verify_backup', '<script>alert(1)</script>');
            INSERT INTO execution_tasks (task_type, status) VALUES ('idea', 'queued'), ('idea', 'dead');
            INSERT INTO audit_runs (dag_run_id, status) VALUES ('manual__1', 'failed');
            INSERT INTO audit_findings (audit_run_id, gate, passed)
                SELECT id, 'queue_dead_without_error', false FROM audit_runs;
        """)
        panels = {p.title: p for p in all_panels(cur)}
    conn.close()
    assert panels["Backups"].rows[0][1:6] == ("verified", Decimal("2.0"), "3072 kB", Decimal("12.3"), True)
    pending = ", ".join(r.revision for r in all_revisions()[1:])
    assert panels["Migrations"].note == f"applied: 0001; pending: {pending}"
    assert panels["Task queue"].rows == [("idea", 1, 0, 1, Decimal("0"))]
    assert panels["Task queue"].note.startswith("no bottleneck report yet")
    assert panels["Audits"].rows[0][2] == "failed" and panels["Audits"].rows[0][5] == "queue_dead_without_error"
    page = render(panels.values())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_queue_panel_shows_the_newest_bottleneck_report(app_head_dsn):
    from include.dashboard import queue

    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO execution_tasks (task_type, status, ai_model) VALUES ('implementation', 'queued', 'm');
            INSERT INTO task_bottleneck_reports (run_id, created_at, window_start, window_end, task_type, tasks,
                failures, avg_ms, p50_ms, p95_ms, queued_share, executing_share, cache_hit_share)
            VALUES ('old', now() - interval '1 hour', now() - interval '2 hours', now(), 'implementation',
                    10, 0, 900, 800, 1500, 0.1, 0.8, 0.1),
                   ('new', now(), now() - interval '1 hour', now(), 'implementation',
                    10, 0, 500, 400.04, 950.55, 0.2, 0.5, 0.3);
        """)
        panel = queue(cur)
    conn.close()
    assert panel.columns[-3:] == ["p50_ms", "p95_ms", "cache_hit_share"]
    assert panel.rows[0][0] == "implementation" and panel.rows[0][-3:] == (
        Decimal("400.0"), Decimal("950.6"), Decimal("0.300"))
