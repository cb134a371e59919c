"""What the ops dashboard shows, read from the app database: one query per panel.

Each panel is a title, column names and rows, so the page, a test or a script can render it
the same way. Panels are grouped into pages (PAGES); a panel whose tables a later revision
creates says so instead of failing while that revision is pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from include.migrations import table_exists


@dataclass
class Panel:
    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    note: str = ""


def _panel(cur, title: str, query: str, note: str = "") -> Panel:
    cur.execute(query)
    return Panel(title, [d[0] for d in cur.description], cur.fetchall(), note)


def backups(cur) -> Panel:
    return _panel(
        cur,
        "Backups",
        """
        SELECT id, status,
               round(extract(epoch FROM now() - coalesce(verified_at, finished_at, started_at)) / 3600, 1)
                   AS age_hours,
               pg_size_pretty(size_bytes) AS size, round(restore_seconds::numeric, 1) AS restore_seconds,
               verified_at IS NOT NULL AS verified, left(coalesce(error, ''), 120) AS error
          FROM backups ORDER BY id DESC LIMIT 10""",
    )


def migrations(cur) -> Panel:
    from include.migrations import current_revision, pending_after

    revision = current_revision(cur)
    pending = [r.revision for r in pending_after(revision)]
    note = f"applied: {revision or 'none'}; pending: {', '.join(pending) or 'none'}"
    if not table_exists(cur, "migration_runs"):
        return Panel("Migrations", ["run"], [], note)
    return _panel(
        cur,
        "Migrations",
        """
        SELECT id, dag_run_id, from_revision, target_revision, backup_id, status, started_at, finished_at,
               left(coalesce(error, ''), 160) AS error
          FROM migration_runs ORDER BY id DESC LIMIT 10""",
        note,
    )


def queue(cur) -> Panel:
    """Backlog by type and state; the newest bottleneck report's figures once task_batch has run."""
    backlog = _panel(
        cur,
        "Task queue",
        """
        SELECT task_type, count(*) FILTER (WHERE status = 'queued') AS queued,
               count(*) FILTER (WHERE status = 'running') AS running,
               count(*) FILTER (WHERE status = 'dead') AS dead,
               round(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')) / 60)
                   AS oldest_queued_minutes
          FROM execution_tasks GROUP BY task_type ORDER BY task_type""",
    )
    if not table_exists(cur, "task_bottleneck_reports"):
        backlog.note = "no bottleneck report yet: revision 0003 is not applied"
        return backlog
    cur.execute("""
        SELECT task_type, round(p50_ms::numeric, 1), round(p95_ms::numeric, 1),
            round(cache_hit_share::numeric, 3)
          FROM task_bottleneck_reports
         WHERE run_id = (SELECT run_id FROM task_bottleneck_reports ORDER BY created_at DESC LIMIT 1)""")
    report = {row[0]: row[1:] for row in cur.fetchall()}
    backlog.columns += ["p50_ms", "p95_ms", "cache_hit_share"]
    backlog.rows = [(*row, *report.get(row[0], (None, None, None))) for row in backlog.rows]
    return backlog


def audits(cur) -> Panel:
    return _panel(
        cur,
        "Audits",
        """
        SELECT r.id, r.dag_run_id, r.status, r.finished_at,
               count(f.*) AS gates, coalesce(string_agg(f.gate, ', ') FILTER (WHERE NOT f.passed), '') AS
                   failed
          FROM audit_runs r LEFT JOIN audit_findings f ON f.audit_run_id = r.id
         GROUP BY r.id ORDER BY r.id DESC LIMIT 10""",
    )


def fsar_reports(cur) -> Panel:
    """The FSAR reports, open ones first; the note says whether one blocks execution now."""
    from include.audit.fsar_store import blocking_report, recent_reports

    if not table_exists(cur, "fsar_reports"):
        return _pending("FSAR reports", "fsar_reports", "FSAR reports")
    blocking = blocking_report(cur)
    rows = recent_reports(cur, 20)
    columns = [d[0] for d in cur.description]
    note = str(blocking) if blocking else "execution is not blocked: no open report has block_execution"
    return Panel("FSAR reports", columns, rows, note)


def alerts(cur) -> Panel:
    return _panel(
        cur,
        "Recent alerts",
        """
        SELECT last_seen, level, dag_id, task_id, occurrences, channel_failures, left(message, 160) AS message
          FROM alerts ORDER BY last_seen DESC LIMIT 20""",
    )


def _pending(title: str, table: str, what: str) -> Panel:
    return Panel(
        title,
        ["state"],
        [],
        f"no {what} yet: table {table} does not exist (its revision is pending)",
    )


def indicators(cur) -> Panel:
    """Each leading indicator's newest value and the newest trend change signalled on it."""
    if not table_exists(cur, "indicator_values"):
        return _pending("Leading indicators", "indicator_values", "indicators")
    changes = table_exists(cur, "indicator_changes")
    change_join = (
        """
        LEFT JOIN LATERAL (SELECT c.day, c.direction FROM indicator_changes c
                            WHERE c.indicator = v.indicator AND c.dimension = v.dimension
                            ORDER BY c.day DESC LIMIT 1) c ON true"""
        if changes
        else ""
    )
    change_columns = (
        "c.day AS last_change_day, c.direction AS change_direction"
        if changes
        else "NULL AS last_change_day, NULL AS change_direction"
    )
    return _panel(
        cur,
        "Leading indicators",
        f"""
        SELECT DISTINCT ON (v.indicator, v.dimension) v.indicator, v.dimension, v.day,
               round(v.value::numeric, 4) AS value, v.threshold, {change_columns}
          FROM indicator_values v {change_join}
         ORDER BY v.indicator, v.dimension, v.day DESC""",  # noqa: S608 (fixed fragments)
        "trend changes are CUSUM change points on the daily series",
    )


