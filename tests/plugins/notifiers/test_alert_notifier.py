"""PlatformAlertNotifier against the real SMTP sink, moto, the app DB and the Sentry recorder."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from devstack.sentry_sink import read_envelopes
from devstack.smtp_sink import read_messages

SECRET = "s3cr3t-password-for-tests"


@dataclass
class FakeTI:
    """What a failure callback's context carries about the task instance."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int = 1
    log_url: str = "http://localhost:8080/dags/d/runs/r/tasks/t?try_number=1"


@pytest.fixture
def sentry(local_stack):
    import sentry_sdk

    from devstack.stack import sentry_dsn

    sentry_sdk.init(dsn=sentry_dsn(local_stack.ports), include_local_variables=False)
    yield local_stack.folder / "sentry"
    sentry_sdk.get_client().close()


def failure_context(dag_id: str, error: str) -> dict:
    return {
        "ti": FakeTI(dag_id, "load", f"manual__{uuid.uuid4().hex}"),
        "exception": RuntimeError(error),
    }


def alerts_rows(local_stack, dag_id: str) -> list[tuple]:
    with psycopg2.connect(local_stack.app_dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT level, occurrences, channel_failures FROM alerts WHERE dag_id = %s ORDER BY id",
            (dag_id,),
        )
        return cur.fetchall()


def mails_about(local_stack, dag_id: str) -> list[str]:
    return [m for m in read_messages(local_stack.folder / "mail") if dag_id in m]


def task_failed_datapoints(dag_id: str) -> float:
    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from include.observability.metrics import NAMESPACE, standard_dimensions

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    values = CloudWatchMetricsHook(aws_conn_id="aws_default").get_metric_values(
        NAMESPACE,
        "TaskFailed",
        standard_dimensions(dag_id=dag_id),
        now - timedelta(minutes=5),
        now + timedelta(minutes=5),
    )
    return sum(values)


def test_error_alert_emails_records_and_counts_then_groups_the_repeat(local_stack):
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    notifier = PlatformAlertNotifier(level="error", group_window=timedelta(minutes=30))
    notifier.notify(failure_context(dag_id, "disk full after 3 tries"))
    notifier.notify(failure_context(dag_id, "disk full after 4 tries"))

    mails = mails_about(local_stack, dag_id)
    assert len(mails) == 1, "the repeat within the window is grouped, not re-sent"
    assert f"{dag_id}.load" in mails[0] and "disk full" in mails[0] and "try_number=1" in mails[0]
    assert alerts_rows(local_stack, dag_id) == [("error", 2, 0)]
    assert task_failed_datapoints(dag_id) == 2.0


def test_critical_alert_reaches_sentry_and_no_channel_carries_the_secret(local_stack, sentry):
    from airflow.sdk.log import mask_secret

    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

    mask_secret(SECRET)  # what fetching a connection does inside a task
    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    PlatformAlertNotifier(level="critical").notify(
        failure_context(dag_id, f"could not connect with postgresql://app:{SECRET}@db/app")
    )
    envelopes = [e for e in read_envelopes(sentry) if dag_id in e]
    assert len(envelopes) == 1
    event = json.loads(envelopes[0].splitlines()[-1])
    assert event["level"] == "fatal" and event["tags"]["alert_level"] == "critical"
    mails = mails_about(local_stack, dag_id)
    assert len(mails) == 1
    assert SECRET not in envelopes[0] and SECRET not in mails[0]
    assert "***" in mails[0]


def test_error_alert_sends_nothing_to_sentry(local_stack, sentry):
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    PlatformAlertNotifier(level="error").notify(failure_context(dag_id, "boom"))
    assert mails_about(local_stack, dag_id) and not [e for e in read_envelopes(sentry) if dag_id in e]


def test_smtp_down_still_records_the_alert_and_counts_the_channel_failure(local_stack, monkeypatch, capfd):
    from devstack.stack import free_port
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

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
    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    notifier = PlatformAlertNotifier(level="error", smtp_conn_id="smtp_down")
    notifier.notify(failure_context(dag_id, "boom"))  # must not raise

    assert alerts_rows(local_stack, dag_id) == [("error", 1, 1)]
    with psycopg2.connect(local_stack.app_dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT details->'channels' FROM security_events WHERE event_type = 'alert_channel_failed' "
            "AND details->>'subject' LIKE %s",
            (f"%{dag_id}%",),
        )
        assert cur.fetchall() == [(["email"],)]
    assert "alert channel email failed" in capfd.readouterr().out  # Airflow logs through structlog
    assert task_failed_datapoints(dag_id) == 1.0


def test_info_alert_is_only_a_log_line(local_stack, capfd):
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    PlatformAlertNotifier(level="info", title="backup took longer than usual").notify(
        {"ti": FakeTI(dag_id, "dump", "r")}
    )
    assert "backup took longer than usual" in capfd.readouterr().out
    assert alerts_rows(local_stack, dag_id) == [] and mails_about(local_stack, dag_id) == []


@pytest.mark.parametrize("state, expected", [("success", 1.0), ("failed", 0.0)])
def test_run_metrics_publish_outcome_and_duration(local_stack, state, expected):
    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from execplatform.notifiers.alert_notifier import RunMetricsNotifier
    from include.observability.metrics import NAMESPACE, standard_dimensions

    @dataclass
    class FakeDagRun:
        dag_id: str
        state: str
        start_date: datetime
        end_date: datetime

    dag_id = f"dag_{uuid.uuid4().hex[:8]}"
    end = datetime.now(UTC)
    RunMetricsNotifier().notify({"dag_run": FakeDagRun(dag_id, state, end - timedelta(seconds=42), end)})
    hook = CloudWatchMetricsHook(aws_conn_id="aws_default")
    start = end.replace(second=0, microsecond=0) - timedelta(minutes=5)
    dims = standard_dimensions(dag_id=dag_id)
    get = lambda name: hook.get_metric_values(NAMESPACE, name, dims, start, end + timedelta(minutes=5))  # noqa: E731
    assert get("DagRunSucceeded") == [expected]
    assert get("DagRunDuration") == [42.0]
