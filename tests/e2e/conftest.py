"""The stack that the operations suites share, started once per session, and what they need of it.

test_airflow_metrics.py, test_migration_story.py, test_dags_over_rest.py,
test_event_driven_task_batch.py and test_ui_in_browser.py run on one stack with Airflow
(`ops_stack`): each asks the fixtures here for the state it starts from, so any one of them runs
alone, and in one session they run in the order of the demo story (below).

The other suites start a stack of their own, because their stories need a different one:
- test_local_stack.py starts and stops the stack as a user does, with `make up`, `make down` and
  `make run`: a fixture cannot hand those commands a running stack.
- test_alerting_e2e.py runs a DAG folder of its own (tests/fixtures/dags, a DAG that fails on
  purpose, whose alerts would mix with the stories' here) and sends task logs to CloudWatch.
- test_celery_scaleout.py runs the CeleryExecutor with two workers and every DAG on a one-minute
  schedule, where here a DAG runs only when a story runs it.
"""

from __future__ import annotations

import json

import pytest

from devstack.stack import LocalStack
from execplatform.dag_defaults import OVERRIDES_VAR
from include.ids import DAG_IDS
from include.migrations import current, heads, upgrade
from tests.airflow_api import dag_runs, dags_test, rows, running, set_paused, wait_for
from tests.e2e.rest_waves import run_waves

# the DAGs that `airflow dags test` runs in the stories: the scheduler leaves runs of paused DAGs
# alone, and a `dags test` and a scheduler acting on the same run can deadlock on its dag_run row
# (seen once in Airflow 3.3.2)
RUN_BY_DAGS_TEST = ("db_migrate", "adversarial_audit", "task_batch")


def pytest_collection_modifyitems(config, items):
    """The suites with a stack of their own run first, each stopping it at its module's end, so
    that no two stacks share the machine; then the modules on the shared stack: first those
    that start where it starts (the migration story needs the baseline schema it seeds), then
    those that need the app database at head (`app_db_at_head`)."""

    def modules_using(fixture: str) -> set:
        return {item.module for item in items if fixture in getattr(item, "fixturenames", ())}

    shared, at_head = modules_using("ops_stack"), modules_using("app_db_at_head")
    items.sort(
        key=lambda item: (getattr(item, "module", None) in shared, getattr(item, "module", None) in at_head)
    )


@pytest.fixture(scope="session")
def ops_stack(tmp_path_factory):
    """The whole stack with Airflow on the project's DAGs; the app database seeded at the baseline."""
    # the DAGs these stories drive run only when a story says so (the celery suite runs every
    # schedule): 29 February has no slot between their start_date and now, so no scheduled run
    # is made when a story unpauses them; and they start paused, so no event starts one either
    # (task_batch's trigger, which runs only while its DAG is unpaused, would announce the
    # seeded backlog at once). The fixture unpauses the others.
    overrides = {
        OVERRIDES_VAR: json.dumps(
            dict.fromkeys(("task_batch", "adversarial_audit", "offer_model_retrain"), "0 0 29 2 *")
        ),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # a drain that emptied the queue waits this long for more (the default, 60 s, would
        # keep every story's task_batch run a minute longer)
        "TASK_BATCH_IDLE_SECONDS": "10",
    }
    with running(LocalStack(tmp_path_factory.mktemp("ops-stack"), api_port=0, extra_env=overrides)) as stack:
        for dag_id in DAG_IDS:
            if dag_id not in RUN_BY_DAGS_TEST:
                set_paused(stack, dag_id, False)
        yield stack


@pytest.fixture(scope="session")
def app_db_at_head(ops_stack):
    """The app database at the newest revision with its seeded backlog drained: where the
    migration story leaves it (db_migrate applies head, then task_batch drains the queue). Made
    the same way when the story has not run: `upgrade` as db_migrate does, task_batch's
    `airflow dags test` as the story does."""
    dsn = ops_stack.app_dsn()
    if current(dsn) != heads()[0]:
        upgrade(dsn, "head")
    unfinished = "SELECT count(*) FROM execution_tasks WHERE status IN ('queued', 'running')"
    if rows(ops_stack, unfinished) != [(0,)]:
        run = dags_test(ops_stack, "task_batch", {})
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        assert rows(ops_stack, unfinished) == [(0,)]
    return ops_stack


@pytest.fixture(scope="session")
def rest_runs(ops_stack, app_db_at_head) -> dict[str, dict]:
    """Every DAG triggered through the REST API with a conf and followed to its end, once a
    session (tests/e2e/rest_waves.py): the finished runs by DAG id."""
    # db_backup's scheduled run, made as the stack starts, ends first: the REST run's retention
    # then has an earlier backup to delete, and neither run deletes the other's backup
    wait_for(
        lambda: (
            (runs := dag_runs(ops_stack, "db_backup"))
            and all(r["state"] in ("success", "failed") for r in runs)
        ),
        600,
        "db_backup's scheduled run to end",
    )
    return run_waves(ops_stack)
