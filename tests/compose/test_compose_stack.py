"""docker-compose.yaml run for real: the stack that tests/compose/run.sh (`make test-compose`)
brought up with two Celery worker containers, driven through Airflow's REST API as an operator
would, in the order of the demo story.

1. the app database, at the baseline schema after airflow-init, gets the demo data;
2. `platform_healthcheck`, `db_backup`, then `db_migrate` approved through the HITL API;
3. `task_batch` with several mapped drains: both worker containers ran drains (the host names
   of the task instances), and every execution task completed exactly once;
4. `offer_model_retrain`, `roi_sync`, `adversarial_audit` (passed), `db_restore` into a new
   database;
5. a worker container killed (`docker kill`) during a drain: its leases are reaped and every
   execution task completes exactly once.

The app database and the executor are published on free loopback ports by
docker-compose.test.yaml; everything else is reached only through the REST API.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import urllib.error
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from include.migrations import current, heads
from tests.airflow_api import api, dag_url, exists, rows, set_paused, token_for, trigger, wait_for, xcom
from tests.dags.test_task_batch_dag import VALID

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE = [
    "docker-compose",
    "--env-file",
    str(HERE / "test.env"),
    "-f",
    str(ROOT / "docker-compose.yaml"),
    "-f",
    str(HERE / "docker-compose.test.yaml"),
]
WORKERS = 2
DRAINS = {"batch_size": 10, "parallelism": 4, "concurrency": 4}
RUN_TIMEOUT = 600
ENDED = ("success", "failed", "skipped", "upstream_failed")


def compose(*args: str, check: bool = True) -> str:
    out = subprocess.run([*COMPOSE, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} exited {out.returncode}: {out.stderr[-2000:]}")
    return out.stdout


def settings() -> dict[str, str]:
    lines = (HERE / "test.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@dataclass
class Info:
    login: dict[str, str]


@dataclass
class ComposeStack:
    """What tests/airflow_api.py's helpers need of a stack: its login and its app database."""

    info: Info
    app_port: int
    executor_port: int
    secrets: dict[str, str] = field(repr=False, default_factory=dict)

    def app_dsn(self, dbname: str = "app") -> str:
        password = self.secrets["APP_DB_PASSWORD"]
        return f"host=127.0.0.1 port={self.app_port} dbname={dbname} user=app password={password}"


