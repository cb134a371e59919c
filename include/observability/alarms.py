"""The platform's CloudWatch alarms as code, and the plan that makes AWS match them."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from include import ids
from include.observability.metrics import NAMESPACE

ALARM_PREFIX = "execplatform-"
HEALTHCHECK_NAMESPACE = f"{NAMESPACE}/Healthcheck"

COMPARISONS = frozenset(
    {
        "GreaterThanOrEqualToThreshold",
        "GreaterThanThreshold",
        "LessThanThreshold",
        "LessThanOrEqualToThreshold",
    }
)
STATISTICS = frozenset({"SampleCount", "Average", "Sum", "Minimum", "Maximum"})
TREAT_MISSING_DATA = frozenset({"breaching", "notBreaching", "ignore", "missing"})
# CloudWatch evaluates at most seven days of periods per alarm
MAX_EVALUATION_SECONDS = 7 * 86400


@dataclass(frozen=True)
class AlarmSpec:
    """One metric alarm. `dimensions` may be given as a mapping; it is kept as sorted pairs."""

    name: str
    metric_name: str
    namespace: str
    statistic: str
    period_seconds: int
    evaluation_periods: int
    threshold: float
    comparison: str
    dimensions: tuple[tuple[str, str], ...] | Mapping[str, str] = ()
    treat_missing_data: str = "notBreaching"
    actions: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        dims = self.dimensions.items() if isinstance(self.dimensions, Mapping) else self.dimensions
        object.__setattr__(self, "dimensions", tuple(sorted((str(k), str(v)) for k, v in dims)))
        object.__setattr__(self, "actions", tuple(self.actions))
        self._validate()

    def _invalid(self, field_name: str, why: str) -> ValueError:
        value = getattr(self, field_name)
        return ValueError(f"alarm {self.name!r}: {field_name}={value!r} {why}")

    def _validate(self) -> None:
        if not self.name.startswith(ALARM_PREFIX) or len(self.name) > 255:
            raise self._invalid("name", f"must start with {ALARM_PREFIX!r} and have at most 255 characters")
        if not self.metric_name:
            raise self._invalid("metric_name", "must not be empty")
        if not self.namespace:
            raise self._invalid("namespace", "must not be empty")
        if self.statistic not in STATISTICS:
            raise self._invalid("statistic", f"must be one of {sorted(STATISTICS)}")
        if self.comparison not in COMPARISONS:
            raise self._invalid("comparison", f"must be one of {sorted(COMPARISONS)}")
        period = self.period_seconds
        if not isinstance(period, int) or not (period in (10, 30) or (period >= 60 and period % 60 == 0)):
            raise self._invalid("period_seconds", "must be 10, 30 or a positive multiple of 60")
        if not isinstance(self.evaluation_periods, int) or self.evaluation_periods < 1:
            raise self._invalid("evaluation_periods", "must be a positive integer")
        if period * self.evaluation_periods > MAX_EVALUATION_SECONDS:
            raise self._invalid(
                "evaluation_periods", f"times period_seconds exceeds {MAX_EVALUATION_SECONDS} s"
            )
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise self._invalid("threshold", "is not a number")
        if not math.isfinite(self.threshold):
            raise self._invalid("threshold", "is not finite")
        if self.treat_missing_data not in TREAT_MISSING_DATA:
            raise self._invalid("treat_missing_data", f"must be one of {sorted(TREAT_MISSING_DATA)}")
        if any(not arn.startswith("arn:") for arn in self.actions):
            raise self._invalid("actions", "must all be ARNs")

    def to_put_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``put_metric_alarm``; it replaces the whole configuration."""
        return {
            "AlarmName": self.name,
            "AlarmDescription": self.description,
            "ActionsEnabled": True,
            "AlarmActions": list(self.actions),
            "OKActions": [],
            "InsufficientDataActions": [],
            "MetricName": self.metric_name,
            "Namespace": self.namespace,
            "Statistic": self.statistic,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
            "Period": self.period_seconds,
            "EvaluationPeriods": self.evaluation_periods,
            "Threshold": float(self.threshold),
            "ComparisonOperator": self.comparison,
            "TreatMissingData": self.treat_missing_data,
        }


def alarm_config(alarm: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable configuration of an alarm, from put kwargs or a ``describe_alarms`` entry.

    AWS leaves out fields that hold their default; they are filled in here, so that an alarm
    applied from a spec compares equal to that spec.
    """
    evaluation_periods = alarm.get("EvaluationPeriods")
    return {
        "AlarmDescription": alarm.get("AlarmDescription") or "",
        "ActionsEnabled": alarm.get("ActionsEnabled", True),
        "AlarmActions": tuple(sorted(alarm.get("AlarmActions") or ())),
        "OKActions": tuple(sorted(alarm.get("OKActions") or ())),
        "InsufficientDataActions": tuple(sorted(alarm.get("InsufficientDataActions") or ())),
        "MetricName": alarm.get("MetricName"),
        "Namespace": alarm.get("Namespace"),
        "Statistic": alarm.get("Statistic"),
        "ExtendedStatistic": alarm.get("ExtendedStatistic"),
        "Dimensions": tuple(sorted((d["Name"], d["Value"]) for d in alarm.get("Dimensions") or ())),
        "Period": alarm.get("Period"),
        "EvaluationPeriods": evaluation_periods,
        "DatapointsToAlarm": alarm.get("DatapointsToAlarm") or evaluation_periods,
        "Threshold": float(alarm["Threshold"]) if alarm.get("Threshold") is not None else None,
        "ComparisonOperator": alarm.get("ComparisonOperator"),
        "TreatMissingData": alarm.get("TreatMissingData") or "missing",
        "Unit": alarm.get("Unit"),
        "Metrics": bool(alarm.get("Metrics")),
    }


@dataclass(frozen=True)
class AlarmDiff:
    """What applying the alarms did (or will do), by alarm name."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "created": list(self.created),
            "updated": list(self.updated),
            "deleted": list(self.deleted),
            "unchanged": list(self.unchanged),
        }


