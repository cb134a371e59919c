"""adversarial_audit's alarm audit: inject a synthetic critical failure through PlatformAlertNotifier
and check that the alerts table, CloudWatch, email and Sentry each received it in time.

The synthetic alert says so in its title and goes by email to `$ALARM_AUDIT_EMAIL_TO` (a test
mailbox), never to the on-call's `$ALERT_EMAIL_TO`. A channel is read back only where the
deployment says how: email from `$SMTP_SINK_DIR` (a folder of the test mailbox's messages),
Sentry from `$SENTRY_SINK_DIR` (the envelopes its DSN's endpoint received). Without one, the
channel is *not applicable*, with the reason, rather than failed every day."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import APP_DB, AWS, SMTP

logger = logging.getLogger(__name__)

DAG_ID = "adversarial_audit"


def _readers(token: str, task_id: str, started: datetime, conn_id: str, aws_conn_id: str) -> dict[str, Any]:
    """One reader per channel. Email and Sentry are read back where the deployment configures
    it ($SMTP_SINK_DIR, $SENTRY_SINK_DIR); elsewhere they are not applicable."""
    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from include.audit.alarm_check import NotApplicable, read_envelopes, read_messages
    from include.observability.metrics import NAMESPACE, standard_dimensions

    def table() -> bool:
        with AppDatabaseHook(conn_id).cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM alerts WHERE level = 'critical' AND message LIKE %s",
                (f"%{token}%",),
            )
            return cur.fetchone()[0] > 0

    def metric() -> bool:
        dims = {**standard_dimensions(dag_id=DAG_ID, task_id=task_id), "Level": "CRITICAL"}
        values = CloudWatchMetricsHook(aws_conn_id=aws_conn_id).get_metric_values(
            NAMESPACE,
            "AlertRaised",
            dims,
            started - timedelta(minutes=1),
            datetime.now(UTC) + timedelta(minutes=1),
        )
        return sum(values) >= 1

    def sink(variable: str, read_all) -> Any:
        folder = os.environ.get(variable)
        if not folder:
            return NotApplicable(f"${variable} is not set: no read-back of this channel is configured")
        return lambda: any(token in text for text in read_all(Path(folder)))

    return {
        "table": table,
        "metric": metric,
        "email": sink("SMTP_SINK_DIR", read_messages),
        "sentry": sink("SENTRY_SINK_DIR", read_envelopes),
    }


def audit_alarms(
    conn_id: str = APP_DB,
    audit_run_id: int | None = None,
    *,
    deadline_seconds: float = 60,
    aws_conn_id: str = AWS,
    smtp_conn_id: str = SMTP,
) -> dict[str, Any]:
    """Fails hard, naming each channel that did not deliver the synthetic failure in time."""
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier
    from include.audit.alarm_check import synthetic_token, wait_for_delivery

    token = synthetic_token()
    task_id = f"alarm_probe_{token}"
    test_recipient = os.environ.get("ALARM_AUDIT_EMAIL_TO", "alarm-audit@localhost")
    started = datetime.now(UTC)
    ti = SimpleNamespace(
        dag_id=DAG_ID, task_id=task_id, run_id=f"alarm_audit_{token}", try_number=1, log_url=None
    )
    error = RuntimeError(f"synthetic failure injected by the alarm audit ({token}); no action needed")
    PlatformAlertNotifier(
        "critical",
        f"SYNTHETIC alarm audit probe {token}: no action needed",
        to=[a.strip() for a in test_recipient.split(",")],
        app_conn_id=conn_id,
        aws_conn_id=aws_conn_id,
        smtp_conn_id=smtp_conn_id,
    ).notify({"ti": ti, "exception": error})
    deliveries = wait_for_delivery(_readers(token, task_id, started, conn_id, aws_conn_id), deadline_seconds)
    logger.info("alarm audit %s:\n%s", token, "\n".join(map(str, deliveries)))
    missing = [d for d in deliveries if d.missing]
    if audit_run_id is not None:
        from include.audit.gates import Evidence, record

        with AppDatabaseHook(conn_id).cursor() as cur:
            record(
                cur,
                audit_run_id,
                Evidence(
                    "alarm_delivery",
                    not missing,
                    {
                        d.channel: d.seconds
                        if not d.not_applicable
                        else f"not applicable: {d.not_applicable}"
                        for d in deliveries
                    },
                    f"every channel within {deadline_seconds} s",
                    f"synthetic critical failure {token}",
                ),
            )
    if missing:
        raise AirflowFailException(
            f"alarm audit {token}: channel(s) {', '.join(d.channel for d in missing)} did not deliver the "
            f"synthetic "
            f"failure within {deadline_seconds} s ({'; '.join(f'{d.channel}: {d.problem}' for d in missing)})"
        )
    return {
        "token": token,
        "seconds": {d.channel: round(d.seconds, 2) for d in deliveries if d.seconds is not None},
        "not_applicable": {d.channel: d.not_applicable for d in deliveries if d.not_applicable},
    }
