"""The alarm audit against the real channels: the app DB's alerts table, CloudWatch on moto, the
SMTP sink and the Sentry sink; it fails naming the channel that did not deliver."""

from __future__ import annotations

import json

import psycopg2
import pytest

from include.observability.alert_levels import CHANNELS, Level


@pytest.fixture
def sinks(local_stack, monkeypatch):
    import sentry_sdk

    from devstack.stack import sentry_dsn

    sentry_sdk.init(dsn=sentry_dsn(local_stack.ports), include_local_variables=False)
    monkeypatch.setenv("SMTP_SINK_DIR", str(local_stack.folder / "mail"))
    monkeypatch.setenv("SENTRY_SINK_DIR", str(local_stack.folder / "sentry"))
    yield local_stack
    sentry_sdk.get_client().close()


def test_a_synthetic_failure_reaches_every_channel_of_a_critical_alert(sinks):
    from execplatform.steps.alarm_delivery_steps import audit_alarms

    result = audit_alarms(deadline_seconds=60)
    assert set(result["seconds"]) == set(CHANNELS[Level.CRITICAL]) - {"log"}
    with psycopg2.connect(sinks.app_dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM alerts WHERE message LIKE %s", (f"%{result['token']}%",))
        assert cur.fetchone()[0] == 1


def test_a_channel_that_does_not_deliver_is_named(sinks, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from devstack.stack import free_port
    from execplatform.steps.alarm_delivery_steps import audit_alarms

    monkeypatch.setenv(
        "AIRFLOW_CONN_SMTP_DOWN",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": free_port(),
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "a@localhost",
                    "retry_limit": 0,
                },
            }
        ),
    )
    with pytest.raises(AirflowFailException, match=r"channel\(s\) email did not deliver") as failed:
        audit_alarms(deadline_seconds=3, smtp_conn_id="smtp_down")
    assert "sentry" not in str(failed.value).split("(")[1]


def test_a_channel_without_a_read_back_is_not_applicable_not_failed(sinks, monkeypatch):
    from execplatform.steps.alarm_delivery_steps import audit_alarms

    monkeypatch.delenv("SENTRY_SINK_DIR")
    result = audit_alarms(deadline_seconds=30)
    assert "sentry" not in result["seconds"]
    assert result["not_applicable"] == {
        "sentry": "$SENTRY_SINK_DIR is not set: no read-back of this channel is configured"
    }
    assert {"table", "metric", "email"} <= set(result["seconds"])


def test_the_synthetic_alert_says_so_and_goes_to_the_test_mailbox_not_the_on_call(sinks, monkeypatch):
    from execplatform.steps.alarm_delivery_steps import audit_alarms
    from include.audit.alarm_check import read_messages

    monkeypatch.setenv("ALERT_EMAIL_TO", "oncall@example.com")
    monkeypatch.setenv("ALARM_AUDIT_EMAIL_TO", "alarm-test-mailbox@example.com")
    token = audit_alarms(deadline_seconds=60)["token"]
    [mail] = [m for m in read_messages(sinks.folder / "mail") if token in m]
    assert "X-Envelope-To: alarm-test-mailbox@example.com" in mail
    assert "oncall@example.com" not in mail
    assert f"SYNTHETIC alarm audit probe {token}" in mail
