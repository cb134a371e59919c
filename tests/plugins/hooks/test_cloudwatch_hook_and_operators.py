"""CloudWatchMetricsHook and its operators against the stack's moto server.

moto's get_metric_data ignores the namespace when dimensions are given and, without them,
sums every dimension set of the metric; each test therefore publishes under dimension values
of its own. moto stores alarms but never evaluates them.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest


@pytest.fixture
def hook(local_stack):
    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook

    return CloudWatchMetricsHook()  # aws_default, pointed at moto by the session fixture


@pytest.fixture
def sent_bodies(hook):
    """The size of every PutMetricData body the hook's client sends, before botocore gzips it."""
    sizes: list[int] = []

    def record(params, **_):
        sizes.append(len(params["body"]))

    hook.get_conn().meta.events.register("before-call.cloudwatch.PutMetricData", record)
    return sizes


@pytest.fixture
def prefix(hook):
    """An alarm prefix of this test's own, under the project's; its alarms go afterwards."""
    from include.observability.alarms import ALARM_PREFIX

    own = f"{ALARM_PREFIX}test-{uuid.uuid4().hex[:8]}-"
    yield own
    names = [a["AlarmName"] for a in hook.describe_metric_alarms(own)]
    if names:
        hook.get_conn().delete_alarms(AlarmNames=names)


def _code_alarms(prefix: str):
    from include.observability.alarms import ALARM_PREFIX, ALARMS

    return tuple(dataclasses.replace(a, name=prefix + a.name.removeprefix(ALARM_PREFIX)) for a in ALARMS)


def _minute(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).replace(second=0, microsecond=0)


# --- metrics -------------------------------------------------------------------------------


def test_2500_datapoints_go_in_3_requests_and_read_back(hook, sent_bodies):
    from include.observability.metrics import NAMESPACE, Metric

    dims = {"DagId": f"dag-{uuid.uuid4().hex}", "Environment": "test"}
    t0 = _minute()
    # five one-minute buckets ending at t0, value i lands in bucket i % 5
    metrics = [
        Metric("Processed", i, dimensions=dims, timestamp=t0 - timedelta(minutes=i % 5)) for i in range(2500)
    ]
    assert hook.put_metrics(NAMESPACE, metrics) == 3
    assert len(sent_bodies) == 3

    start, end = t0 - timedelta(minutes=10), t0 + timedelta(minutes=1)
    per_minute = hook.get_metric_values(NAMESPACE, "Processed", dims, start, end, stat="Sum")
    expected = [float(sum(range(bucket, 2500, 5))) for bucket in (4, 3, 2, 1, 0)]  # oldest first
    assert per_minute == expected
    assert sum(per_minute) == sum(range(2500))
    counts = hook.get_metric_values(NAMESPACE, "Processed", dims, start, end, stat="SampleCount")
    assert counts == [500.0] * 5


def test_datapoints_without_timestamp_are_stamped_on_receipt(hook):
    from include.observability.metrics import NAMESPACE, Metric

    dims = {"DagId": f"dag-{uuid.uuid4().hex}"}
    before = datetime.now(UTC)
    assert hook.put_metrics(NAMESPACE, [Metric("Stamped", 2, dimensions=dims)] * 3) == 1
    values = hook.get_metric_values(
        NAMESPACE, "Stamped", dims, _minute(before), _minute(before) + timedelta(minutes=2)
    )
    assert sum(values) == 6.0


def test_large_datums_are_split_by_size_and_every_request_is_under_1_mb(hook, sent_bodies):
    from include.observability.metrics import NAMESPACE, Metric

    run = uuid.uuid4().hex
    dims = {"Run": run, **{f"Dim{i:02d}": f"{i:02d}" * 500 for i in range(29)}}  # ~30 kB each
    metrics = [Metric("Wide", 1, dimensions=dims) for _ in range(300)]
    requests = hook.put_metrics(NAMESPACE, metrics)
    assert requests >= 9  # by count alone it would have been 1
    assert len(sent_bodies) == requests
    assert max(sent_bodies) <= 1024 * 1024
    now = datetime.now(UTC)
    counts = hook.get_metric_values(
        NAMESPACE,
        "Wide",
        dims,
        _minute(now) - timedelta(minutes=5),
        now + timedelta(minutes=1),
        stat="SampleCount",
    )
    assert sum(counts) == 300


