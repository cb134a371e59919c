"""Scale-out and schedules on one stack that runs the CeleryExecutor with two Celery workers.

The stack's Redis is the broker (a database of its own, apart from the task cache's), the
metadata PostgreSQL the result backend, and each worker names itself in the task instances it
runs (`[core] hostname_callable`). Every DAG starts paused with a one-minute schedule
(`DAG_SCHEDULE_OVERRIDES`), and the app database is where the demo stands after `db_migrate`.

1. A manual `task_batch` run with several mapped drains: the drains run on both workers, each
   worker's drains complete execution tasks, and no task is claimed or completed twice.
2. Every scheduled DAG, unpaused, gets a run from the scheduler (run type `scheduled`, on the
   short interval) that succeeds; `adversarial_audit` is unpaused once `db_backup` succeeded,
   since its backup gate fails hard without a fresh verified backup. The triggerer is killed
   first: task_batch's event-driven start is gone, and its time schedule alone drains the tasks
   enqueued meanwhile.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from devstack.stack import LocalStack
from execplatform.dag_defaults import OVERRIDES_VAR
from include.migrations import upgrade
from tests.airflow_api import api, dag_url, exists, rows, running, set_paused, token_for, wait_for
from tests.dags.test_task_batch_dag import VALID

log = logging.getLogger(__name__)

WORKERS = ("celery-worker-1", "celery-worker-2")
SCHEDULED_DAGS = (
    "platform_healthcheck",
    "db_backup",
    "task_batch",
    "adversarial_audit",
    "offer_model_retrain",
    "offer_feedback",
    "roi_sync",
)
EVERY_MINUTE = "* * * * *"
SCALE_OUT_TASKS = 240
# small batches, few threads and a slow executor: every drain is still busy when the last one starts
SCALE_OUT_CONF = {"batch_size": 10, "parallelism": 4, "concurrency": 4}
EXECUTOR_LATENCY_MS = 300
# the audit's gate `backup_fresh_and_restored` needs a verified backup: it runs after db_backup's
AFTER = {"adversarial_audit": "db_backup"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = LocalStack(
        tmp_path_factory.mktemp("celery-stack"),
        api_port=0,
        celery_workers=len(WORKERS),
        extra_env={
            # nothing runs before a test unpauses it
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            OVERRIDES_VAR: json.dumps(dict.fromkeys(SCHEDULED_DAGS, EVERY_MINUTE)),
            # a drain that emptied the queue waits this long for more, not the default minute
            "TASK_BATCH_IDLE_SECONDS": "5",
        },
    )
    stack.started_at = datetime.now(UTC)
    with running(stack):
        upgrade(stack.app_dsn(), "head")  # as after db_migrate: task_batch and the audit need it
        yield stack


@pytest.fixture(scope="module")
def token(stack) -> str:
    return token_for(stack.info.login)


def set_executor_latency(stack, latency_ms: int) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports['executor']}/admin/faults",
        method="POST",
        data=json.dumps({"latency_ms": latency_ms}).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def enqueue_scale_out_tasks(stack) -> None:
    from include.execution.task_queue import TaskQueue

    types = sorted(VALID)
    tasks = [
        {
            "task_type": types[i % len(types)],
            "ai_model": "gpt-4.1",
            "idempotency_key": f"scale-out-{i}",
            # a distinct input each: no answer comes from the cache, every task reaches the executor
            "payload": {**VALID[types[i % len(types)]], "prompt": f"scale-out task {i}"},
        }
        for i in range(SCALE_OUT_TASKS)
    ]
    with TaskQueue(stack.app_dsn()) as queue:
        queue.enqueue_many(tasks)


def finished_state(stack, token: str, dag_id: str, run_id: str) -> str | None:
    state = api(f"{dag_url(stack, dag_id)}/dagRuns/{run_id}", token)["state"]
    return state if state in ("success", "failed") else None


def test_two_celery_workers_share_a_task_batch_run_and_handle_each_task_once(stack, token):
    base = dag_url(stack, "task_batch")
    wait_for(lambda: exists(base, token), 180, "task_batch to be parsed")
    enqueue_scale_out_tasks(stack)
    set_executor_latency(stack, EXECUTOR_LATENCY_MS)
    # Triggered while paused; unpausing it also lets the scheduler create a one-minute run, which
    # waits behind this one (max_active_runs=1) only if this one sorts first: queued runs start
    # in order of run_after, and the scheduled one's lies at the last minute boundary
    early = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    run_id = api(
        f"{base}/dagRuns",
        token,
        {
            "logical_date": None,
            "run_after": early,
            "conf": SCALE_OUT_CONF,
            "dag_run_id": f"scale_out_{uuid.uuid4().hex[:8]}",
        },
    )["dag_run_id"]
    started = time.monotonic()
    set_paused(stack, "task_batch", False, token)
    try:
        state = wait_for(
            lambda: finished_state(stack, token, "task_batch", run_id),
            600,
            f"run {run_id} to finish",
        )
    finally:
        set_executor_latency(stack, 50)
    log.warning("scale-out run %s: %s after %.0fs", run_id, state, time.monotonic() - started)
    assert state == "success"

    # several mapped drains, spread over both workers, each worker's drains completing tasks
    drains = api(f"{base}/dagRuns/{run_id}/taskInstances/drain/listMapped", token)["task_instances"]
    assert len(drains) == SCALE_OUT_CONF["parallelism"]
    assert {d["state"] for d in drains} == {"success"}
    succeeded_by_worker = dict.fromkeys(WORKERS, 0)
    for d in drains:
        summary = api(
            f"{base}/dagRuns/{run_id}/taskInstances/drain/xcomEntries/return_value"
            f"?map_index={d['map_index']}&deserialize=true",
            token,
        )["value"]
        succeeded_by_worker[d["hostname"]] += sum(t["succeeded"] for t in summary["by_type"].values())
    log.warning("execution tasks completed per worker: %s", succeeded_by_worker)
    assert all(n > 0 for n in succeeded_by_worker.values()), succeeded_by_worker

    # each task of the test was claimed once (attempts counts claims) and completed once
    assert rows(
        stack,
        "SELECT status, attempts, lease_owner IS NULL, finished_at IS NOT NULL, count(*) "
        "FROM execution_tasks WHERE idempotency_key LIKE 'scale-out-%%' GROUP BY 1, 2, 3, 4",
    ) == [("succeeded", 1, True, True, SCALE_OUT_TASKS)]
    # and the drains together report exactly the tasks that the run completed: none counted twice
    completed_in_run = rows(
        stack,
        "SELECT count(*) FROM execution_tasks WHERE status = 'succeeded' AND finished_at >= %s",
        (api(f"{base}/dagRuns/{run_id}", token)["start_date"],),
    )[0][0]
    assert sum(succeeded_by_worker.values()) == completed_in_run


def scheduled_runs(stack, token: str, dag_id: str) -> list[dict]:
    return api(f"{dag_url(stack, dag_id)}/dagRuns?run_type=scheduled&order_by=run_after", token)["dag_runs"]


def enqueue_while_the_triggerer_is_down(stack, token: str) -> list[int]:
    """Kill the triggerer, wait until no asset event is queued for task_batch and no
    asset-triggered run is in flight (so that only its time schedule can start a run for what
    follows), then enqueue tasks."""
    from include.execution.task_queue import TaskQueue

    stack.triggerer = stack.supervisor.stop("triggerer", sig=signal.SIGKILL, grace=10)
    base = dag_url(stack, "task_batch")

    def only_the_schedule_left() -> bool:
        queued = api(f"{base}/assets/queuedEvents", token)["total_entries"]
        runs = api(f"{base}/dagRuns?state=running&state=queued&run_type=asset_triggered", token)
        return queued == 0 and runs["total_entries"] == 0

    wait_for(only_the_schedule_left, 600, "task_batch's asset-triggered runs to end")
    with TaskQueue(stack.app_dsn()) as queue:
        return queue.enqueue_many(
            [
                {
                    "task_type": "idea",
                    "ai_model": "gpt-4.1",
                    "payload": VALID["idea"],
                    "idempotency_key": f"no-trig-{i}",
                }
                for i in range(20)
            ]
        )


def test_every_scheduled_dag_runs_by_its_schedule(stack, token):
    outcome: dict[str, dict] = {}
    unpaused: set[str] = set()
    without_triggerer = enqueue_while_the_triggerer_is_down(stack, token)

    def all_finished() -> bool:
        for dag_id in SCHEDULED_DAGS:
            after = AFTER.get(dag_id)
            if dag_id not in unpaused and (after is None or outcome.get(after, {}).get("state") == "success"):
                set_paused(stack, dag_id, False, token)
                unpaused.add(dag_id)
            elif after in outcome and outcome[after]["state"] != "success":
                outcome.setdefault(dag_id, {"state": f"not run: {after} failed", "dag_run_id": None})
            if dag_id in unpaused and dag_id not in outcome:
                runs = scheduled_runs(stack, token, dag_id)
                if dag_id == "task_batch":  # the run that claimed the tasks enqueued without a triggerer
                    runs = [r for r in runs if claimed_within(stack, without_triggerer, r)]
                done = next((r for r in runs if r["state"] == "success"), None) or next(
                    (r for r in runs if r["state"] == "failed"), None
                )
                if done:
                    outcome[dag_id] = done
                    set_paused(stack, dag_id, True, token)  # one finished run is enough: spare the machine
        return len(outcome) == len(SCHEDULED_DAGS)

    started = time.monotonic()
    try:
        # offer_model_retrain's training is the long pole: 3 to 11 minutes on a loaded 2-core machine
        wait_for(all_finished, 1800, "a finished scheduled run of every scheduled DAG")
    finally:
        stack.supervisor.start(stack.triggerer)
        log.warning(
            "scheduled runs after %.0fs: %s",
            time.monotonic() - started,
            {d: (r["dag_run_id"], r["state"]) for d, r in outcome.items()},
        )
    assert {d: r["state"] for d, r in outcome.items()} == dict.fromkeys(SCHEDULED_DAGS, "success")
    for dag_id, run in outcome.items():
        run_after = datetime.fromisoformat(run["run_after"])
        # the one-minute schedule made it, not the DAG's own (daily, hourly, weekly...): a minute
        # boundary after the stack started (the first one may be the minute it started in)
        assert run_after.second == 0 and run_after >= stack.started_at - timedelta(minutes=1), (
            dag_id,
            run,
        )

    # with the triggerer down, a scheduled run of task_batch claimed the tasks enqueued meanwhile,
    # each once
    assert rows(
        stack,
        "SELECT status, attempts, count(*) FROM execution_tasks WHERE id = ANY(%s) GROUP BY 1, 2",
        (without_triggerer,),
    ) == [("succeeded", 1, len(without_triggerer))]


def claimed_within(stack, ids: list[int], run: dict) -> bool:
    """Whether the finished `run` claimed every task of `ids`."""
    if not run.get("end_date"):
        return False
    start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
    [(inside,)] = rows(
        stack,
        "SELECT count(*) FROM execution_tasks WHERE id = ANY(%s) AND started_at BETWEEN %s AND %s",
        (ids, start, end),
    )
    return inside == len(ids)