def plan_alarms(specs: Sequence[AlarmSpec], existing: Iterable[Mapping[str, Any]], prefix: str) -> AlarmDiff:
    """Compare the alarms in code with those in AWS (``describe_alarms`` entries) under `prefix`.

    Alarms under the prefix that the code does not name are to be deleted; alarms outside it
    are not ours and are ignored.
    """
    if not prefix:
        raise ValueError("alarm prefix is empty: every alarm in the account would be managed")
    names = [spec.name for spec in specs]
    outside = [name for name in names if not name.startswith(prefix)]
    if outside:
        raise ValueError(f"alarms {outside} do not start with the managed prefix {prefix!r}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"alarms {duplicates} are defined more than once")
    current = {a["AlarmName"]: a for a in existing if a["AlarmName"].startswith(prefix)}
    created, updated, unchanged = [], [], []
    for spec in specs:
        if spec.name not in current:
            created.append(spec.name)
        elif alarm_config(current[spec.name]) != alarm_config(spec.to_put_kwargs()):
            updated.append(spec.name)
        else:
            unchanged.append(spec.name)
    deleted = sorted(set(current) - set(names))
    return AlarmDiff(tuple(created), tuple(updated), tuple(deleted), tuple(unchanged))


def build_alarms(environment: str | None = None, topic_arn: str | None = None) -> tuple[AlarmSpec, ...]:
    """The platform's alarms for one environment.

    `environment` defaults to ``$PLATFORM_ENVIRONMENT`` (else ``local``) and is a dimension of
    the platform metrics they watch; `topic_arn` defaults to ``$ALARM_SNS_TOPIC_ARN`` and is
    the alarm action (no action when unset). A metric matches an alarm only with exactly the
    alarm's dimensions, so publishers of these metrics send exactly these.
    """
    env = environment or os.environ.get("PLATFORM_ENVIRONMENT") or "local"
    topic = topic_arn if topic_arn is not None else os.environ.get("ALARM_SNS_TOPIC_ARN", "")
    actions = (topic,) if topic else ()
    task_failed = tuple(
        AlarmSpec(
            name=f"{ALARM_PREFIX}task-failed-{dag_id}",
            metric_name="TaskFailed",
            namespace=NAMESPACE,
            statistic="Sum",
            period_seconds=300,
            evaluation_periods=1,
            threshold=1,
            comparison="GreaterThanOrEqualToThreshold",
            dimensions={"DagId": dag_id, "Environment": env},
            actions=actions,
            description=f"A task of DAG {dag_id} failed in the last 5 minutes.",
        )
        for dag_id in ids.DAG_IDS
    )
    # the healthcheck DAG's probes publish per connection, without an environment dimension
    probe_failed = tuple(
        AlarmSpec(
            name=f"{ALARM_PREFIX}probe-failed-{conn_id}",
            metric_name="ProbeFailed",
            namespace=HEALTHCHECK_NAMESPACE,
            statistic="Sum",
            period_seconds=300,
            evaluation_periods=1,
            threshold=1,
            comparison="GreaterThanOrEqualToThreshold",
            dimensions={"ConnId": conn_id},
            actions=actions,
            description=f"The healthcheck could not reach connection {conn_id}.",
        )
        for conn_id in ids.CONNECTION_IDS
    )
    return (
        *task_failed,
        *probe_failed,
        AlarmSpec(
            name=f"{ALARM_PREFIX}backup-not-verified",
            metric_name="BackupVerified",
            namespace=NAMESPACE,
            statistic="Minimum",
            period_seconds=86400,
            evaluation_periods=1,
            threshold=1,
            comparison="LessThanThreshold",
            dimensions={"Environment": env},
            # no datapoint at all means no backup was verified: that is the failure
            treat_missing_data="breaching",
            actions=actions,
            description="No backup was verified by a test restore in the last day.",
        ),
        AlarmSpec(
            name=f"{ALARM_PREFIX}queue-backlog",
            metric_name="QueueBacklog",
            namespace=NAMESPACE,
            statistic="Maximum",
            period_seconds=300,
            evaluation_periods=3,
            threshold=5000,
            comparison="GreaterThanThreshold",
            dimensions={"Environment": env},
            actions=actions,
            description="Over 5000 execution tasks have waited in the queue for 15 minutes.",
        ),
        AlarmSpec(
            name=f"{ALARM_PREFIX}alert-channel-failed",
            metric_name="AlertChannelFailed",
            namespace=NAMESPACE,
            statistic="Sum",
            period_seconds=300,
            evaluation_periods=1,
            threshold=1,
            comparison="GreaterThanOrEqualToThreshold",
            dimensions={"Environment": env},
            actions=actions,
            description="An alert could not be delivered on one of its channels.",
        ),
    )


ALARMS: tuple[AlarmSpec, ...] = build_alarms()
