"""CloudWatch metrics hook: publish datapoints in request-sized batches, read them, apply alarms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from include.ids import AWS

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime

    from include.observability.alarms import AlarmDiff, AlarmSpec
    from include.observability.metrics import Metric

# DeleteAlarms takes at most 100 names per request
DELETE_ALARMS_BATCH = 100


class CloudWatchMetricsHook(AwsBaseHook):
    """
    Interact with CloudWatch metrics and metric alarms through ``boto3.client("cloudwatch")``.

    Additional arguments (such as ``aws_conn_id``, ``region_name``) are passed down to
    :class:`~airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "cloudwatch"
        super().__init__(*args, **kwargs)

    def put_metrics(self, namespace: str, metrics: Iterable[Metric]) -> int:
        """
        Publish `metrics` to `namespace`; return the number of PutMetricData requests made.

        Requests stay within the API's limits (1000 datums, 1 MB). Every datum is checked
        before the first request, so a datum that cannot be sent publishes nothing.
        PutMetricData is not idempotent: a datum sent twice counts twice.
        """
        from include.observability.metrics import chunk_metric_data

        chunks = list(chunk_metric_data(metric.to_datum() for metric in metrics))
        client = self.get_conn()
        for number, chunk in enumerate(chunks, 1):
            client.put_metric_data(Namespace=namespace, MetricData=chunk)
            self.log.debug("%s: request %d/%d sent %d datums", namespace, number, len(chunks), len(chunk))
        self.log.info(
            "published %d datums to %s in %d requests",
            sum(map(len, chunks)),
            namespace,
            len(chunks),
        )
        return len(chunks)

    def get_metric_values(
        self,
        namespace: str,
        name: str,
        dimensions: Mapping[str, str],
        start: datetime,
        end: datetime,
        stat: str = "Sum",
        period: int = 60,
    ) -> list[float]:
        """
        The statistic of one metric per period from `start` to `end`, oldest first.

        Periods without datapoints are left out. `dimensions` must be the metric's exact set.
        """
        from include.observability.metrics import dimension_list

        query = {
            "Id": "m",
            "MetricStat": {
                "Metric": {
                    "Namespace": namespace,
                    "MetricName": name,
                    "Dimensions": dimension_list(dimensions),
                },
                "Period": period,
                "Stat": stat,
            },
        }
        pages = (
            self.get_conn()
            .get_paginator("get_metric_data")
            .paginate(MetricDataQueries=[query], StartTime=start, EndTime=end, ScanBy="TimestampAscending")
        )
        values: list[float] = []
        for page in pages:
            for result in page["MetricDataResults"]:
                values.extend(float(v) for v in result["Values"])
        return values

    def describe_metric_alarms(self, prefix: str) -> list[dict[str, Any]]:
        """Every metric alarm whose name starts with `prefix`, across all pages."""
        pages = (
            self.get_conn()
            .get_paginator("describe_alarms")
            .paginate(AlarmNamePrefix=prefix, AlarmTypes=["MetricAlarm"])
        )
        return [alarm for page in pages for alarm in page.get("MetricAlarms", [])]

    def apply_alarms(self, alarms: Sequence[AlarmSpec], prefix: str) -> AlarmDiff:
        """
        Make the metric alarms under `prefix` in AWS exactly `alarms`; return what changed.

        Alarms that are new or whose configuration differs are put; those already equal are
        left untouched (a second apply changes nothing); alarms under `prefix` that `alarms`
        does not name are deleted. Alarms outside `prefix` are never touched.
        """
        from include.observability.alarms import plan_alarms

        diff = plan_alarms(alarms, self.describe_metric_alarms(prefix), prefix)
        client = self.get_conn()
        to_put = set(diff.created) | set(diff.updated)
        for spec in alarms:
            if spec.name in to_put:
                client.put_metric_alarm(**spec.to_put_kwargs())
        for start in range(0, len(diff.deleted), DELETE_ALARMS_BATCH):
            client.delete_alarms(AlarmNames=list(diff.deleted[start : start + DELETE_ALARMS_BATCH]))
        self.log.info(
            "alarms under %r: %d created, %d updated, %d deleted, %d unchanged",
            prefix,
            len(diff.created),
            len(diff.updated),
            len(diff.deleted),
            len(diff.unchanged),
        )
        return diff

    def put_dashboard(self, name: str, body: dict[str, Any]) -> None:
        """Create or replace the dashboard `name` (CloudWatch checks the body and refuses a bad one)."""
        import json

        answer = self.get_conn().put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
        if answer.get("DashboardValidationMessages"):
            raise ValueError(f"dashboard {name!r}: {answer['DashboardValidationMessages']}")
        self.log.info("dashboard %r: %d widgets", name, len(body["widgets"]))


def publish_metrics(
    metrics: Iterable[Metric],
    *,
    namespace: str | None = None,
    standard_dimensions: bool = True,
    aws_conn_id: str = AWS,
) -> int:
    """The one way a task, operator or notifier publishes metrics (default namespace
    ``ExecPlatform``). Each gets the standard dimensions (``Environment``) under its own, as the
    alarms expect, unless `standard_dimensions` is false (the healthcheck's probes, whose alarms
    watch the connection alone); returns the requests made."""
    from dataclasses import replace

    from include.observability import metrics as platform_metrics

    base = platform_metrics.standard_dimensions() if standard_dimensions else {}
    stamped = [replace(m, dimensions={**base, **m.dimensions}) for m in metrics]
    hook = CloudWatchMetricsHook(aws_conn_id=aws_conn_id)
    return hook.put_metrics(namespace or platform_metrics.NAMESPACE, stamped)
