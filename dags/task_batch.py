"""
### Task batch: drain the execution-task queue in parallel

**Owner:** platform team. **Schedule:** when execution tasks are queued (the
`execution_tasks_ready` Asset, whose watcher in the triggerer listens to the app database's
notifications: a run starts within seconds), or `$TASK_BATCH_SCHEDULE` (a cron expression or
preset; default every 5 minutes), whichever comes first; and on demand with the parameter form.

1. **measure_backlog**: ready tasks per type in `execution_tasks` (`app_db`), published as
   `QueueBacklog`, and the plan: K = min(`parallelism`, ceil(backlog / `batch_size`)) parallel
   drains (XCom `backlog`; its return value, the drains to map). **While an open FSAR report
   blocks execution** (`fsar_reports`, see `fsar_intake`) it ends skipped, naming the report in
   its log and XCom `blocked_by`, and so does the whole run: nothing is claimed, reaped or
   changed. The first run a report stops sends one *error* alert for it; later runs send none.
2. **drain** (mapped K times): each claims `batch_size` tasks at a time with leases
   (`FOR UPDATE SKIP LOCKED`) and runs their handlers on `concurrency` threads against the AI
   executor (`task_executor`), through the Redis cache (`redis_default`), until the queue is
   empty or `budget_seconds` is spent. Each claim checks the block again, in its own statement
   (a report filed during a drain stops its next claim; `stopped_by` "blocked"). One Airflow task
   instance runs many execution tasks. A drain that empties the queue stays **hot**: it waits on
   the queue's notifications and claims new tasks within milliseconds, and ends once none came
   for `idle_seconds` (`$TASK_BATCH_IDLE_SECONDS`, default 60; 0 ends at once).
3. **publish_metrics** (runs whatever the drains did): first reaps expired leases (tasks held by
   a worker that died go back to the queue), then publishes per task type the count, failures,
   p50/p95 duration and queue wait of the tasks finished in this run, into `task_batch_metrics`
   and CloudWatch; and the **bottleneck report** (avg/p50/p95 per type over
   `report_window_hours`, share of time queued, executing and answered from the cache) into
   `task_bottleneck_reports`, CloudWatch and this task's output.

Three stages, not five: each task instance costs seconds of start-up, so the fixed work before
and after the drains is one task each (the Airflow-overhead benchmark counts these seconds).

**Idempotent:** yes. A task completes only with its current lease token, so a retried or
overlapping drain never completes a task twice; metrics rows are upserted per run and type.

**Event-driven start:** while this DAG is unpaused, the triggerer holds one connection to the
app database (`application_name` `task_batch_trigger`) and starts a run when tasks are ready,
at most one event per few seconds; a run already going (`max_active_runs=1`) makes the next one
wait. With the triggerer down, the time schedule still drains the queue; restarted, the trigger
counts what is ready and starts a run at once. Pausing the DAG removes the trigger.

**Alerts:** a retry is a *warning*, a failure an *error* (email). A Redis outage sends one
*error* alert per drain and the tasks run uncached. Before revision 0002 is applied
(`execution_tasks.ai_model` missing) the run fails at once, without retries, naming the column.

**When it is skipped:** execution is blocked: `measure_backlog`'s log names the FSAR report.
Remediate what it proposes, then run `adversarial_audit` (its report closes when the gates it
names pass), or resolve the report with a reason (`fsar_intake`, `resolve_report`).

**When it fails:** read the failing task's log. *Schema behind*: run `db_migrate`. Failed or
dead execution tasks keep their error in `execution_tasks.error` (a malformed payload names its
field); fix the payload and enqueue it again. Clear the run to re-run it: it is safe.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule, dag, task

from execplatform.dag_defaults import TASK_QUEUE, default_args, number_param, schedule_for
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.drain_operator import DrainQueueOperator
from include.ids import TASK_TYPES


@dag(
    # from the environment, not a Variable: parsing must not query the metadata database
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(
            schedule_for("task_batch", os.environ.get("TASK_BATCH_SCHEDULE", "*/5 * * * *")), timezone="UTC"
        ),
        assets=TASK_QUEUE,
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    doc_md=__doc__,
    tags=["platform", "tasks"],
    render_template_as_native_obj=True,
    params={
        "task_types": Param(
            [],
            type="array",
            items={"type": "string", "enum": list(TASK_TYPES)},
            description="task types to run; empty for all",
        ),
        "batch_size": number_param(
            100, integer=True, minimum=1, maximum=5000, description="tasks claimed per batch"
        ),
        "parallelism": number_param(
            4, integer=True, minimum=1, maximum=32, description="parallel drains (mapped tasks)"
        ),
        "concurrency": number_param(
            16, integer=True, minimum=1, maximum=256, description="handler threads per drain"
        ),
        "budget_seconds": number_param(
            240, integer=True, minimum=1, maximum=1800, description="time budget of each drain"
        ),
        "idle_seconds": number_param(
            int(os.environ.get("TASK_BATCH_IDLE_SECONDS", "60")),
            integer=True,
            minimum=0,
            maximum=1800,
            description="once the queue is empty, how long a drain waits for new tasks before ending",
        ),
        "report_window_hours": number_param(
            24, minimum=0, exclusive_minimum=True, maximum=720, description="bottleneck report window"
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args(),
)
def task_batch():
    @task
    def measure_backlog(params=None, ti=None) -> list[int]:
        """The backlog (XCom `backlog`) and the drains to map (the return value); skipped, naming
        the report (XCom `blocked_by`), while an open FSAR report blocks execution."""
        from execplatform.steps.fsar_steps import stop_if_blocked
        from execplatform.steps.queue_steps import measure_backlog
        from include.execution.drain import plan_batches

        backlog = measure_backlog(params["task_types"])
        ti.xcom_push("backlog", backlog)
        stop_if_blocked(ti)
        ready = sum(b["ready"] for b in backlog.values())
        return list(range(plan_batches(ready, params["batch_size"], params["parallelism"])))

    drained = DrainQueueOperator.partial(
        task_id="drain",
        task_types="{{ params.task_types }}",
        batch_size="{{ params.batch_size }}",
        concurrency="{{ params.concurrency }}",
        budget_seconds="{{ params.budget_seconds }}",
        idle_seconds="{{ params.idle_seconds }}",
    ).expand(drain_index=measure_backlog())

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def publish_metrics(params=None, dag_run=None, ti=None) -> dict:
        """Runs whatever happened upstream: a dead drain's leases are reaped, its tasks counted;
        skipped while execution is blocked (reaping changes tasks' states too)."""
        from execplatform.steps.fsar_steps import stop_if_blocked
        from execplatform.steps.queue_steps import publish_task_metrics, reap_expired_leases

        stop_if_blocked()
        reaped = reap_expired_leases()
        planned = ti.xcom_pull(task_ids="measure_backlog") or []
        drains = ti.xcom_pull(task_ids="drain", map_indexes=planned) if planned else []
        drains = drains if isinstance(drains, list) else [drains]  # one drain: a single value
        return {
            "reaped": reaped,
            **publish_task_metrics(
                dag_run.run_id,
                dag_run.start_date,
                drains,
                window_hours=params["report_window_hours"],
            ),
        }

    drained >> publish_metrics()


task_batch()
