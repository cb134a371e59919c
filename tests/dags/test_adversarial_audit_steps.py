"""adversarial_audit's steps after the gates, under `dag.test()` against PostgreSQL, moto, the SMTP
sink and the Sentry sink: they run whatever the gates' outcome, record their evidence, and the
digest goes out."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.smtp_sink import read_messages
from include.audit.gates import GATES
from tests.airflow_api import postgres_connection
from tests.offers_fixtures import cursor

DAGS = Path(__file__).resolve().parents[2] / "dags"
STEPS = ("leading_indicators", "adversarial_probes", "alarm_delivery", "daily_digest")


@pytest.fixture
def app_db(app_head_dsn, local_stack, monkeypatch):
    import sentry_sdk

    from devstack.demo_data import seed
    from devstack.stack import sentry_dsn

    seed(app_head_dsn, scale=0.01)
    with cursor(app_head_dsn) as cur:  # yesterday, the day the audit covers: one failure in four
        cur.execute(
            "INSERT INTO execution_tasks (task_type, status, finished_at, duration_ms, error, ai_model) "
            "SELECT 'idea', s, date_trunc('day', now()) - interval '12 hours', 1000, "
            "CASE WHEN s = 'dead' THEN 'boom' END, 'gpt-4.1' "
            "FROM unnest(ARRAY['dead', 'succeeded', 'succeeded', 'succeeded']) AS s"
        )
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    monkeypatch.setenv("SMTP_SINK_DIR", str(local_stack.folder / "mail"))
    monkeypatch.setenv("SENTRY_SINK_DIR", str(local_stack.folder / "sentry"))
    monkeypatch.setenv("AIRFLOW_VAR_AUDIT_DIGEST_RECIPIENTS", "board@example.com")
    sentry_sdk.init(dsn=sentry_dsn(local_stack.ports), include_local_variables=False)
    yield app_head_dsn
    sentry_sdk.get_client().close()


def test_the_steps_after_the_gates_run_record_evidence_and_mail_the_digest(
    app_db, local_stack, tmp_path, monkeypatch
):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.serialized_dag import SerializedDagModel  # noqa: F401 (registers models)
    from airflow.utils.db import initdb

    initdb()
    monkeypatch.setenv("AUDIT_REPORT_DIR", str(tmp_path))
    run = DagBag(dag_folder=str(DAGS / "adversarial_audit.py")).get_dag("adversarial_audit").test()
    tis = run.get_task_instances()
    states = {ti.task_id: ti.state for ti in tis}
    assert {step: states[step] for step in STEPS} == dict.fromkeys(STEPS, "success"), states
    # one mapped instance of `check` per gate, named by its gate in the UI
    assert sorted(ti.rendered_map_index for ti in tis if ti.task_id == "check") == sorted(GATES)
    with cursor(app_db) as cur:
        cur.execute(
            "SELECT gate, passed FROM audit_findings WHERE gate IN ('adversarial_probes', 'alarm_delivery')"
        )
        assert sorted(cur.fetchall()) == [("adversarial_probes", True), ("alarm_delivery", True)]
        # the probes asked the stack's executor (connection task_executor) and probed every DAG's params
        cur.execute("SELECT observed->'outcomes' FROM audit_findings WHERE gate = 'adversarial_probes'")
        outcomes = cur.fetchone()[0]
        assert outcomes["executor_unknown_ai_model"] == "refused"
        assert (
            outcomes["param_db_restore.confirm_0"]
            == outcomes["param_db_migrate.target_revision_0"]
            == "refused"
        )
        cur.execute(
            "SELECT value, sample_size FROM indicator_values WHERE indicator = 'task_failure_rate' "
            "AND day = current_date - 1"
        )
        assert cur.fetchall() == [(0.25, 4)]
    digests = [m for m in read_messages(local_stack.folder / "mail") if "board@example.com" in m]
    assert digests and "Platform audit" in digests[-1]


def test_without_an_executor_connection_the_probes_get_no_client():
    """The unknown-model probe then reports itself UNCHECKED (tests/include/audit/test_probes.py),
    failing the gate."""
    from execplatform.steps.probe_steps import _executor

    assert _executor("no_such_executor_connection") is None


def test_the_verdict_comes_last_and_is_the_only_leaf():
    """Airflow derives a run's state from its leaves: a failed probe or alarm gate, or a step that
    did not finish, fails the run only if `report` waits for it and nothing runs after it."""
    from airflow.dag_processing.dagbag import DagBag

    # the parsed DAG itself: get_dag would read the metadata database, which this test needs not
    dag = DagBag(dag_folder=str(DAGS / "adversarial_audit.py")).dags["adversarial_audit"]
    assert [t.task_id for t in dag.leaves] == ["report"]
    assert set(STEPS) <= dag.get_task("report").get_flat_relative_ids(upstream=True)
