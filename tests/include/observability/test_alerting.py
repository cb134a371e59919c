"""Alert levels, fingerprints, grouping in the alerts table, and the security event log."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import psycopg2
import pytest

from include.observability.alert_levels import CHANNELS, Level
from include.observability.alerting import Alert, count_channel_failure, record
from include.observability.security_events import log_security_event


def test_each_level_adds_channels_to_the_one_below():
    assert CHANNELS[Level.INFO] == ("log",)
    for lower, higher in zip(list(Level), list(Level)[1:], strict=False):
        assert set(CHANNELS[lower]) < set(CHANNELS[higher])
    assert "sentry" in CHANNELS[Level.CRITICAL] and "sentry" not in CHANNELS[Level.ERROR]


def test_unknown_level_is_refused_by_name():
    with pytest.raises(ValueError, match="'loud' is not one of"):
        Level.parse("loud")


def test_fingerprint_ignores_volatile_parts_but_not_the_task():
    a = Alert(Level.ERROR, "t", dag_id="d", task_id="x", error="timeout after 31 s on pid 4411")
    b = Alert(Level.ERROR, "t", dag_id="d", task_id="x", error="timeout after 32 s on pid 977")
    c = Alert(Level.ERROR, "t", dag_id="d", task_id="y", error="timeout after 31 s on pid 4411")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_repeats_within_the_window_are_grouped_and_the_next_window_reports_them(app_dsn):
    alert = Alert(Level.ERROR, "boom", dag_id="d", task_id="t", error="ValueError: boom")
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        first = record(cur, alert)
        second = record(cur, alert)
        third = record(cur, alert)
        assert (first.is_first, second.is_first, third.occurrences) == (True, False, 3)
        cur.execute("UPDATE alerts SET first_seen = now() - interval '2 hours'")
        fresh = record(cur, alert, window=timedelta(minutes=30))
        assert fresh.is_first and fresh.grouped_before == 2
        count_channel_failure(cur, fresh.alert_id)
        cur.execute("SELECT occurrences, channel_failures FROM alerts ORDER BY id")
        assert cur.fetchall() == [(3, 0), (1, 1)]


def test_security_events_are_json_lines_and_append_only_rows_without_secrets(app_dsn, caplog):
    caplog.set_level(logging.INFO, logger="execplatform.security")
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        log_security_event(
            cur,
            "connection_failed",
            "error",
            actor="probe",
            conn_id="app_db",
            password="hunter2-secret",
            nested={"api_key": "k-123"},
        )
        cur.execute("SELECT event_type, severity, actor, details FROM security_events")
        event_type, severity, actor, details = cur.fetchone()
    assert (event_type, severity, actor) == ("connection_failed", "error", "probe")
    assert details == {"conn_id": "app_db", "password": "***", "nested": {"api_key": "***"}}
    line = json.loads(caplog.records[-1].getMessage())
    assert line["event"] == "connection_failed" and "hunter2" not in caplog.text
    with pytest.raises(ValueError, match="'conection_failed' is not one of"):
        log_security_event(None, "conection_failed", "error")