def models(cur) -> Panel:
    """Model versions with their evaluation on held-out data (AUC, log loss, Brier, calibration
    error, the policy's expected value per impression); the champion is the one in production."""
    cur.execute(
        "SELECT model_name, version FROM model_versions WHERE status = 'champion' ORDER BY model_name"
    )
    champions = ", ".join(f"{name} v{version}" for name, version in cur.fetchall()) or "none"
    return _panel(
        cur,
        "Model versions",
        """
        SELECT id, model_name, version, status, round((metrics->>'auc')::numeric, 4) AS auc,
               round((metrics->>'log_loss')::numeric, 4) AS log_loss, round((metrics->>'brier')::numeric, 4)
                   AS brier, round((metrics->>'calibration_error')::numeric, 4) AS calibration_error,
               round((metrics->>'policy_roi_cents_per_impression')::numeric, 2) AS policy_value_cents,
               trained_to, promoted_at, left(coalesce(metrics->>'decision', ''), 120) AS decision
          FROM model_versions ORDER BY id DESC LIMIT 10""",
        f"champion: {champions}",
    )


def offers(cur) -> Panel:
    if not table_exists(cur, "offer_publications"):
        return _pending("Published offers", "offer_publications", "published offers")
    # revision 0012 retires offers (their coupons deleted); before it, none is
    retired = "p.retired_at" if table_exists(cur, "offer_policy_versions") else "NULL::timestamptz"
    return _panel(
        cur,
        "Published offers",
        f"""
        SELECT p.model_version_id, p.segment, o.code, o.product, o.discount_pct, p.stripe_coupon_id,
            p.published_at, {retired} AS retired_at,
               (SELECT count(*) FROM offer_assignments a
                 WHERE a.model_version_id = p.model_version_id AND a.offer_id = p.offer_id
                   AND a.segment = p.segment) AS assigned_users
          FROM offer_publications p JOIN offers o ON o.id = p.offer_id
         ORDER BY p.model_version_id DESC, p.segment LIMIT 30""",  # noqa: S608 (constants)
    )


def roi(cur) -> Panel:
    if not table_exists(cur, "offer_roi"):
        return _pending("Offer ROI", "offer_roi", "ROI")
    return _panel(
        cur,
        "Offer ROI",
        """
        SELECT model_version_id, segment, treated_users, holdout_users,
               round(attributed_revenue_cents / 100.0, 2) AS attributed_revenue,
               round(discount_cost_cents / 100.0, 2) AS discount_cost,
               round((attributed_roi_cents / 100.0)::numeric, 2) AS attributed_roi,
               round((incremental_roi_cents / 100.0)::numeric, 2) AS incremental_roi,
               round((incremental_ci_low_cents / 100.0)::numeric, 2) AS ci_low,
               round((incremental_ci_high_cents / 100.0)::numeric, 2) AS ci_high,
               round((roi_gap_cents / 100.0)::numeric, 2) AS attribution_gap, computed_at
          FROM offer_roi ORDER BY model_version_id DESC, segment LIMIT 30""",
        "in dollars; the gap is how much attribution overstates the incremental effect",
    )


def offer_feedback(cur) -> Panel:
    if not table_exists(cur, "offer_bandit_arms"):
        return _pending("Offer feedback", "offer_bandit_arms", "feedback")
    if not table_exists(cur, "offer_policy_versions"):  # before revision 0012: no priors, no retirement
        return _panel(
            cur,
            "Offer feedback",
            """
            SELECT a.segment, o.code, a.impressions, a.redemptions,
                   round((a.alpha / (a.alpha + a.beta))::numeric, 4) AS posterior_mean,
                   round(a.share::numeric, 3) AS share, a.updated_at
              FROM offer_bandit_arms a JOIN offers o ON o.id = a.offer_id ORDER BY a.segment, o.code""",
        )
    return _panel(
        cur,
        "Offer feedback",
        """
        SELECT a.segment, o.code, a.impressions, a.redemptions,
               round((a.prior_alpha / (a.prior_alpha + a.prior_beta))::numeric, 4) AS model_prior_mean,
               round((a.alpha / (a.alpha + a.beta))::numeric, 4) AS posterior_mean,
               round(a.share::numeric, 3) AS share, a.losing_since, a.retired_at, a.updated_at
          FROM offer_bandit_arms a JOIN offers o ON o.id = a.offer_id
         ORDER BY a.retired_at IS NOT NULL, a.segment, o.code""",
        "the live arms first; shares are what serving draws from (policy: /ops/offers/shares)",
    )


# page name -> its panels, in the order the dashboard shows them
def recovery_events(events: list[dict[str, Any]], note: str = "") -> Panel:
    """Restores, swaps, approvals and undos, newest first, from where a restore cannot roll them
    back (the S3 catalog's events, not the database)."""
    rows = [
        (
            e.get("at"),
            e.get("event"),
            e.get("severity"),
            e.get("actor"),
            ", ".join(f"{k}={v}" for k, v in sorted((e.get("details") or {}).items()))[:200],
        )
        for e in events
    ]
    columns = ["at", "event", "severity", "actor", "details"]
    return Panel("Recovery events (kept in S3)", columns, rows, note)


PAGES = {
    "overview": (backups, migrations, queue, alerts),
    "models": (models,),
    "offers": (offers, roi, offer_feedback),
    "audits": (fsar_reports, audits, indicators),
}


def page_panels(cur, page: str) -> list[Panel]:
    return [panel(cur) for panel in PAGES[page]]


def all_panels(cur) -> list[Panel]:
    return [panel(cur) for panels in PAGES.values() for panel in panels]