def published(service: str, port: int) -> int:
    return int(compose("port", service, str(port)).strip().rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def stack() -> ComposeStack:
    secrets = settings()
    url = f"http://127.0.0.1:{published('airflow-apiserver', 8080)}"
    login = {"url": url, "username": "admin", "password": secrets["AIRFLOW_ADMIN_PASSWORD"]}
    stack = ComposeStack(Info(login), published("app-db", 5432), published("task-executor", 8000), secrets)
    wait_for(lambda: exists(f"{url}/api/v2/version", token_for(login)), 300, "the api-server")
    from devstack.demo_data import seed_if_empty

    os.environ.setdefault("SEED_SCALE", "0.02")
    seed_if_empty(stack.app_dsn())
    return stack


@pytest.fixture(scope="module")
def token(stack) -> str:
    return token_for(stack.info.login)


def finished(stack, token: str, dag_id: str, run_id: str) -> dict | None:
    run = api(f"{dag_url(stack, dag_id)}/dagRuns/{run_id}", token)
    return run if run["state"] in ("success", "failed") else None


def start(stack, token: str, dag_id: str, conf: dict) -> str:
    """A manual run of `dag_id` with `conf`, then the DAG unpaused. Queued runs start in order of
    run_after, and unpausing creates the run of the schedule's latest past boundary (a week back
    for a weekly DAG): this run's run_after lies 30 days back, so it goes first."""
    wait_for(lambda: exists(dag_url(stack, dag_id), token), RUN_TIMEOUT, f"{dag_id} to be parsed")
    body = {
        "logical_date": None,
        "run_after": (datetime.now(UTC) - timedelta(days=30)).isoformat(),
        "conf": conf,
        "dag_run_id": f"compose_{uuid.uuid4().hex[:8]}",
    }
    run_id = api(f"{dag_url(stack, dag_id)}/dagRuns", token, body)["dag_run_id"]
    set_paused(stack, dag_id, False, token)
    return run_id


def run_to_end(stack, token: str, dag_id: str, conf: dict | None = None) -> dict:
    """Start a run of `dag_id` with `conf` and wait until it ends; the run's failed task
    instances are named when it did not succeed."""
    run_id = start(stack, token, dag_id, conf or {})
    run = wait_for(lambda: finished(stack, token, dag_id, run_id), RUN_TIMEOUT, f"{dag_id} run {run_id}")
    if run["state"] != "success":
        base = f"{dag_url(stack, dag_id)}/dagRuns/{run_id}/taskInstances"
        tis = [t for t in api(base, token)["task_instances"] if t["state"] != "success"]
        failed = [(t["task_id"], t["map_index"], t["state"]) for t in tis]
        logs = "\n".join(log_tail(base, token, t) for t in tis if t["state"] == "failed")
        raise AssertionError(f"{dag_id} run {run_id} ended {run['state']}; task instances: {failed}\n{logs}")
    return run


def log_tail(base: str, token: str, ti: dict, lines: int = 15) -> str:
    """The last `lines` events of a task instance's last try, as the UI's log view shows them (a
    failure in CI is read from this; the stack is gone after the run)."""
    url = f"{base}/{ti['task_id']}/logs/{ti['try_number']}?map_index={ti['map_index']}"
    try:
        content = api(url, token).get("content") or []
    except (urllib.error.URLError, TimeoutError) as exc:
        return f"-- {ti['task_id']}[{ti['map_index']}]: log not readable ({exc})"
    events = [e.get("event", "") if isinstance(e, dict) else str(e) for e in content][-lines:]
    return "\n".join([f"-- {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}:", *events])


def worker_hostnames() -> set[str]:
    """The host names of the running worker containers (what Airflow records as the hostname)."""
    ids = compose("ps", "-q", "airflow-worker").split()
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.Hostname}} {{.State.Running}}", *ids],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name for name, running in (line.split() for line in out.splitlines()) if running == "true"}


def enqueue(stack, prefix: str, count: int) -> None:
    from include.execution.task_queue import TaskQueue

    types = sorted(VALID)
    with TaskQueue(stack.app_dsn()) as queue:
        queue.enqueue_many(
            [
                {
                    "task_type": types[i % len(types)],
                    "ai_model": "gpt-4.1",
                    "idempotency_key": f"{prefix}-{i}",
                    # a distinct input each: every task reaches the executor, none is a cache hit
                    "payload": {**VALID[types[i % len(types)]], "prompt": f"{prefix} task {i}"},
                }
                for i in range(count)
            ]
        )


def outcome(stack, prefix: str) -> list[tuple]:
    return rows(
        stack,
        "SELECT status, attempts, count(*) FROM execution_tasks WHERE idempotency_key LIKE %s "
        "GROUP BY 1, 2 ORDER BY 1, 2",
        (f"{prefix}-%",),
    )


def test_the_stack_runs_two_worker_containers_and_the_app_db_is_at_the_baseline(stack):
    assert len(worker_hostnames()) == WORKERS
    assert current(stack.app_dsn()) != heads()[0], "airflow-init leaves the app database at the baseline"


def test_platform_healthcheck(stack, token):
    run_to_end(stack, token, "platform_healthcheck")


def test_db_backup_stores_a_verified_backup_in_s3(stack, token):
    run_to_end(stack, token, "db_backup")
    assert rows(stack, "SELECT count(*) FROM backups WHERE verified_at IS NOT NULL")[0][0] >= 1


