"""What the running stack's Airflow reports about itself, read where the stack keeps it: its own
metrics over OpenTelemetry at the stack's OTLP receiver, and OpenLineage events in its file."""

from __future__ import annotations

import json
from pathlib import Path

from devstack.otlp_sink import read_metric_names
from tests.airflow_api import dag_runs, wait_for, wait_for_success

# scheduler health, pool usage and the executor's queue
SCHEDULER_METRICS = {
    "airflow.scheduler_heartbeat",
    "airflow.scheduler.scheduler_loop_duration",
    "airflow.pool.open_slots",
    "airflow.executor.queued_tasks",
}
# each task instance's outcome, run time, and time from scheduled to started (its queue time)
TASK_METRICS = {"airflow.ti.finish", "airflow.task.duration", "airflow.task.scheduled_duration"}


def test_the_scheduler_and_tasks_export_their_metrics_to_the_stacks_receiver(ops_stack):
    wait_for_success(ops_stack, "platform_healthcheck", 900)  # its scheduled run, made at start
    received = Path(ops_stack.folder) / "otlp"
    wanted = SCHEDULER_METRICS | TASK_METRICS
    # components export every 5 s (AIRFLOW__METRICS__OTEL_INTERVAL_MILLISECONDS)
    wait_for(lambda: wanted <= read_metric_names(received), 120, f"{sorted(wanted)} at the OTLP receiver")


def test_a_scheduled_backup_leaves_its_lineage_in_the_stacks_file(ops_stack):
    wait_for(
        lambda: (
            (runs := dag_runs(ops_stack, "db_backup"))
            and all(r["state"] in ("success", "failed") for r in runs)
        ),
        900,
        "db_backup's scheduled run to end",
    )
    events = [
        json.loads(line) for line in (Path(ops_stack.folder) / "openlineage.jsonl").read_text().splitlines()
    ]
    dump = {e["eventType"]: e for e in events if e["job"]["name"] == "db_backup.dump_and_upload"}
    assert {"START"} <= set(dump)
    assert [d["name"] for d in dump["START"]["inputs"]] == ["app"]
    assert [d["namespace"] for d in dump["START"]["outputs"]] == ["s3://execplatform-backups"]
