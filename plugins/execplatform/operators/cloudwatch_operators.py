"""Publish platform metrics to CloudWatch and apply the platform's alarms as code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from include.ids import AWS
from include.observability.alarms import ALARM_PREFIX
from include.observability.metrics import NAMESPACE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.sdk import Context

    from include.observability.metrics import Metric


def _metric_from_dict(spec: Mapping[str, Any], dimensions: Mapping[str, str]) -> Metric:
    from datetime import datetime

    from include.observability.metrics import Metric

    unknown = set(spec) - {"name", "value", "unit", "dimensions", "timestamp"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    if "name" not in spec or "value" not in spec:
        raise ValueError("a metric needs a 'name' and a 'value'")
    timestamp = spec.get("timestamp")
    if isinstance(timestamp, str):
        timestamp = datetime.fromisoformat(timestamp)
    value = spec["value"]
    if isinstance(value, str):  # a rendered template is a string
        value = float(value)
    return Metric(
        name=spec["name"],
        value=value,
        unit=spec.get("unit", "Count"),
        dimensions={**dimensions, **(spec.get("dimensions") or {})},
        timestamp=timestamp,
    )


class PublishMetricsOperator(BaseOperator):
    """
    Publish datapoints to CloudWatch with the standard dimensions of the running task.

    Each metric gets ``DagId``, ``TaskId`` (of this task) and ``Environment``; its own
    ``dimensions`` add to them or override them, and a dimension set to ``""`` or None is
    dropped (alarms match exact dimension sets). Valid metrics are published even when some
    are not; the task then fails without retry, naming each rejected metric and why, since a
    retry would publish the valid ones a second time.

    :param metrics: (templated) dicts with ``name``, ``value`` and optionally ``unit``
        (default ``Count``), ``dimensions`` and ``timestamp`` (ISO 8601).
    :param namespace: (templated) the CloudWatch namespace.
    :param aws_conn_id: the AWS connection to use.
    """

    template_fields: Sequence[str] = ("metrics", "namespace")

    def __init__(
        self,
        *,
        metrics: list[dict[str, Any]] | str,
        namespace: str = NAMESPACE,
        aws_conn_id: str = AWS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.namespace = namespace
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.hooks.cloudwatch_hook import publish_metrics
        from include.observability.metrics import standard_dimensions

        if not isinstance(self.metrics, list):
            raise AirflowFailException(
                f"metrics must render to a list of dicts, got {type(self.metrics).__name__}"
            )
        ti = context["ti"]
        dimensions = standard_dimensions(dag_id=ti.dag_id, task_id=ti.task_id)
        valid, rejected = [], []
        for index, spec in enumerate(self.metrics):
            try:
                if not isinstance(spec, dict):
                    raise ValueError(f"expected a dict, got {type(spec).__name__}")
                valid.append(_metric_from_dict(spec, dimensions))
            except (TypeError, ValueError) as exc:
                rejected.append(f"metrics[{index}] {spec!r}: {exc}")
        requests = publish_metrics(valid, namespace=self.namespace, aws_conn_id=self.aws_conn_id)
        self.log.info("published %d metrics to %s in %d requests", len(valid), self.namespace, requests)
        if rejected:
            for reason in rejected:
                self.log.error("rejected %s", reason)
            raise AirflowFailException(
                f"{len(rejected)} of {len(self.metrics)} metrics rejected: " + "; ".join(rejected)
            )
        return {"namespace": self.namespace, "published": len(valid), "requests": requests}


class ApplyAlarmsOperator(BaseOperator):
    """
    Make the CloudWatch alarms under `prefix` equal to ``include.observability.alarms.ALARMS``, and
    the dashboard equal to ``include.observability.dashboard`` (its graphs show those thresholds).

    Idempotent: alarms already as in code are left untouched, so a re-run reports no change.
    Returns (and logs) the names created, updated, deleted and unchanged.

    :param prefix: (templated) the alarm-name prefix that this project owns; alarms under it
        that the code does not define are deleted.
    :param aws_conn_id: the AWS connection to use.
    """

    template_fields: Sequence[str] = ("prefix",)

    def __init__(self, *, aws_conn_id: str = AWS, prefix: str = ALARM_PREFIX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.prefix = prefix

    def execute(self, context: Context) -> dict[str, list[str]]:
        from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
        from include.observability.alarms import ALARMS
        from include.observability.dashboard import DASHBOARD_NAME, build_dashboard

        hook = CloudWatchMetricsHook(aws_conn_id=self.aws_conn_id)
        result = hook.apply_alarms(ALARMS, self.prefix).to_dict()
        self.log.info("alarms applied under %r: %s", self.prefix, result)
        hook.put_dashboard(DASHBOARD_NAME, build_dashboard(hook.get_conn().meta.region_name))
        return result
