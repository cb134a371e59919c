"""ConnectionProbeOperator against the real servers: healthy, down, and misconfigured."""

from __future__ import annotations

import json
import uuid

import pytest

CONN_IDS = ["app_db", "aws_default", "stripe_default", "smtp_default", "redis_default"]


def _rows(run_id: str) -> dict[str, tuple]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    records = PostgresHook(postgres_conn_id="app_db").get_records(
        "SELECT conn_id, ok, latency_ms, detail FROM healthcheck_results WHERE run_id = %s",
        (run_id,),
    )
    return {r[0]: r[1:] for r in records}


@pytest.mark.parametrize("conn_id", CONN_IDS)
def test_probe_of_a_healthy_connection_records_ok(local_stack, conn_id):
    from execplatform.operators.connection_probe_operator import ConnectionProbeOperator

    run_id = f"test-{uuid.uuid4().hex}"
    op = ConnectionProbeOperator(task_id=f"probe_{conn_id}", conn_id=conn_id)
    assert op.execute({"run_id": run_id})["conn_id"] == conn_id
    ok, latency_ms, detail = _rows(run_id)[conn_id]
    assert ok is True and latency_ms > 0 and detail


def test_probe_of_a_down_service_fails_naming_it_and_records_why(local_stack, monkeypatch):
    from devstack.stack import free_port
    from execplatform.operators.connection_probe_operator import (
        ConnectionDownError,
        ConnectionProbeOperator,
    )

    closed = free_port()  # nothing listens there
    monkeypatch.setenv(
        "AIRFLOW_CONN_REDIS_GONE",
        json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": closed}),
    )
    run_id = f"test-{uuid.uuid4().hex}"
    op = ConnectionProbeOperator(task_id="probe_redis_gone", conn_id="redis_gone")
    with pytest.raises(ConnectionDownError, match="redis_gone"):
        op.execute({"run_id": run_id})
    ok, _, detail = _rows(run_id)["redis_gone"]
    assert ok is False and "ConnectionError" in detail

    from datetime import UTC, datetime, timedelta

    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from include.observability.alarms import HEALTHCHECK_NAMESPACE

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    failed = CloudWatchMetricsHook(aws_conn_id="aws_default").get_metric_values(
        HEALTHCHECK_NAMESPACE,
        "ProbeFailed",
        {"ConnId": "redis_gone"},
        now - timedelta(minutes=5),
        now + timedelta(minutes=5),
    )
    assert sum(failed) == 1.0, "the connection's alarm gets its datapoint"

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    event = PostgresHook(postgres_conn_id="app_db").get_first(
        "SELECT event_type, severity, details->>'conn_id' FROM security_events WHERE details->>'run_id' = %s",
        (run_id,),
    )
    assert event == ("connection_failed", "error", "redis_gone")


def test_retried_probe_replaces_its_row(local_stack):
    from execplatform.operators.connection_probe_operator import ConnectionProbeOperator

    run_id = f"test-{uuid.uuid4().hex}"
    op = ConnectionProbeOperator(task_id="probe_redis_default", conn_id="redis_default")
    op.execute({"run_id": run_id})
    op.execute({"run_id": run_id})
    assert list(_rows(run_id)) == ["redis_default"]


def test_unknown_connection_type_is_refused_by_name(local_stack, monkeypatch):
    from execplatform.operators.connection_probe_operator import ConnectionProbeOperator

    monkeypatch.setenv("AIRFLOW_CONN_FTP_THING", json.dumps({"conn_type": "ftp", "host": "x"}))
    op = ConnectionProbeOperator(task_id="probe_ftp", conn_id="ftp_thing")
    with pytest.raises(ValueError, match="'ftp_thing' has conn_type 'ftp'"):
        op.execute({"run_id": "r"})
