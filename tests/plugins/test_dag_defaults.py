"""DAG_SCHEDULE_OVERRIDES: how tests and demos shorten every scheduled DAG's interval."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from execplatform.dag_defaults import OVERRIDES_VAR, schedule_for
from tests.project import DAGS_DIR


def test_without_overrides_each_dag_keeps_its_schedule(monkeypatch):
    monkeypatch.delenv(OVERRIDES_VAR, raising=False)
    assert schedule_for("db_backup", "@daily") == "@daily"
    assert schedule_for("platform_healthcheck", timedelta(minutes=15)) == timedelta(minutes=15)


def test_an_override_replaces_only_its_own_dags_schedule(monkeypatch):
    monkeypatch.setenv(OVERRIDES_VAR, json.dumps({"db_backup": "*/2 * * * *"}))
    assert schedule_for("db_backup", "@daily") == "*/2 * * * *"
    assert schedule_for("roi_sync", "@hourly") == "@hourly"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("{not json", "not valid JSON"),
        ('["db_backup"]', "JSON object"),
        ('{"db_backup": 5}', "'db_backup'"),
        ('{"db_backup": " "}', "'db_backup'"),
    ],
)
def test_a_malformed_override_names_what_is_wrong(monkeypatch, raw, named):
    monkeypatch.setenv(OVERRIDES_VAR, raw)
    with pytest.raises(ValueError, match=named) as error:
        schedule_for("db_backup", "@daily")
    assert OVERRIDES_VAR in str(error.value)


def test_every_scheduled_dag_takes_its_override(monkeypatch):
    """Parsed with an override for every DAG id: each DAG with a schedule runs every minute
    (asset-or-time schedules keep their assets), and unscheduled DAGs stay unscheduled."""
    from airflow.dag_processing.dagbag import DagBag

    plain = DagBag(dag_folder=str(DAGS_DIR)).dags
    monkeypatch.setenv(OVERRIDES_VAR, json.dumps(dict.fromkeys(plain, "* * * * *")))
    overridden = DagBag(dag_folder=str(DAGS_DIR)).dags
    for dag_id, dag in plain.items():
        timetable = repr(overridden[dag_id].timetable)
        if dag.schedule is None:
            assert overridden[dag_id].schedule is None, (dag_id, timetable)
        else:
            assert "expression='* * * * *'" in timetable and timetable != repr(dag.timetable), (
                dag_id,
                timetable,
            )
