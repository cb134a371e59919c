"""A task that fails under the real scheduler alerts through every channel, and leaks no secret.

The stack runs the fixture DAG `alerting_fault_probe` (tests/fixtures/dags): its task logs a
connection's password and fails with the password in its error, alerting at level critical.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from devstack.sentry_sink import read_envelopes
from devstack.smtp_sink import read_messages
from devstack.stack import LocalStack, aws_client
from tests.airflow_api import api, exists, running, token_for, wait_for
from tests.project import FIXTURES

FIXTURE_DAGS = FIXTURES / "dags"
DAG_ID = "alerting_fault_probe"
LOG_GROUP = "airflow-task-logs"
# Task logs to CloudWatch Logs through Airflow's remote logging, configured as README says
REMOTE_LOGGING = {
    "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
    "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"cloudwatch://arn:aws:logs:us-east-1:123456789012:log-group:{LOG_GROUP}",
    "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
}


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    stack = LocalStack(tmp_path_factory.mktemp("fault-stack"), api_port=0, dags_folder=FIXTURE_DAGS)
    with running(stack, REMOTE_LOGGING):
        yield stack


def test_two_failures_alert_once_on_every_channel_and_leak_no_secret(fault_stack, monkeypatch):
    login = fault_stack.info.login
    token = token_for(login)
    base = f"{login['url']}/api/v2/dags/{DAG_ID}"
    wait_for(lambda: exists(base, token), 120, f"{DAG_ID} to be parsed")
    runs = []
    for _ in range(2):
        run_id = api(
            f"{base}/dagRuns",
            token,
            {"logical_date": None, "dag_run_id": f"fault_{uuid.uuid4().hex}"},
        )["dag_run_id"]
        state = wait_for(
            lambda run_id=run_id: (
                (s := api(f"{base}/dagRuns/{run_id}", token)["state"]) in ("success", "failed") and s
            ),
            180,
            f"run {run_id} to finish",
        )
        assert state == "failed"
        runs.append(run_id)

    secret = fault_stack.secret["app_db_password"]
    folder = fault_stack.folder

    # email: one, the repeat is grouped; it names the DAG and task and links the log
    mails = [m for m in read_messages(folder / "mail") if DAG_ID in m]
    assert len(mails) == 1
    assert f"{DAG_ID}.leak_and_fail" in mails[0] and "try_number=1" in mails[0]

    # the alerts row counts both failures
    with psycopg2.connect(fault_stack.app_dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT level, occurrences, message FROM alerts WHERE dag_id = %s", (DAG_ID,))
        [(level, occurrences, message)] = cur.fetchall()
    assert (level, occurrences) == ("critical", 2)

    # Sentry: the critical alert, tagged
    envelopes = [e for e in read_envelopes(folder / "sentry") if DAG_ID in e]
    alert_events = [e for e in envelopes if '"alert_level":"critical"' in e.replace(" ", "")]
    assert len(alert_events) == 1

    # CloudWatch: one TaskFailed datapoint per failure
    aws = json.loads(fault_stack.env["AIRFLOW_CONN_AWS_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(aws))
    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from include.observability.metrics import NAMESPACE, standard_dimensions

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    values = CloudWatchMetricsHook(aws_conn_id="aws_default").get_metric_values(
        NAMESPACE,
        "TaskFailed",
        standard_dimensions(dag_id=DAG_ID),
        now - timedelta(minutes=15),
        now + timedelta(minutes=5),
    )
    assert sum(values) == 2.0

    # the task log shows the logged password masked
    logs = [
        p.read_text() for p in (folder / "airflow" / "logs").rglob("*.log") if f"dag_id={DAG_ID}" in str(p)
    ]
    assert len(logs) == 2 and all("connecting with password ***" in log for log in logs)

    # the same lines reached CloudWatch Logs, masked too
    cloudwatch_logs = aws_client("logs", aws)
    remote = "\n".join(
        e["message"] for e in cloudwatch_logs.filter_log_events(logGroupName=LOG_GROUP)["events"]
    )
    assert remote.count("connecting with password ***") == 2

    # and no channel carries the secret
    for text in [*mails, *envelopes, message, *logs, remote]:
        assert secret not in text