def test_db_migrate_waits_for_approval_through_the_hitl_api_then_applies(stack, token):
    dag_id = "db_migrate"
    base = dag_url(stack, dag_id)
    run_id = start(stack, token, dag_id, {"target_revision": heads()[0]})
    approval = f"{base}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
    state = f"{base}/dagRuns/{run_id}/taskInstances/approve"
    wait_for(
        lambda: api(state, token)["state"] in ("deferred", "awaiting_input") and exists(approval, token),
        RUN_TIMEOUT,
        "db_migrate's approval request",
    )
    assert current(stack.app_dsn()) != heads()[0], "nothing is applied before the approval"
    # an answer sent before the scheduler has handled the task's pause makes the resumed task
    # retry (docs/testing.md); wait a little first
    time.sleep(10)
    api(approval, token, {"chosen_options": ["Approve"], "params_input": {}}, method="PATCH")
    run = wait_for(lambda: finished(stack, token, dag_id, run_id), RUN_TIMEOUT, f"db_migrate run {run_id}")
    assert run["state"] == "success"
    assert current(stack.app_dsn()) == heads()[0]


def test_task_batch_drains_on_both_worker_containers_each_task_once(stack, token):
    enqueue(stack, "compose", 160)
    run = run_to_end(stack, token, "task_batch", DRAINS)
    base = f"{dag_url(stack, 'task_batch')}/dagRuns/{run['dag_run_id']}"
    drains = api(f"{base}/taskInstances/drain/listMapped", token)["task_instances"]
    assert len(drains) == DRAINS["parallelism"]
    hosts = {d["hostname"] for d in drains}
    log.warning("task_batch drains ran on %s", sorted(hosts))
    assert hosts == worker_hostnames(), f"drains ran on {hosts}, the workers are {worker_hostnames()}"
    # each task claimed once (attempts counts claims) and completed
    assert outcome(stack, "compose") == [("succeeded", 1, 160)]


def test_offer_model_retrain(stack, token):
    run_to_end(stack, token, "offer_model_retrain")
    # a champion, its artifact in the model bucket (moto, through aws_default)
    [(uri,)] = rows(stack, "SELECT artifact_uri FROM model_versions WHERE status = 'champion'")
    assert uri.startswith(f"s3://{settings().get('MODEL_BUCKET', 'execplatform-models')}/"), uri


def test_roi_sync(stack, token):
    run_to_end(stack, token, "roi_sync")


def test_adversarial_audit_passes(stack, token):
    # the newest audit, for a failure's evidence; then this run's own (an audit the assets
    # trigger may start as soon as this one ends)
    failed_gates = """SELECT gate, observed, threshold FROM audit_findings
        WHERE NOT passed AND audit_run_id = (SELECT max(id) FROM audit_runs)"""
    try:
        run = run_to_end(stack, token, "adversarial_audit")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; failed gates' evidence: {rows(stack, failed_gates)}") from None
    status = "SELECT status FROM audit_runs WHERE dag_run_id = %s"
    assert rows(stack, status, (run["dag_run_id"],)) == [("passed",)]


def test_db_restore_into_a_new_database(stack, token):
    run = run_to_end(stack, token, "db_restore", {"backup_id": "latest"})
    restored = xcom(stack, token, run, "restore")
    assert restored["database"].startswith(f"restore_{restored['backup_id']}_"), "a new, generated name"
    # the latest backup may predate db_migrate: its tables are the live ones, or fewer
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    restored_tables = {t for (t,) in rows(stack, tables, dbname=restored["database"])}
    assert {"execution_tasks", "alembic_version"} <= restored_tables <= {t for (t,) in rows(stack, tables)}
    assert rows(stack, "SELECT count(*) FROM execution_tasks", dbname=restored["database"])[0][0] > 0


def set_executor_latency(stack, latency_ms: int) -> None:
    url = f"http://127.0.0.1:{stack.executor_port}/admin/faults"
    api(url, body={"latency_ms": latency_ms})


def paused_and_idle(stack, token: str, dag_id: str) -> bool:
    """Pause `dag_id`; True once no run of it is running. The scheduler starts no run of a paused
    DAG, but neither does it go on with one already running (a max_active_runs=1 DAG would never
    start the next): if one runs, the DAG is unpaused again to let it end, and False."""
    set_paused(stack, dag_id, True, token)
    time.sleep(5)  # a run the scheduler started as the pause arrived shows up by now
    if api(f"{dag_url(stack, dag_id)}/dagRuns?state=running", token)["total_entries"]:
        set_paused(stack, dag_id, False, token)
        return False
    return True


