"""The local stack's servers answer every project connection over their real protocols."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta


def test_app_db_answers_sql_at_the_baseline_schema(local_stack):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id="app_db")
    assert hook.get_first("SELECT current_database(), current_user") == ("app", "app")
    assert hook.get_first("SELECT version_num FROM alembic_version") == ("0001",)
    columns = {
        r[0]
        for r in hook.get_records(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'execution_tasks'"
        )
    }
    assert "payload" in columns and "ai_model" not in columns
    assert hook.get_first("SELECT count(*) FROM execution_tasks")[0] > 0, "demo data was seeded"


def test_moto_keeps_s3_objects_and_cloudwatch_datapoints(local_stack):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id="aws_default")
    bucket = f"stack-test-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(bucket_name=bucket)
    s3.load_string("hello", key="greeting.txt", bucket_name=bucket)
    assert s3.read_key("greeting.txt", bucket_name=bucket) == "hello"

    cloudwatch = AwsBaseHook(aws_conn_id="aws_default", client_type="cloudwatch").get_conn()
    now = datetime.now(UTC)
    cloudwatch.put_metric_data(
        Namespace="StackTest",
        MetricData=[{"MetricName": "Answer", "Value": 42.0, "Timestamp": now}],
    )
    data = cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "answer",
                "MetricStat": {
                    "Metric": {"Namespace": "StackTest", "MetricName": "Answer"},
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
    )
    assert data["MetricDataResults"][0]["Values"] == [42.0]


def test_localstripe_creates_and_returns_a_customer(local_stack):
    from execplatform.hooks.stripe_hook import StripeHook

    client = StripeHook().get_conn()
    created = client.v1.customers.create({"email": "stack-test@example.com"})
    assert client.v1.customers.retrieve(created.id).email == "stack-test@example.com"


def test_smtp_sink_keeps_what_it_receives(local_stack):
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from devstack.smtp_sink import read_messages

    subject = f"stack test {uuid.uuid4().hex}"
    with SmtpHook(smtp_conn_id="smtp_default") as smtp:
        smtp.send_email_smtp(to="ops@example.com", subject=subject, html_content="<p>hi</p>")
    received = [m for m in read_messages(local_stack.folder / "mail") if subject in m]
    assert len(received) == 1 and "ops@example.com" in received[0]


def test_redis_round_trip(local_stack):
    from airflow.providers.redis.hooks.redis import RedisHook

    client = RedisHook(redis_conn_id="redis_default").get_conn()
    key = f"stack-test:{uuid.uuid4().hex}"
    client.set(key, "value", ex=60)
    assert client.get(key) == b"value"


def test_a_port_is_handed_out_once_per_process(monkeypatch):
    """The kernel may give back a just-closed port again: two services of one stack once got the
    same one. `free_port` remembers what it handed out and asks again."""
    import socket

    from devstack import stack

    handed: list[int] = []
    real_socket = socket.socket

    class Repeating(real_socket):  # the kernel's answer, twice over: 41001, 41001, then others
        def getsockname(self):
            handed.append(port := (41001 if len(handed) < 2 else real_socket.getsockname(self)[1]))
            return ("127.0.0.1", port)

    monkeypatch.setattr(stack.socket, "socket", Repeating)
    monkeypatch.setattr(stack, "_HANDED_OUT", set())
    first, second = stack.free_port(), stack.free_port()
    assert first == 41001 and second != 41001 and handed[:2] == [41001, 41001]
