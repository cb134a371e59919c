"""Alerts: their records and grouping (repeats within a window are grouped, not re-sent); the level
and the channels it reaches are in `alert_levels`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import timedelta

from include.observability.alert_levels import Level

DEFAULT_GROUP_WINDOW = timedelta(minutes=30)

_VOLATILE = re.compile(r"0x[0-9a-f]+|[0-9a-f]{8}-[0-9a-f-]{27}|\d+", re.IGNORECASE)


def normalize_error(error: str | None) -> str:
    """The error with its volatile parts (numbers, ids, addresses) blanked, for grouping."""
    return _VOLATILE.sub("#", error or "")[:500]


@dataclass(frozen=True)
class Alert:
    level: Level
    title: str
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None
    error: str | None = None
    log_url: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Same DAG, task and error (modulo numbers and ids): the same alert."""
        key = "|".join((self.dag_id or "", self.task_id or "", normalize_error(self.error or self.title)))
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def subject(self) -> str:
        where = ".".join(p for p in (self.dag_id, self.task_id) if p)
        return f"[{self.level.name}] {where}: {self.title}" if where else f"[{self.level.name}] {self.title}"

    def body(self, grouped_before: int = 0) -> str:
        lines = [
            self.subject(),
            "",
            f"DAG:     {self.dag_id or '-'}",
            f"Task:    {self.task_id or '-'}",
            f"Run:     {self.run_id or '-'}",
            f"Try:     {self.try_number if self.try_number is not None else '-'}",
            f"Error:   {self.error or '-'}",
            f"Log:     {self.log_url or '-'}",
        ]
        if grouped_before:
            lines.append(
                f"The previous alert for this error repeated {grouped_before} more time(s) in its window."
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Grouping:
    alert_id: int
    occurrences: int
    grouped_before: int  # repeats folded into the previous window's alert

    @property
    def is_first(self) -> bool:
        return self.occurrences == 1


def record(cursor, alert: Alert, window: timedelta = DEFAULT_GROUP_WINDOW) -> Grouping:
    """Count the alert in `alerts`: a repeat within `window` of its group's first alert only
    increments that row; otherwise a new row starts a new group (and is sent)."""
    # serialise concurrent alerts with the same fingerprint, so two failing tasks make one group
    cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (alert.fingerprint,))
    cursor.execute(
        """
        UPDATE alerts SET occurrences = occurrences + 1, last_seen = now()
        WHERE id = (SELECT id FROM alerts WHERE fingerprint = %s AND first_seen > now() - %s
                    ORDER BY first_seen DESC LIMIT 1)
        RETURNING id, occurrences
        """,
        (alert.fingerprint, window),
    )
    if row := cursor.fetchone():
        return Grouping(row[0], row[1], 0)
    cursor.execute(
        "SELECT occurrences FROM alerts WHERE fingerprint = %s ORDER BY first_seen DESC LIMIT 1",
        (alert.fingerprint,),
    )
    previous = cursor.fetchone()
    cursor.execute(
        """
        INSERT INTO alerts (level, fingerprint, dag_id, task_id, run_id, try_number, message)
        VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id
        """,
        (
            alert.level.name.lower(),
            alert.fingerprint,
            alert.dag_id,
            alert.task_id,
            alert.run_id,
            alert.try_number,
            alert.body(),
        ),
    )
    return Grouping(cursor.fetchone()[0], 1, previous[0] - 1 if previous else 0)


def count_channel_failure(cursor, alert_id: int) -> None:
    cursor.execute("UPDATE alerts SET channel_failures = channel_failures + 1 WHERE id = %s", (alert_id,))
