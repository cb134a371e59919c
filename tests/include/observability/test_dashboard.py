"""The dashboard as code: it graphs only metrics the project publishes, with the alarms' thresholds."""

from __future__ import annotations

from include.observability.alarms import ALARMS
from include.observability.dashboard import GRAPHS, build_dashboard
from tests.project import ROOT


def published_metric_names(graphed: set[str]) -> set[str]:
    """The graphed names that appear as a string literal in code other than the dashboard's and
    the alarms' (a publisher's ``Metric("Name", ...)`` or a metric spec)."""
    found = set()
    for layer in ("dags", "include", "plugins"):
        for path in (ROOT / layer).rglob("*.py"):
            if path.name not in ("dashboard.py", "alarms.py"):
                text = path.read_text()
                found |= {name for name in graphed if f'"{name}"' in text}
    return found


def test_every_graphed_metric_is_published_somewhere():
    graphed = {metric for _, _, metrics, _, _ in GRAPHS for metric in metrics}
    assert graphed - published_metric_names(graphed) == set()


def test_each_alarmed_metric_graph_shows_its_threshold():
    body = build_dashboard("eu-west-1")
    lines = {
        w["properties"]["title"]: {
            a["value"] for a in w["properties"].get("annotations", {}).get("horizontal", [])
        }
        for w in body["widgets"]
    }
    assert lines["Alerts raised and undelivered"] == {1.0}
    assert lines["Failed tasks by DAG"] == {1.0}
    assert lines["Backup verified (1 = yes)"] == {1.0}
    assert lines["Queue backlog (ready tasks)"] == {5000.0}
    alarmed = {a.metric_name for a in ALARMS}
    assert all(lines[title] for title, _, metrics, _, _ in GRAPHS if alarmed & set(metrics))
    assert all(w["x"] + w["width"] <= 24 for w in body["widgets"])  # the grid is 24 units wide
