"""
### Platform healthcheck

**Owner:** platform team. **Schedule:** every 15 minutes, and on demand.

Reaches every connection the project uses over its real protocol: a query on `app_db`, an S3
bucket listing and a CloudWatch datapoint on `aws_default`, a customer listing on
`stripe_default`, an SMTP NOOP on `smtp_default`, a PING on `redis_default`. Each result and its
latency goes to `healthcheck_results` in the app DB; a failed probe also sends a `ProbeFailed`
datapoint to CloudWatch. `apply_alarms` keeps the CloudWatch alarms equal to `include/observability/alarms.py`
(an alarm changed by hand is put back within 15 minutes).

**Idempotent:** yes; results are keyed by run and connection, a re-run replaces them.

**Alerts:** a retry is a *warning* (CloudWatch and the alerts feed: a flapping service shows
up without paging anyone); a failure after retries is an *error* (email to the owners).

**When it fails:** the red task names the connection that is down and its error. Fix the
service or the connection (Admin → Connections, or the `AIRFLOW_CONN_*` variable), then clear
the failed task.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag

from execplatform.dag_defaults import APP_DB, AWS, REDIS, SMTP, STRIPE, default_args, schedule_for
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.cloudwatch_operators import ApplyAlarmsOperator
from execplatform.operators.connection_probe_operator import ConnectionProbeOperator

PROBED_CONNECTIONS = (APP_DB, AWS, STRIPE, SMTP, REDIS)


@dag(
    schedule=schedule_for("platform_healthcheck", timedelta(minutes=15)),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "healthcheck"],
    **run_metrics_callbacks(),
    default_args=default_args(retry_delay=timedelta(seconds=20)),
)
def platform_healthcheck():
    for conn_id in PROBED_CONNECTIONS:
        ConnectionProbeOperator(task_id=f"probe_{conn_id}", conn_id=conn_id)
    # the alarms that watch these probes (and every DAG) stay equal to include/observability/alarms.py
    ApplyAlarmsOperator(task_id="apply_alarms")


platform_healthcheck()