def container_of(hostname: str) -> str:
    for container in compose("ps", "-q", "airflow-worker").split():
        inspect = ["docker", "inspect", "--format", "{{.Config.Hostname}}", container]
        if subprocess.run(inspect, capture_output=True, text=True, check=True).stdout.strip() == hostname:
            return container
    raise AssertionError(f"no worker container has the host name {hostname}")


def test_a_worker_killed_during_a_drain_loses_nothing_and_repeats_nothing(stack, token):
    """`docker kill` of one worker container while both run drains: the leases its drains held
    lapse and are reaped, the tasks go back to the queue, and every execution task ends
    succeeded, completed exactly once (one `succeeded` row each, whatever its claims)."""
    tasks = 240
    executor = f"http://127.0.0.1:{stack.executor_port}/admin"
    api(f"{executor}/reset", body={})  # counts from here on are the fault test's
    # task_batch is unpaused since the drain test: a run its queue watcher or its 5-minute
    # schedule starts now would take these tasks with the defaults (16 threads a drain, done in
    # seconds) before this test's slow run. Paused and idle, it starts only this test's run.
    wait_for(lambda: paused_and_idle(stack, token, "task_batch"), RUN_TIMEOUT, "task_batch paused and idle")
    enqueue(stack, "fault", tasks)
    set_executor_latency(stack, 1000)  # slow answers: the drains are still busy when one is killed
    try:
        run_id = start(stack, token, "task_batch", {**DRAINS, "concurrency": 2})
        base = f"{dag_url(stack, 'task_batch')}/dagRuns/{run_id}"

        def drains_busy_on_both() -> set[str] | None:
            drains = api(f"{base}/taskInstances/drain/listMapped", token)["task_instances"]
            busy = {d["hostname"] for d in drains if d["state"] == "running" and d["hostname"]}
            done = outcome(stack, "fault")
            if len(busy) == WORKERS and any(s == "succeeded" for s, _, _ in done):
                return busy
            if drains and all(d["state"] in ENDED for d in drains):  # fail now, not after RUN_TIMEOUT
                seen = [(d["map_index"], d["hostname"], d["state"]) for d in drains]
                raise AssertionError(f"{run_id}'s drains ended before both workers ran one: {seen} {done}")
            return None

        victim = sorted(wait_for(drains_busy_on_both, RUN_TIMEOUT, "drains busy on both workers"))[0]
        container = container_of(victim)
        subprocess.run(["docker", "kill", container], check=True, capture_output=True)
        log.warning("killed worker container %s (%s) during run %s", container[:12], victim, run_id)
    finally:
        set_executor_latency(stack, 50)

    def all_succeeded() -> list[tuple] | None:
        """The outcome once every task succeeded; meanwhile, whenever no run is active, a run
        is started to drain what the reaper put back."""
        result = outcome(stack, "fault")
        if sum(n for status, _, n in result if status == "succeeded") == tasks:
            return result
        active = api(f"{dag_url(stack, 'task_batch')}/dagRuns?state=running&state=queued", token)
        if not active["total_entries"]:
            trigger(stack, token, "task_batch", DRAINS)
        return None

    result = wait_for(all_succeeded, RUN_TIMEOUT, "every task of the fault test to succeed")
    reclaimed = sum(n for _, attempts, n in result if attempts > 1)
    stats = api(f"{executor}/stats")
    # executions of the same input more than once: a task the killed drain had sent to the
    # executor whose answer it never stored runs again after the reap (at-least-once execution)
    repeated = sum(n - 1 for n in stats["by_digest"].values() if n > 1)
    log.warning(
        "fault test: %d tasks, outcome (status, claims, count) %s, %d claimed again, "
        "%d executions, %d repeated executions",
        tasks,
        result,
        reclaimed,
        stats["executions"],
        repeated,
    )
    # nothing lost: every task succeeded, each once (one row per task, one completion per row)
    assert rows(
        stack,
        "SELECT count(*), count(DISTINCT idempotency_key), count(finished_at) FROM execution_tasks "
        "WHERE idempotency_key LIKE 'fault-%%' AND status = 'succeeded'",
    ) == [(tasks, tasks, tasks)]
    # the killed worker held leases when it died: some tasks were claimed again after the reap
    assert reclaimed > 0, result
