"""Critical operational and security events: one JSON log line and one append-only row each."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime

logger = logging.getLogger("execplatform.security")

SEVERITIES = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# the kinds of event the platform logs; a typo'd type must not silently start a new kind
EVENT_TYPES = frozenset(
    {
        "connection_failed",
        "permission_denied",
        "input_refused",
        "migration_applied",
        "migration_rolled_back",
        "rollback",
        "gate_failed",
        "alert_channel_failed",
        # recovery: kept in S3 too (execplatform.steps.backup_steps.record_recovery_event)
        "restore",
        "database_swapped",
        "approval",
        "migration_undo_failed",
        "migration_undo_resolved",
        # FSAR reports (include.audit.fsar_store): a blocking report filed, closed, or gone around
        "execution_blocked",
        "execution_unblocked",
        "block_overridden",
    }
)
_SENSITIVE_KEY = re.compile(r"pass|secret|token|api_?key|authorization|dsn|credential", re.IGNORECASE)


def redact(details: Mapping) -> dict:
    """Values under sensitive-looking keys are replaced, at any depth."""

    def clean(key: str, value):
        if _SENSITIVE_KEY.search(key):
            return "***"
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(key, v) for v in value]
        return value

    return {k: clean(str(k), v) for k, v in details.items()}


def log_security_event(
    cursor, event_type: str, severity: str, *, actor: str | None = None, **details
) -> dict:
    """Log the event as one JSON line and, with a cursor, append it to `security_events`."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"security event type {event_type!r} is not one of {sorted(EVENT_TYPES)}")
    if severity not in SEVERITIES:
        raise ValueError(f"security event severity {severity!r} is not one of {sorted(SEVERITIES)}")
    event = {
        "at": datetime.now(UTC).isoformat(),
        "event": event_type,
        "severity": severity,
        "actor": actor,
        "details": redact(details),
    }
    logger.log(SEVERITIES[severity], json.dumps(event, sort_keys=True, default=str))
    if cursor is not None:
        store_security_event(cursor, event)
    return event


def store_security_event(cursor, event: Mapping) -> None:
    """Append an event made by `log_security_event` to the `security_events` table."""
    cursor.execute(
        "INSERT INTO security_events (event_type, severity, actor, details) VALUES (%s, %s, %s, %s)",
        (event["event"], event["severity"], event["actor"], json.dumps(event["details"], default=str)),
    )
