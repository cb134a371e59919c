"""What the ops dashboard shows, read from the app database: one query per panel.

Each panel is a title, column names and rows, so the page, a test or a script can render it
the same way. Panels for the queue, models and offers are added by the capabilities that
fill their tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Panel:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    note: str = ""


def _panel(cur, title: str, query: str, note: str = "") -> Panel:
    cur.execute(query)
    return Panel(title, [d[0] for d in cur.description], cur.fetchall(), note)


def _exists(cur, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
    return cur.fetchone()[0]


def backups(cur) -> Panel:
    return _panel(cur, "Backups", """
        SELECT id, status, round(extract(epoch FROM now() - coalesce(verified_at, finished_at, started_at)) / 3600, 1)
                   AS age_hours,
               pg_size_pretty(size_bytes) AS size, round(restore_seconds::numeric, 1) AS restore_seconds,
               verified_at IS NOT NULL AS verified, left(coalesce(error, ''), 120) AS error
          FROM backups ORDER BY id DESC LIMIT 10""")  # fmt: skip


def migrations(cur) -> Panel:
    from include.migrations import current_revision, pending_after

    revision = current_revision(cur)
    pending = [r.revision for r in pending_after(revision)]
    note = f"applied: {revision or 'none'}; pending: {', '.join(pending) or 'none'}"
    if not _exists(cur, "migration_runs"):
        return Panel("Migrations", ["run"], [], note)
    return _panel(cur, "Migrations", """
        SELECT id, dag_run_id, from_revision, target_revision, backup_id, status, started_at, finished_at,
               left(coalesce(error, ''), 160) AS error
          FROM migration_runs ORDER BY id DESC LIMIT 10""", note)  # fmt: skip


def queue(cur) -> Panel:
    """Backlog by type and state; the newest bottleneck report's figures once task_batch has run."""
    backlog = _panel(cur, "Task queue", """
        SELECT task_type, count(*) FILTER (WHERE status = 'queued') AS queued,
               count(*) FILTER (WHERE status = 'running') AS running,
               count(*) FILTER (WHERE status = 'dead') AS dead,
               round(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')) / 60)
                   AS oldest_queued_minutes
          FROM execution_tasks GROUP BY task_type ORDER BY task_type""")  # fmt: skip
    if not _exists(cur, "task_bottleneck_reports"):
        backlog.note = "no bottleneck report yet: revision 0003 is not applied"
        return backlog
    cur.execute("""
        SELECT task_type, round(p50_ms::numeric, 1), round(p95_ms::numeric, 1), round(cache_hit_share::numeric, 3)
          FROM task_bottleneck_reports
         WHERE run_id = (SELECT run_id FROM task_bottleneck_reports ORDER BY created_at DESC LIMIT 1)""")
    report = {row[0]: row[1:] for row in cur.fetchall()}
    backlog.columns += ["p50_ms", "p95_ms", "cache_hit_share"]
    backlog.rows = [(*row, *report.get(row[0], (None, None, None))) for row in backlog.rows]
    return backlog


def audits(cur) -> Panel:
    return _panel(cur, "Audits", """
        SELECT r.id, r.dag_run_id, r.status, r.finished_at,
               count(f.*) AS gates, coalesce(string_agg(f.gate, ', ') FILTER (WHERE NOT f.passed), '') AS failed
          FROM audit_runs r LEFT JOIN audit_findings f ON f.audit_run_id = r.id
         GROUP BY r.id ORDER BY r.id DESC LIMIT 10""")  # fmt: skip


def alerts(cur) -> Panel:
    return _panel(cur, "Recent alerts", """
        SELECT last_seen, level, dag_id, task_id, occurrences, channel_failures, left(message, 160) AS message
          FROM alerts ORDER BY last_seen DESC LIMIT 20""")  # fmt: skip


PANELS = (backups, migrations, queue, audits, alerts)


def all_panels(cur) -> list[Panel]:
    return [panel(cur) for panel in PANELS]
