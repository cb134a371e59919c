"""Every DAG triggered through the REST API with a conf, in two waves, on the shared stack
(tests/e2e/conftest.py runs them once a session; test_dags_over_rest.py checks their effects and
test_ui_in_browser.py looks at what they left)."""

from __future__ import annotations

import logging
import time

from tests.airflow_api import api, dag_url, set_paused, token_for, trigger, wait_for

# db_migrate's REST run with a conf is the approval story of test_migration_story.py
REST_CONFS: dict[str, dict] = {
    "platform_healthcheck": {},  # it has no params
    "db_backup": {"keep_daily": 1, "keep_weekly": 0},
    "task_batch": {"task_types": ["idea"], "batch_size": 5, "parallelism": 3, "concurrency": 2},
    # promote whatever it trains
    "offer_model_retrain": {
        "holdout_share": 0.25,
        "margin_auc": -1.0,
    },
    # only a backup id: no target, and (through the REST API) no logical date to name one from
    "db_restore": {"backup_id": "latest"},
    # a budget that never binds (its param's maximum, 5 times the dearest product's price): a
    # binding one would move shares to the cheapest arm, past the exploration floor
    "offer_feedback": {
        "min_exploration": 0.6,
        "budget_per_impression_cents": 10**5,
        "retrain_after_redemptions": 10**6,
    },
    "roi_sync": {},  # it has no params
    "adversarial_audit": {"expired_lease_minutes": 30},
}
# the second wave works on what the first made: a backup to restore, a champion to learn from
# and reconcile, and all of it to audit
WAVES = (
    ("platform_healthcheck", "db_backup", "task_batch", "offer_model_retrain"),
    ("db_restore", "offer_feedback", "roi_sync", "adversarial_audit"),
)
REST_TASKS = {"idea": 40, "implementation": 10}


def enqueue_rest_tasks(stack) -> None:
    from include.execution.task_queue import TaskQueue
    from tests.dags.test_task_batch_dag import VALID

    tasks = [
        {
            "task_type": t,
            "ai_model": "gpt-4.1",
            "idempotency_key": f"rest-{t}-{i}",
            "payload": {**VALID[t], "prompt": f"rest task {t} {i}"},
        }
        for t, n in REST_TASKS.items()
        for i in range(n)
    ]
    with TaskQueue(stack.app_dsn()) as queue:
        queue.enqueue_many(tasks)


def run_waves(stack) -> dict[str, dict]:
    """Each DAG of REST_CONFS triggered through the REST API with its conf, wave by wave, and
    followed to its end: the finished runs by DAG id."""
    token = token_for(stack.info.login)
    enqueue_rest_tasks(stack)
    finished: dict[str, dict] = {}
    for wave in WAVES:
        started = {dag_id: trigger(stack, token, dag_id, REST_CONFS[dag_id]) for dag_id in wave}
        for dag_id in wave:
            set_paused(stack, dag_id, False, token)  # task_batch and adversarial_audit were paused

        def wave_done(started=started) -> bool:
            for dag_id, run_id in started.items():
                if dag_id not in finished:
                    run = api(f"{dag_url(stack, dag_id)}/dagRuns/{run_id}", token)
                    if run["state"] in ("success", "failed"):
                        finished[dag_id] = run
            return all(d in finished for d in started)

        began = time.monotonic()
        wait_for(wave_done, 1800, f"the REST runs of {', '.join(wave)}")
        logging.getLogger(__name__).warning(
            "REST wave %s finished in %.0fs: %s",
            wave,
            time.monotonic() - began,
            {d: finished[d]["state"] for d in wave},
        )
    return finished
