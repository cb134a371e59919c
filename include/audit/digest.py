"""The audit's daily digest for stakeholders: gate results, indicators whose trend changed, ROI
(attributed and incremental), backup freshness, the FSAR reports (open ones first, and whether
one blocks execution), and a PNG plot per indicator series with its detected change points
marked.

`gather` reads everything from the app database, `plot_series` draws one series (matplotlib,
Agg backend: no display needed), `render` makes the email's subject and HTML, and `plain_table`
the same figures for a task log.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from include.migrations import table_exists


@dataclass
class Digest:
    day: date
    audit_run_id: int | None
    gates: list[tuple[str, bool, Any, Any]] = field(default_factory=list)  # gate, passed, observed, limit
    changes: list[tuple[str, str, date, str, float]] = field(default_factory=list)
    # segment, attributed, incremental
    roi: list[tuple[str, float, float | None]] = field(default_factory=list)
    backup_age_hours: float | None = None
    values: list[tuple[str, str, float]] = field(default_factory=list)  # today's indicator values
    # FSAR reports: open ones first (blocking first), then the newest closed (fsar_store.REPORT_COLUMNS)
    reports: list[tuple] = field(default_factory=list)

    @property
    def blocking_reports(self) -> list[str]:
        return [r[0] for r in self.reports if r[1] == "open" and r[3]]

    @property
    def failed_gates(self) -> list[str]:
        return [gate for gate, passed, *_ in self.gates if not passed]


def gather(cur, day: date, audit_run_id: int | None, *, change_days: int = 7) -> Digest:
    """What the schema has yet: indicators and ROI are left empty before their revisions."""
    digest = Digest(day, audit_run_id)
    if audit_run_id is not None:
        cur.execute(
            "SELECT gate, passed, observed, threshold FROM audit_findings WHERE audit_run_id = %s "
            "ORDER BY gate",
            (audit_run_id,),
        )
        digest.gates = cur.fetchall()
    cur.execute(
        "SELECT extract(epoch FROM now() - max(verified_at)) / 3600 FROM backups WHERE status = 'verified'"
    )
    age = cur.fetchone()[0]
    digest.backup_age_hours = None if age is None else round(float(age), 2)
    if table_exists(cur, "fsar_reports"):
        from include.audit.fsar_store import recent_reports

        digest.reports = recent_reports(cur, 20)
    if table_exists(cur, "offer_roi"):
        from include.offers.roi import LIVE_ASSIGNMENT_SQL

        cur.execute(
            f"""
            SELECT segment, attributed_roi_cents, incremental_roi_cents FROM offer_roi
            WHERE model_version_id = {LIVE_ASSIGNMENT_SQL} ORDER BY segment
            """  # noqa: S608 (a module constant)
        )
        digest.roi = cur.fetchall()
    if not table_exists(cur, "indicator_values"):
        return digest
    cur.execute(
        "SELECT indicator, dimension, day, direction, reference_mean FROM indicator_changes "
        "WHERE day > %s - %s ORDER BY day DESC, indicator, dimension",
        (day, change_days),
    )
    digest.changes = cur.fetchall()
    cur.execute(
        "SELECT indicator, dimension, value FROM indicator_values WHERE day = %s ORDER BY 1, 2",
        (day,),
    )
    digest.values = cur.fetchall()
    return digest


def series_with_changes(cur, *, days: int = 120) -> dict[tuple[str, str], tuple[list, list]]:
    """Each series of the last `days` days, with the days of its stored change points."""
    cur.execute(
        "SELECT indicator, dimension, day, value FROM indicator_values "
        "WHERE day > current_date - %s ORDER BY indicator, dimension, day",
        (days,),
    )
    found: dict[tuple[str, str], tuple[list, list]] = {}
    for indicator, dimension, day, value in cur.fetchall():
        found.setdefault((indicator, dimension), ([], []))[0].append((day, value))
    cur.execute("SELECT indicator, dimension, day FROM indicator_changes")
    for indicator, dimension, day in cur.fetchall():
        if (indicator, dimension) in found:
            found[(indicator, dimension)][1].append(day)
    return found


def plot_series(points: list[tuple[date, float]], change_days: list[date], title: str, path: Path) -> Path:
    """One indicator over time; each detected change point is a red dashed line and marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days, values = [d for d, _ in points], [v for _, v in points]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    try:
        ax.plot(days, values, marker=".", linewidth=1, label="daily value")
        by_day = dict(points)
        marked = [d for d in change_days if d in by_day]
        for d in marked:
            ax.axvline(d, color="red", linestyle="--", linewidth=1)
        if marked:
            ax.plot(marked, [by_day[d] for d in marked], "o", color="red", label="change point")
        ax.set_title(title)
        ax.set_xlabel("day")
        ax.set_ylabel(title.split("[")[0])
        ax.legend(loc="best", fontsize="small")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def write_plots(cur, folder: Path, *, days: int = 120) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if not table_exists(cur, "indicator_values"):
        return paths
    for (indicator, dimension), (points, change_days) in series_with_changes(cur, days=days).items():
        title = f"{indicator}[{dimension}]" if dimension else indicator
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", title)
        paths.append(plot_series(points, change_days, title, folder / f"{name}.png"))
    return paths


