"""OpenLineage from real runs (dag.test() in a process of its own, the events read from the file
transport the stack uses): db_backup's dump names the app database it read and the S3 folder it
wrote, its verification that folder; db_migrate's apply names the tables its revision changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from devstack.stack import BACKUP_BUCKET, openlineage_env
from include.migrations import upgrade
from tests import offers_fixtures
from tests.airflow_api import postgres_connection
from tests.project import DAGS_DIR, ROOT

offers_dsn, s3 = offers_fixtures.offers_dsn, offers_fixtures.s3  # the shared fixtures

RUNS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.db import initdb

initdb()
dags = DagBag(dag_folder=sys.argv[1]).dags
backup = dags["db_backup"].test(mark_success_pattern="^(apply_retention|publish_metrics)$")
migrate = dags["db_migrate"].test(
    run_conf={"target_revision": "0003", "skip_approval": True},
    mark_success_pattern="^(take_backup|verify_backup|rehearse)$",
)
states = {run.dag_id: {ti.task_id: ti.state for ti in run.get_task_instances()} for run in (backup, migrate)}
print(json.dumps(states))
"""


def _events(path, job: str) -> dict[str, dict]:
    """The task's events by type (START, COMPLETE...), as the transport wrote them."""
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return {e["eventType"]: e for e in events if e["job"]["name"] == job}


def _datasets(event: dict, side: str) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in event[side]]


def test_backup_and_migration_runs_report_what_they_read_and_wrote(app_dsn, local_stack, tmp_path):
    from psycopg2.extensions import parse_dsn

    upgrade(app_dsn, "0002")
    prefix = f"test-lineage/{uuid.uuid4().hex}"
    events = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        **openlineage_env(events),
        "AIRFLOW_CONN_APP_DB": postgres_connection(app_dsn),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "BACKUP_PREFIX": prefix,
        "PLATFORM_NON_PRODUCTION": "true",  # skip_approval is honoured
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", RUNS, str(DAGS_DIR)], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    states = json.loads(out.stdout.strip().splitlines()[-1])
    assert states["db_backup"]["dump_and_upload"] == states["db_backup"]["verify_backup"] == "success", states
    assert states["db_migrate"]["apply"] == "success", states

    db = parse_dsn(app_dsn)
    assert db["password"] and db["password"] not in events.read_text()  # names, never credentials
    app_database = (f"postgres://{db['host']}:{db['port']}", db["dbname"])
    dump = _events(events, "db_backup.dump_and_upload")
    assert _datasets(dump["START"], "inputs") == [app_database]
    assert _datasets(dump["START"], "outputs") == [(f"s3://{BACKUP_BUCKET}", prefix)]
    assert _datasets(dump["COMPLETE"], "inputs") == [app_database]
    [(bucket, folder)] = _datasets(dump["COMPLETE"], "outputs")
    assert bucket == f"s3://{BACKUP_BUCKET}" and folder.startswith(f"{prefix}/")
    from execplatform.steps.backup_steps import backup_catalog

    catalog = backup_catalog(root=prefix)
    assert catalog.s3.list_objects_v2(Bucket=BACKUP_BUCKET, Prefix=f"{folder}/")["KeyCount"] > 1
    verified = _events(events, "db_backup.verify_backup")
    assert _datasets(verified["COMPLETE"], "inputs") == [(bucket, folder)]

    apply = _events(events, "db_migrate.apply")
    assert set(apply) >= {"START", "COMPLETE"}
    assert sorted(_datasets(apply["COMPLETE"], "outputs")) == [
        (app_database[0], f"{db['dbname']}.public.{table}")
        for table in ("task_batch_metrics", "task_bottleneck_reports")
    ]


OFFER_AND_QUEUE_RUNS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.db import initdb

initdb()
dags = DagBag(dag_folder=sys.argv[1]).dags
runs = [
    dags["offer_model_retrain"].test(),
    dags["roi_sync"].test(),
    dags["task_batch"].test(run_conf={"parallelism": 1, "idle_seconds": 0, "budget_seconds": 120}),
]
print(json.dumps({run.dag_id: run.state for run in runs}))
"""


def test_offer_and_queue_runs_report_s3_objects_stripe_and_the_executor(offers_dsn, s3, tmp_path):
    """The offer retrain names the S3 objects it wrote and read and the Stripe objects it
    published; roi_sync the Stripe charges it read; a drain the queue table it read and settled
    and the executor it sent the tasks to.

    `dag.test()` runs every task in one process, where Airflow's hook lineage collector keeps what
    earlier tasks reported (a worker runs each task in a process of its own): so each dataset is
    checked at the first task that reports it."""
    from psycopg2.extensions import parse_dsn

    from devstack.stack import MODEL_BUCKET
    from execplatform.lineage import stripe_uri

    events = tmp_path / "openlineage.jsonl"
    env = {
        **os.environ,
        **openlineage_env(events),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PLATFORM_NON_PRODUCTION": "true",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
    }
    out = subprocess.run(
        [sys.executable, "-c", OFFER_AND_QUEUE_RUNS, str(DAGS_DIR)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "offer_model_retrain": "success",
        "roi_sync": "success",
        "task_batch": "success",
    }

    models = f"s3://{MODEL_BUCKET}"
    extract = _events(events, "offer_model_retrain.extract")["COMPLETE"]
    [(bucket, snapshot)] = [d for d in _datasets(extract, "outputs") if d[0] == models]
    assert bucket == models and s3.head_object(Bucket=MODEL_BUCKET, Key=snapshot)["ContentLength"] > 0
    train = _events(events, "offer_model_retrain.train")["COMPLETE"]
    assert (models, snapshot) in _datasets(train, "inputs")  # the model is fitted on that snapshot
    assert any(b == models and name != snapshot for b, name in _datasets(train, "outputs"))

    stripe = json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"])["host"]
    published = _datasets(_events(events, "offer_model_retrain.publish_offers")["COMPLETE"], "outputs")
    namespace = stripe_uri(stripe, "x").rsplit("/", 1)[0]
    assert {(namespace, "coupons"), (namespace, "products")} <= set(published)
    synced = _events(events, "roi_sync.sync_payments")["COMPLETE"]
    assert (namespace, "charges") in _datasets(synced, "inputs")

    db = parse_dsn(offers_dsn)
    queue = (f"postgres://{db['host']}:{db['port']}", f"{db['dbname']}.public.execution_tasks")
    executor = json.loads(os.environ["AIRFLOW_CONN_TASK_EXECUTOR"])["host"].rstrip("/")
    drains = [
        e for e in map(json.loads, events.read_text().splitlines()) if e["job"]["name"] == "task_batch.drain"
    ]
    completed = [e for e in drains if e["eventType"] == "COMPLETE"]
    assert completed, [e["eventType"] for e in drains]
    for event in completed:
        assert _datasets(event, "inputs") == [queue]
        assert _datasets(event, "outputs") == [queue, (executor, "tasks")]
