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
from tests.airflow_api import postgres_connection
from tests.project import DAGS_DIR, ROOT

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