def _cents(value: float | None) -> str:
    return "n/a" if value is None else f"${value / 100:,.2f}"


def render(digest: Digest, plots: list[Path] = ()) -> tuple[str, str]:
    """The email's subject and HTML body (every value escaped: observed values come from data)."""
    e = html.escape
    verdict = f"{len(digest.failed_gates)} gate(s) FAILED" if digest.failed_gates else "all gates passed"
    subject = f"Platform audit {digest.day.isoformat()}: {verdict}, {len(digest.changes)} trend change(s)"
    if digest.blocking_reports:
        subject += f", execution BLOCKED by {len(digest.blocking_reports)} FSAR report(s)"
    reports = "".join(
        f"<tr><td>{e(r[0])}</td><td>{e(r[1])}</td><td>{r[2]}</td><td>{'<b>yes</b>' if r[3] else 'no'}</td>"
        f"<td>{e(r[4])}</td><td>{e(r[7])}</td><td>{e(r[9])} {e(r[10])}</td></tr>"
        for r in digest.reports
    )
    gates = "".join(
        f"<tr><td>{e(g)}</td><td>{'passed' if ok else '<b>FAILED</b>'}</td><td>{e(str(obs))}</td>"
        f"<td>{e(str(lim))}</td></tr>"
        for g, ok, obs, lim in digest.gates
    )
    changes = "".join(
        f"<li>{e(i)}{'[' + e(d) + ']' if d else ''}: {e(direction)} on {day.isoformat()} "
        f"(from a mean of {mean:.4g})</li>"
        for i, d, day, direction, mean in digest.changes
    )
    roi = "".join(
        f"<tr><td>{e(s)}</td><td>{_cents(a)}</td><td>{_cents(inc)}</td></tr>" for s, a, inc in digest.roi
    )
    backup = (
        "no verified backup"
        if digest.backup_age_hours is None
        else f"newest verified backup is {digest.backup_age_hours:.1f} h old"
    )
    body = f"""<h2>{e(subject)}</h2>
<h3>Gates</h3>
<table border="1"
    cellpadding="3"><tr><th>gate</th><th>result</th><th>observed</th><th>limit</th></tr>{gates}</table>
<h3>Indicators that changed trend (last 7 days)</h3>
<ul>{changes or "<li>none</li>"}</ul>
<h3>Offer ROI (live assignment)</h3>
<table border="1"
    cellpadding="3"><tr><th>segment</th><th>attributed</th><th>incremental</th></tr>{roi}</table>
{"" if digest.roi else "<p>no ROI computed yet</p>"}
<h3>FSAR reports (open first)</h3>
<table border="1" cellpadding="3"><tr><th>id</th><th>status</th><th>severity</th><th>blocks execution</th>
    <th>source</th><th>gates</th><th>closed by</th></tr>{reports}</table>
{"" if digest.reports else "<p>no FSAR report yet</p>"}
<h3>Backups</h3>
<p>{e(backup)}</p>
<h3>Plots</h3>
<p>{len(plots)} indicator plot(s) attached, change points marked in red.</p>
"""
    return subject, body


def plain_table(digest: Digest) -> str:
    """The same figures as fixed-width text, for the task log."""
    lines = [f"audit {digest.audit_run_id} on {digest.day}: gates"]
    lines += [
        f"  {'PASS' if ok else 'FAIL'}  {g:<36} observed={obs} limit={lim}"
        for g, ok, obs, lim in digest.gates
    ]
    lines.append("indicators:")
    lines += [f"  {i:<26} {d:<20} {v:>14.6g}" for i, d, v in digest.values]
    lines.append("trend changes:")
    lines += [f"  {i}[{d}] {direction} on {day}" for i, d, day, direction, _ in digest.changes] or ["  none"]
    lines.append("roi (attributed / incremental):")
    lines += [f"  {s:<12} {_cents(a):>14} {_cents(inc):>14}" for s, a, inc in digest.roi] or ["  none"]
    lines.append("fsar reports (id, status, severity, blocks, source, gates):")
    lines += [
        f"  {r[0]} {r[1]:<6} {r[2]:>3} {'BLOCKS' if r[3] else '-':<6} {r[4]:<8} {r[7]}"
        for r in digest.reports
    ] or ["  none"]
    lines.append(f"backup age: {digest.backup_age_hours} h")
    return "\n".join(lines)