# --- alarms --------------------------------------------------------------------------------


def test_apply_twice_creates_then_changes_nothing_and_aws_equals_code(hook, prefix):
    from include.observability.alarms import alarm_config

    code = _code_alarms(prefix)
    first = hook.apply_alarms(code, prefix)
    assert sorted(first.created) == sorted(a.name for a in code)
    assert (first.updated, first.deleted, first.unchanged) == ((), (), ())

    second = hook.apply_alarms(code, prefix)
    assert (second.created, second.updated, second.deleted) == ((), (), ())
    assert sorted(second.unchanged) == sorted(a.name for a in code)

    in_aws = hook.describe_metric_alarms(prefix)
    assert sorted(a["AlarmName"] for a in in_aws) == sorted(a.name for a in code)  # no duplicates
    by_name = {a["AlarmName"]: a for a in in_aws}
    for spec in code:
        assert alarm_config(by_name[spec.name]) == alarm_config(spec.to_put_kwargs())


def test_changed_threshold_in_code_updates_the_alarm(hook, prefix):
    code = _code_alarms(prefix)
    hook.apply_alarms(code, prefix)
    backlog = next(a for a in code if a.metric_name == "QueueBacklog")
    changed = tuple(dataclasses.replace(a, threshold=7500) if a is backlog else a for a in code)

    diff = hook.apply_alarms(changed, prefix)
    assert diff.updated == (backlog.name,)
    assert (diff.created, diff.deleted) == ((), ())
    [alarm] = [a for a in hook.describe_metric_alarms(prefix) if a["AlarmName"] == backlog.name]
    assert alarm["Threshold"] == 7500.0
    assert not hook.apply_alarms(changed, prefix).changed


def test_alarm_under_prefix_not_in_code_is_deleted_and_others_are_left_alone(hook, prefix):
    client = hook.get_conn()
    code = _code_alarms(prefix)
    stray = code[0].to_put_kwargs() | {"AlarmName": f"{prefix}removed-from-code"}
    foreign = code[0].to_put_kwargs() | {"AlarmName": f"other-team-{uuid.uuid4().hex[:8]}"}
    client.put_metric_alarm(**stray)
    client.put_metric_alarm(**foreign)
    try:
        diff = hook.apply_alarms(code, prefix)
        assert diff.deleted == (stray["AlarmName"],)
        assert stray["AlarmName"] not in {a["AlarmName"] for a in hook.describe_metric_alarms(prefix)}
        left = client.describe_alarms(AlarmNames=[foreign["AlarmName"]])["MetricAlarms"]
        assert [a["AlarmName"] for a in left] == [foreign["AlarmName"]]
    finally:
        client.delete_alarms(AlarmNames=[foreign["AlarmName"]])


def test_reapply_leaves_a_firing_alarm_firing(hook, prefix):
    code = _code_alarms(prefix)
    hook.apply_alarms(code, prefix)
    client = hook.get_conn()
    client.set_alarm_state(AlarmName=code[0].name, StateValue="ALARM", StateReason="test fires it")
    hook.apply_alarms(code, prefix)
    [alarm] = client.describe_alarms(AlarmNames=[code[0].name])["MetricAlarms"]
    assert alarm["StateValue"] == "ALARM"


# --- operators -----------------------------------------------------------------------------


def _context(dag_id: str, task_id: str) -> dict:
    return {"ti": SimpleNamespace(dag_id=dag_id, task_id=task_id)}


