"""Metric datums, request batching and alarm specs, without AWS or Airflow."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime

import pytest

from include.observability.alarms import (
    ALARM_PREFIX,
    ALARMS,
    AlarmSpec,
    alarm_config,
    build_alarms,
    plan_alarms,
)
from include.observability.metrics import (
    MAX_BYTES_PER_REQUEST,
    Metric,
    chunk_metric_data,
    datum_size,
    standard_dimensions,
)


def _spec(**overrides) -> AlarmSpec:
    fields = {
        "name": f"{ALARM_PREFIX}unit-test",
        "metric_name": "TaskFailed",
        "namespace": "ExecPlatform",
        "statistic": "Sum",
        "period_seconds": 300,
        "evaluation_periods": 1,
        "threshold": 1,
        "comparison": "GreaterThanOrEqualToThreshold",
    }
    return AlarmSpec(**{**fields, **overrides})


# --- metrics -------------------------------------------------------------------------------


def test_to_datum_sorts_dimensions_and_drops_empty_ones():
    metric = Metric("TaskDuration", 1.5, "Seconds", {"TaskId": "t", "DagId": "d", "TaskType": ""})
    assert metric.to_datum() == {
        "MetricName": "TaskDuration",
        "Value": 1.5,
        "Unit": "Seconds",
        "Dimensions": [{"Name": "DagId", "Value": "d"}, {"Name": "TaskId", "Value": "t"}],
    }


def test_to_datum_without_dimensions_or_timestamp_has_neither_key():
    assert Metric("Answer", 42).to_datum() == {
        "MetricName": "Answer",
        "Value": 42.0,
        "Unit": "Count",
    }


def test_naive_timestamp_is_taken_as_utc():
    datum = Metric("Answer", 1, timestamp=datetime(2026, 1, 2, 3, 4, 5)).to_datum()
    assert datum["Timestamp"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "value": 1}, "name"),
        ({"name": "m", "value": math.nan}, "not finite"),
        ({"name": "m", "value": "3"}, "not a number"),
        ({"name": "m", "value": 1, "unit": "Apples"}, "unit 'Apples'"),
        (
            {"name": "m", "value": 1, "dimensions": {f"d{i}": "v" for i in range(31)}},
            "31 dimensions",
        ),
    ],
)
def test_invalid_metric_is_refused_naming_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Metric(**kwargs)


def test_standard_dimensions_take_environment_from_env(monkeypatch):
    monkeypatch.setenv("PLATFORM_ENVIRONMENT", "staging")
    assert standard_dimensions(dag_id="task_batch", task_id="run", task_type="implementation") == {
        "DagId": "task_batch",
        "TaskId": "run",
        "TaskType": "implementation",
        "Environment": "staging",
    }
    assert standard_dimensions(environment="prod") == {"Environment": "prod"}
    monkeypatch.delenv("PLATFORM_ENVIRONMENT")
    assert standard_dimensions() == {"Environment": "local"}


# --- batching ------------------------------------------------------------------------------


def test_2500_small_datums_make_3_chunks_of_at_most_1000_in_order():
    datums = [Metric("m", i).to_datum() for i in range(2500)]
    chunks = list(chunk_metric_data(datums))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert [d["Value"] for c in chunks for d in c] == [float(i) for i in range(2500)]


def test_chunks_are_cut_by_size_before_count():
    dims = {f"Dim{i:02d}": "v" * 1000 for i in range(30)}  # about 31 kB per datum
    datums = [Metric("big", i, dimensions=dims).to_datum() for i in range(100)]
    size = datum_size(datums[0])
    assert 30_000 < size < 40_000
    chunks = list(chunk_metric_data(datums))
    per_chunk = MAX_BYTES_PER_REQUEST // size
    assert [len(c) for c in chunks[:-1]] == [per_chunk] * (len(chunks) - 1)
    assert all(sum(map(datum_size, c)) <= MAX_BYTES_PER_REQUEST for c in chunks)
    assert sum(map(len, chunks)) == 100


def test_size_estimate_is_an_upper_bound_of_the_query_encoding():
    from urllib.parse import urlencode

    datum = Metric("m", 1.25, dimensions={"DagId": "a b&c", "TaskId": "é"}).to_datum()
    flat = {"MetricData.member.1000.MetricName": "m", "MetricData.member.1000.Value": "1.25"}
    flat["MetricData.member.1000.Unit"] = "Count"
    for i, dim in enumerate(datum["Dimensions"], 1):
        flat[f"MetricData.member.1000.Dimensions.member.{i}.Name"] = dim["Name"]
        flat[f"MetricData.member.1000.Dimensions.member.{i}.Value"] = dim["Value"]
    assert datum_size(datum) >= len(urlencode(flat)) + 1


def test_a_datum_over_the_byte_budget_is_refused_by_name():
    datum = Metric("Huge", 1, dimensions={"Note": "x" * 1000}).to_datum()
    with pytest.raises(ValueError, match=r"metric 'Huge'.*over the 500-byte budget"):
        list(chunk_metric_data([Metric("ok", 1).to_datum(), datum], max_bytes=500))


def test_no_datums_make_no_chunks():
    assert list(chunk_metric_data([])) == []


# --- alarm specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "other-alarm"}, "name"),
        ({"comparison": "EqualToThreshold"}, "comparison"),
        ({"period_seconds": 90}, "period_seconds"),
        ({"period_seconds": 20}, "period_seconds"),
        ({"period_seconds": 0}, "period_seconds"),
        ({"evaluation_periods": 0}, "evaluation_periods"),
        ({"period_seconds": 86400, "evaluation_periods": 8}, "evaluation_periods"),
        ({"statistic": "p99"}, "statistic"),
        ({"treat_missing_data": "maybe"}, "treat_missing_data"),
        ({"threshold": math.inf}, "threshold"),
        ({"actions": ("not-an-arn",)}, "actions"),
    ],
)
def test_invalid_spec_is_refused_naming_alarm_and_field(overrides, field):
    name = overrides.get("name", f"{ALARM_PREFIX}unit-test")
    with pytest.raises(ValueError, match=rf"alarm '{name}': {field}="):
        _spec(**overrides)


@pytest.mark.parametrize("period", [10, 30, 60, 300, 86400])
def test_allowed_periods(period):
    assert _spec(period_seconds=period).period_seconds == period


def test_to_put_kwargs():
    spec = _spec(
        dimensions={"Environment": "prod", "DagId": "task_batch"},
        actions=["arn:aws:sns:us-east-1:123456789012:alarms"],
        description="failures",
    )
    assert spec.dimensions == (("DagId", "task_batch"), ("Environment", "prod"))
    assert spec.to_put_kwargs() == {
        "AlarmName": "execplatform-unit-test",
        "AlarmDescription": "failures",
        "ActionsEnabled": True,
        "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:alarms"],
        "OKActions": [],
        "InsufficientDataActions": [],
        "MetricName": "TaskFailed",
        "Namespace": "ExecPlatform",
        "Statistic": "Sum",
        "Dimensions": [
            {"Name": "DagId", "Value": "task_batch"},
            {"Name": "Environment", "Value": "prod"},
        ],
        "Period": 300,
        "EvaluationPeriods": 1,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }


def test_project_alarms_are_valid_unique_and_prefixed():
    names = [a.name for a in ALARMS]
    assert len(names) == len(set(names))
    assert all(name.startswith(ALARM_PREFIX) for name in names)
    by_metric = {a.metric_name: a for a in ALARMS}
    assert set(by_metric) == {
        "TaskFailed",
        "ProbeFailed",
        "BackupVerified",
        "QueueBacklog",
        "AlertChannelFailed",
    }
    backup = by_metric["BackupVerified"]
    assert (backup.statistic, backup.comparison, backup.threshold) == (
        "Minimum",
        "LessThanThreshold",
        1,
    )
    assert (backup.period_seconds, backup.evaluation_periods) == (86400, 1)
    assert backup.treat_missing_data == "breaching"
    backlog = by_metric["QueueBacklog"]
    assert (backlog.statistic, backlog.threshold, backlog.evaluation_periods) == (
        "Maximum",
        5000,
        3,
    )
    assert by_metric["ProbeFailed"].namespace == "ExecPlatform/Healthcheck"


def test_alarm_actions_come_from_the_topic_env_var(monkeypatch):
    topic = "arn:aws:sns:us-east-1:123456789012:platform-alarms"
    monkeypatch.setenv("ALARM_SNS_TOPIC_ARN", topic)
    monkeypatch.setenv("PLATFORM_ENVIRONMENT", "prod")
    alarms = build_alarms()
    assert all(a.actions == (topic,) for a in alarms)
    assert all(("Environment", "prod") in a.dimensions for a in alarms if a.namespace == "ExecPlatform")
    monkeypatch.delenv("ALARM_SNS_TOPIC_ARN")
    assert all(a.actions == () for a in build_alarms())


# --- planning ------------------------------------------------------------------------------


def _described(spec: AlarmSpec) -> dict:
    """A describe_alarms entry as AWS gives it: defaults left out, extra state fields."""
    entry = {k: v for k, v in spec.to_put_kwargs().items() if v not in ("", [])}
    entry["Dimensions"] = list(reversed(entry.get("Dimensions", [])))
    entry.update(StateValue="ALARM", AlarmArn=f"arn:aws:cloudwatch:::alarm:{spec.name}")
    return entry


def test_an_applied_spec_compares_equal_to_its_description():
    spec = _spec(dimensions={"A": "1", "B": "2"})
    assert alarm_config(_described(spec)) == alarm_config(spec.to_put_kwargs())


def test_plan_creates_updates_deletes_and_ignores_outside_prefix():
    keep, change, new = (_spec(name=f"{ALARM_PREFIX}{n}") for n in ("keep", "change", "new"))
    existing = [
        _described(keep),
        _described(dataclasses.replace(change, threshold=2)),
        _described(_spec(name=f"{ALARM_PREFIX}stale")),
        {**_described(keep), "AlarmName": "someone-elses"},
    ]
    diff = plan_alarms([keep, change, new], existing, ALARM_PREFIX)
    assert diff.to_dict() == {
        "created": [f"{ALARM_PREFIX}new"],
        "updated": [f"{ALARM_PREFIX}change"],
        "deleted": [f"{ALARM_PREFIX}stale"],
        "unchanged": [f"{ALARM_PREFIX}keep"],
    }
    assert diff.changed


def test_plan_sees_actions_added_outside_code_as_drift():
    spec = _spec()
    drifted = {**_described(spec), "OKActions": ["arn:aws:sns:us-east-1:1:x"]}
    assert plan_alarms([spec], [drifted], ALARM_PREFIX).updated == (spec.name,)


@pytest.mark.parametrize(
    ("specs", "prefix", "message"),
    [
        ([_spec()], "", "prefix is empty"),
        ([_spec()], f"{ALARM_PREFIX}other-", "do not start with"),
        ([_spec(), _spec()], ALARM_PREFIX, "more than once"),
    ],
)
def test_plan_refuses_what_it_cannot_manage_safely(specs, prefix, message):
    with pytest.raises(ValueError, match=message):
        plan_alarms(specs, [], prefix)


def _publishers(metric_name: str) -> list[str]:
    """The modules of plugins/ and include/ that make a `Metric` of this name (alarms.py, which
    only watches metrics, is not one)."""
    import re

    from tests.project import ROOT

    made = re.compile(r'Metric\(\s*(?:f?"' + re.escape(metric_name) + r'")')
    found = []
    for path in sorted([*(ROOT / "plugins").rglob("*.py"), *(ROOT / "include").rglob("*.py")]):
        if path.name != "alarms.py" and made.search(path.read_text()):
            found.append(str(path.relative_to(ROOT)))
    return found


def test_every_alarm_watches_a_metric_that_the_code_publishes():
    """An alarm on a metric nothing publishes never fires (QueueBacklog did, until task_batch's
    measure_backlog published it)."""
    missing = {a.metric_name for a in ALARMS if not _publishers(a.metric_name)}
    assert not missing, f"alarms watch metrics no code publishes: {sorted(missing)}"
    assert _publishers("QueueBacklog") == ["plugins/execplatform/steps/queue_steps.py"]
    assert _publishers("NoSuchMetricAnywhere") == []  # the search can come up empty
