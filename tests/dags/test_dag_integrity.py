"""Every DAG file imports cleanly and carries what an operator of the UI relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_dag_file_defines_a_dag(dagbag):
    files_with_dags = {Path(d.fileloc).name for d in dagbag.dags.values()}
    assert files_with_dags == {p.name for p in DAGS_DIR.glob("*.py")}


def test_dag_ids_are_from_the_design(dagbag):
    from include.alarms import DAG_IDS  # the design's DAG ids, which the alarms watch

    assert "platform_healthcheck" in dagbag.dags
    assert set(dagbag.dags) <= set(DAG_IDS)


def _as_list(callbacks) -> list:
    return callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []


def test_every_dag_publishes_its_run_outcome(dagbag):
    from execplatform.notifiers.alert_notifier import RunMetricsNotifier

    for dag_id, dag in dagbag.dags.items():
        for outcome in ("on_success_callback", "on_failure_callback"):
            callbacks = _as_list(getattr(dag, outcome))
            assert any(isinstance(c, RunMetricsNotifier) for c in callbacks), f"{dag_id} lacks {outcome}"


def test_every_dag_is_documented_tagged_owned_retried_and_alerting(dagbag):
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and "Owner" in dag.doc_md, f"{dag_id} has no doc_md naming its owner"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"
            callbacks = _as_list(task.on_failure_callback)
            assert any(isinstance(c, PlatformAlertNotifier) for c in callbacks), (
                f"{dag_id}.{task.task_id} does not alert on failure through PlatformAlertNotifier"
            )
