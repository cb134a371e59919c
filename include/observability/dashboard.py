"""The platform's CloudWatch dashboard as code, beside its alarms: the figures an on-call engineer
looks at first, each graph with the thresholds of the alarms that watch its metric.

Graphs use SEARCH expressions, so that every dimension set a publisher sends (each DAG, task type,
connection, environment) gets its own line without being listed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from include.observability.alarms import ALARMS, HEALTHCHECK_NAMESPACE, AlarmSpec
from include.observability.metrics import NAMESPACE

DASHBOARD_NAME = "execplatform"
WIDTH, HEIGHT, PER_ROW = 8, 6, 3  # the dashboard grid is 24 units wide

# (title, namespace, metric names, statistic, period in seconds)
# fmt: off
GRAPHS: tuple[tuple[str, str, tuple[str, ...], str, int], ...] = (
    ("Failed tasks by DAG", NAMESPACE, ("TaskFailed",), "Sum", 300),
    ("DAG run duration (s)", NAMESPACE, ("DagRunDuration",), "Maximum", 300),
    ("Healthcheck probes failed", HEALTHCHECK_NAMESPACE, ("ProbeFailed",), "Sum", 300),
    ("Backup verified (1 = yes)", NAMESPACE, ("BackupVerified",), "Minimum", 86400),
    ("Backup dump, restore (s)", NAMESPACE, ("BackupDumpSeconds", "BackupRestoreSeconds"), "Maximum", 86400),
    ("Queue backlog (ready tasks)", NAMESPACE, ("QueueBacklog",), "Maximum", 300),
    ("Queue wait p95 (ms)", NAMESPACE, ("QueueWaitP95",), "Maximum", 300),
    ("Execution tasks and failures", NAMESPACE, ("ExecutionTasks", "ExecutionTaskFailures"), "Sum", 300),
    ("Cache hit ratio (%)", NAMESPACE, ("CacheHitRatio",), "Average", 300),
    ("Alerts raised and undelivered", NAMESPACE, ("AlertRaised", "AlertChannelFailed"), "Sum", 300),
    ("Offer model AUC", NAMESPACE, ("OfferModelAuc",), "Maximum", 86400),
    ("Offer ROI, incremental (cents)", NAMESPACE, ("OfferRoiIncrementalCents",), "Maximum", 86400),
)
# fmt: on


def _search(namespace: str, metric: str, statistic: str, period: int) -> str:
    return f"SEARCH('Namespace=\"{namespace}\" MetricName=\"{metric}\"', '{statistic}', {period})"


def build_dashboard(region: str, alarms: Sequence[AlarmSpec] = ALARMS) -> dict[str, Any]:
    """The dashboard body (``put_dashboard``'s DashboardBody, as a dict) for one region."""
    widgets = []
    for i, (title, namespace, metrics, statistic, period) in enumerate(GRAPHS):
        names_by_threshold: dict[float, list[str]] = {}
        for alarm in alarms:
            if alarm.namespace == namespace and alarm.metric_name in metrics:
                names_by_threshold.setdefault(float(alarm.threshold), []).append(alarm.name)
        properties = {
            "title": title,
            "region": region,
            "view": "timeSeries",
            "period": period,
            "metrics": [
                [
                    {
                        "expression": _search(namespace, metric, statistic, period),
                        "id": f"m{n}",
                        "label": metric,
                    }
                ]
                for n, metric in enumerate(metrics)
            ],
        }
        if names_by_threshold:  # one line per threshold (the per-DAG alarms share theirs)
            properties["annotations"] = {
                "horizontal": [
                    {"label": names[0] if len(names) == 1 else f"{len(names)} alarms", "value": value}
                    for value, names in sorted(names_by_threshold.items())
                ]
            }
        x, y = (i % PER_ROW) * WIDTH, (i // PER_ROW) * HEIGHT
        widgets.append(
            {"type": "metric", "x": x, "y": y, "width": WIDTH, "height": HEIGHT, "properties": properties}
        )
    return {"widgets": widgets}