def test_publish_operator_adds_the_task_dimensions(hook, monkeypatch):
    from execplatform.operators.cloudwatch_operators import PublishMetricsOperator
    from include.observability.metrics import NAMESPACE

    env = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PLATFORM_ENVIRONMENT", env)
    op = PublishMetricsOperator(
        task_id="publish",
        metrics=[
            {
                "name": "TaskDuration",
                "value": 12.5,
                "unit": "Seconds",
                "dimensions": {"TaskType": "implementation"},
            },
            {
                "name": "TaskDuration",
                "value": "7.5",
                "unit": "Seconds",
                "dimensions": {"TaskType": "implementation"},
            },
            # alarms match exact dimension sets: this one drops TaskId to match the alarm's
            {"name": "TaskFailed", "value": 1, "dimensions": {"TaskId": ""}},
        ],
    )
    start = _minute() - timedelta(minutes=1)
    assert op.execute(_context("task_batch", "run_batch")) == {
        "namespace": NAMESPACE,
        "published": 3,
        "requests": 1,
    }
    end = datetime.now(UTC) + timedelta(minutes=1)
    task_dims = {
        "DagId": "task_batch",
        "TaskId": "run_batch",
        "Environment": env,
        "TaskType": "implementation",
    }
    assert sum(hook.get_metric_values(NAMESPACE, "TaskDuration", task_dims, start, end, stat="Sum")) == 20.0
    alarm_dims = {"DagId": "task_batch", "Environment": env}
    assert hook.get_metric_values(NAMESPACE, "TaskFailed", alarm_dims, start, end) == [1.0]


def test_publish_operator_publishes_the_valid_and_fails_naming_the_rejected(hook, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.operators.cloudwatch_operators import PublishMetricsOperator
    from include.observability.metrics import NAMESPACE

    env = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PLATFORM_ENVIRONMENT", env)
    op = PublishMetricsOperator(
        task_id="publish",
        metrics=[
            {"name": "Good", "value": 1},
            {"name": "Bad", "value": "many"},
            {"name": "Odd", "value": 1, "unit": "Apples"},
        ],
    )
    start = _minute() - timedelta(minutes=1)
    with pytest.raises(AirflowFailException, match=r"2 of 3 metrics rejected") as failure:
        op.execute(_context("d", "t"))
    assert "metrics[1]" in str(failure.value) and "'Apples'" in str(failure.value)
    dims = {"DagId": "d", "TaskId": "t", "Environment": env}
    end = datetime.now(UTC) + timedelta(minutes=1)
    assert hook.get_metric_values(NAMESPACE, "Good", dims, start, end) == [1.0]


def test_apply_alarms_operator_makes_aws_equal_code_and_is_idempotent(hook):
    import json

    from execplatform.operators.cloudwatch_operators import ApplyAlarmsOperator
    from include.observability.alarms import ALARM_PREFIX, ALARMS

    op = ApplyAlarmsOperator(task_id="apply_alarms")
    op.execute(_context("platform_alarms", "apply_alarms"))
    again = op.execute(_context("platform_alarms", "apply_alarms"))
    assert json.loads(json.dumps(again)) == again
    assert (again["created"], again["updated"], again["deleted"]) == ([], [], [])
    assert sorted(again["unchanged"]) == sorted(a.name for a in ALARMS)
    in_aws = [a["AlarmName"] for a in hook.describe_metric_alarms(ALARM_PREFIX)]
    assert sorted(in_aws) == sorted(a.name for a in ALARMS)


def test_apply_alarms_operator_puts_the_dashboard_as_code(hook):
    """The dashboard in (moto's) CloudWatch is the one in code, and CloudWatch accepted it."""
    import json

    from execplatform.operators.cloudwatch_operators import ApplyAlarmsOperator
    from include.observability.dashboard import DASHBOARD_NAME, GRAPHS, build_dashboard

    ApplyAlarmsOperator(task_id="apply_alarms").execute(_context("platform_alarms", "apply_alarms"))
    stored = hook.get_conn().get_dashboard(DashboardName=DASHBOARD_NAME)
    body = json.loads(stored["DashboardBody"])
    assert body == build_dashboard(hook.get_conn().meta.region_name)
    assert [w["properties"]["title"] for w in body["widgets"]] == [g[0] for g in GRAPHS]
