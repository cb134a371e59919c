"""The operator's stories on one running stack (seeded app database at the baseline), the way
users run them: `airflow dags test` with a conf, and REST-triggered runs approved through the API.

The module's tests run in order on one stack (the demo story of docs/architecture.md): task_batch fails on the
baseline schema and alerts; a broken revision is blocked by its rehearsal;
`dags test` rehearses and applies 0002; a revision that rewrites the table is rolled back by
the DAG; then, back at the baseline, a dry run rehearses and applies nothing, and a run
triggered through the API waits for approval, is approved, and applies 0002 under the real
scheduler, after which task_batch drains the queue. adversarial_audit passes on the
healthy stack and fails, naming the gate, once an invariant is broken by hand (then repaired).
Then every other DAG is triggered through the REST API with a conf (REST_CONFS), in two waves,
followed to its end and checked by its effect in the app database, moto, localstripe or the
SMTP sink. Then the ops dashboard shows what happened, and last the operator's browser
(headless Chromium, tests/browser.py) works on what all of that left: it logs in and sees the
project's DAGs, triggers db_restore from its trigger form into a new database and sees the run
succeed, opens each dashboard page and sees its panels filled (a backup, a champion with its
plots, published offers, ROI, feedback and audits, all made above), and presses the model
rollback button. A screenshot of every browser step lands in test-artifacts/browser/ (the path
is printed at the end of the module).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest

from devstack.smtp_sink import read_messages
from devstack.stack import BACKUP_BUCKET, LocalStack, connections
from execplatform.dag_defaults import OVERRIDES_VAR
from include.migrations import current, downgrade, heads
from tests.airflow_api import api, dag_url, exists, running, token_for, wait_for
from tests.browser import ARTIFACTS, chromium, ensure_chromium, shot, status_of, until

pytestmark = pytest.mark.airflow_stack

FIXTURES = Path(__file__).parent / "fixtures" / "migrations"
DAG_ID = "db_migrate"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # the DAGs these stories drive run only when a story says so (the celery suite runs every
    # schedule): 29 February has no slot between their start_date and now, so no scheduled run
    # is made before the fixture pauses them, nor when a story unpauses them
    overrides = {
        OVERRIDES_VAR: json.dumps(
            dict.fromkeys(("task_batch", "adversarial_audit", "offer_model_retrain"), "0 0 29 2 *")
        )
    }
    ensure_chromium()  # before the stack's minute of start-up, so a missing browser fails fast
    with running(
        LocalStack(tmp_path_factory.mktemp("migrate-stack"), api_port=0, extra_env=overrides)
    ) as stack:
        # `airflow dags test` and a scheduler acting on the same run can deadlock on its dag_run
        # row (seen once in Airflow 3.3.2): the scheduler leaves runs of paused DAGs alone
        for dag_id in (DAG_ID, "adversarial_audit", "task_batch"):
            set_paused(stack, dag_id, True)
        yield stack


def set_paused(stack, dag_id: str, paused: bool) -> None:
    token = token_for(stack.info.login)
    url = dag_url(stack, dag_id)
    wait_for(lambda: exists(url, token), 180, f"{dag_id} to be parsed")
    api(url, token, {"is_paused": paused}, method="PATCH")


def dags_test(
    stack, conf: dict, extra_versions: str | None = None, dag_id: str = DAG_ID
) -> subprocess.CompletedProcess:
    env = stack.env
    if extra_versions:
        env["MIGRATIONS_EXTRA_VERSIONS"] = str(FIXTURES / extra_versions)
    run = subprocess.run(
        ["airflow", "dags", "test", dag_id, "--conf", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = stack.folder / f"dags-test-{uuid.uuid4().hex[:6]}.log"  # kept with the stack for inspection
    log.write_text(run.stdout + run.stderr)
    logging.getLogger(__name__).warning(
        "airflow dags test %s %s: exit %s, output in %s", dag_id, conf, run.returncode, log
    )
    return run


def rows(stack, sql: str, params: tuple | None = None, dbname: str = "app") -> list[tuple]:
    with psycopg2.connect(stack.app_dsn(dbname)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        result = cur.fetchall()
    conn.close()
    return result


def has_column(stack, table: str, column: str) -> bool:
    return bool(
        rows(
            stack,
            "SELECT 1 FROM information_schema.columns "
            f"WHERE table_name = '{table}' AND column_name = '{column}'",
        )
    )


def last_run(stack) -> tuple:
    return rows(
        stack,
        "SELECT status, from_revision, backup_id, error FROM migration_runs ORDER BY id DESC LIMIT 1",
    )[0]


def test_before_the_migration_task_batch_fails_and_alerts(stack):
    queued = rows(stack, "SELECT count(*) FROM execution_tasks WHERE status = 'queued'")
    run = dags_test(stack, {}, dag_id="task_batch")
    assert run.returncode != 0
    assert rows(stack, "SELECT count(*) FROM execution_tasks WHERE status = 'queued'") == queued
    levels = rows(
        stack,
        "SELECT level FROM alerts WHERE dag_id = 'task_batch' "
        "AND message LIKE '%execution_tasks.ai_model does not exist%'",
    )
    assert levels and set(levels) == {("error",)}


def test_a_failing_rehearsal_blocks_production(stack):
    assert current(stack.app_dsn()) == "0001"
    run = dags_test(stack, {"target_revision": "0099", "skip_approval": True}, extra_versions="broken")
    assert run.returncode != 0
    status, start, backup_id, error = last_run(stack)
    assert (status, start) == ("failed", "0001") and "division by zero" in error
    # the rehearsal restored a verified backup (the gate's own, or db_backup's first scheduled run;
    # once this run failed, db_backup's retention may have deleted it)
    assert rows(stack, f"SELECT verified_at IS NOT NULL FROM backups WHERE id = {int(backup_id)}") == [
        (True,)
    ]
    assert current(stack.app_dsn()) == "0001"
    assert not has_column(stack, "execution_tasks", "ai_model") and not has_column(stack, "users", "nickname")


def test_dags_test_rehearses_then_applies_0002(stack):
    filenode = rows(stack, "SELECT pg_relation_filenode('execution_tasks')")
    run = dags_test(stack, {"target_revision": "0002", "skip_approval": True})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Callback failed" not in run.stdout + run.stderr  # the run-metrics callback works here too
    assert current(stack.app_dsn()) == "0002" and has_column(stack, "execution_tasks", "ai_model")
    assert rows(stack, "SELECT pg_relation_filenode('execution_tasks')") == filenode
    status, start, backup_id, _ = last_run(stack)
    assert (status, start) == ("completed", "0001")
    # a fresh verified backup existed: the gate used it rather than taking one
    assert rows(
        stack,
        f"SELECT b.verified_at < r.started_at FROM backups b, migration_runs r "
        f"WHERE b.id = {int(backup_id)} AND r.id = (SELECT max(id) FROM migration_runs)",
    ) == [(True,)]
    assert rows(stack, "SELECT count(*) FROM execution_tasks WHERE ai_model IS NOT NULL")[0][0] > 0
    assert rows(stack, "SELECT count(*) FROM security_events WHERE event_type = 'migration_applied'") == [
        (1,)
    ]


def test_a_revision_caught_after_apply_is_rolled_back_with_a_critical_alert(stack):
    run = dags_test(stack, {"target_revision": "0098", "skip_approval": True}, extra_versions="rewrite")
    assert run.returncode != 0
    assert last_run(stack)[:2] == ("rolled_back", "0002"), run.stdout[-6000:] + run.stderr[-6000:]
    assert current(stack.app_dsn()) == "0002"
    assert rows(
        stack,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'execution_tasks'::regclass AND attname = 'priority'",
    ) == [("smallint",)]
    assert rows(stack, "SELECT count(*) FROM security_events WHERE event_type = 'migration_rolled_back'") == [
        (1,)
    ]
    mails = [m for m in read_messages(stack.folder / "mail") if "rolled app_db back from 0098 to 0002" in m]
    assert mails, "the rollback's critical alert reached no mailbox"


def test_a_dry_run_rehearses_and_applies_nothing(stack):
    downgrade(stack.app_dsn(), "0001")
    run = dags_test(stack, {"dry_run": True})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert last_run(stack)[:2] == ("cancelled", "0001")
    assert current(stack.app_dsn()) == "0001" and not has_column(stack, "execution_tasks", "ai_model")


def test_a_run_triggered_in_the_ui_waits_for_approval_then_applies(stack):
    assert current(stack.app_dsn()) == "0001"
    set_paused(stack, DAG_ID, False)  # this run goes through the scheduler
    login = stack.info.login
    token = token_for(login)
    base = f"{login['url']}/api/v2/dags/{DAG_ID}"
    run_id = api(
        f"{base}/dagRuns",
        token,
        {
            "logical_date": None,
            "dag_run_id": f"ui_{uuid.uuid4().hex[:8]}",
            "conf": {"target_revision": heads()[0]},
        },
    )["dag_run_id"]
    approval = f"{base}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
    state = f"{base}/dagRuns/{run_id}/taskInstances/approve"
    wait_for(
        lambda: api(state, token)["state"] in ("deferred", "awaiting_input") and exists(approval, token),
        300,
        "the approval request",
    )
    assert current(stack.app_dsn()) == "0001"  # rehearsed, nothing applied before approval
    # PITFALLS: an answer that arrives before the scheduler has handled the task's pause makes
    # the resumed task's success report fail (404 on its task instance) and the task retry; on
    # a loaded 2-core machine 3 s was not always enough
    time.sleep(10)
    api(approval, token, {"chosen_options": ["Approve"], "params_input": {}}, method="PATCH")
    final = wait_for(
        lambda: (s := api(f"{base}/dagRuns/{run_id}", token)["state"]) in ("success", "failed") and s,
        300,
        f"run {run_id} to finish",
    )
    assert final == "success"
    assert current(stack.app_dsn()) == heads()[0] and has_column(stack, "execution_tasks", "ai_model")
    assert last_run(stack)[0] == "completed"


def test_after_the_migration_task_batch_drains_the_queue(stack):
    assert rows(stack, "SELECT count(*) FROM execution_tasks WHERE status = 'queued'")[0][0] > 0
    run = dags_test(stack, {}, dag_id="task_batch")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert rows(stack, "SELECT count(*) FROM execution_tasks WHERE status IN ('queued', 'running')") == [(0,)]
    assert rows(stack, "SELECT count(*) FROM task_bottleneck_reports")[0][0] >= 1


def test_the_audit_passes_on_a_healthy_stack_and_names_a_broken_invariant(stack):
    set_paused(stack, DAG_ID, True)
    run = dags_test(stack, {}, dag_id="adversarial_audit")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert rows(stack, "SELECT status FROM audit_runs ORDER BY id DESC LIMIT 1") == [("passed",)]
    # a dead task whose error was lost
    [(broken,)] = rows(
        stack,
        "INSERT INTO execution_tasks (task_type, status, ai_model) "
        "VALUES ('idea', 'dead', 'gpt-4.1') RETURNING id",
    )
    run = dags_test(stack, {}, dag_id="adversarial_audit")
    assert run.returncode != 0
    assert rows(
        stack,
        "SELECT r.status, f.gate FROM audit_runs r JOIN audit_findings f ON f.audit_run_id = r.id "
        "WHERE r.id = (SELECT max(id) FROM audit_runs) AND NOT f.passed",
    ) == [("failed", "queue_dead_without_error")]
    mails = [m for m in read_messages(stack.folder / "mail") if "failed gates: queue_dead_without_error" in m]
    assert mails, "no critical alert named the failed gate"
    # repaired: the REST runs audit again
    rows(stack, f"DELETE FROM execution_tasks WHERE id = {broken} RETURNING id")


# -- every DAG through the REST API, each with a conf, each checked by its effect --------------

# db_migrate's REST run with a conf is the approval story above
REST_CONFS: dict[str, dict] = {
    "platform_healthcheck": {},  # it has no params
    "db_backup": {"keep_daily": 1, "keep_weekly": 0},
    "task_batch": {"task_types": ["idea"], "batch_size": 5, "parallelism": 3, "concurrency": 2},
    # promote whatever it trains
    "offer_model_retrain": {
        "holdout_share": 0.25,
        "margin_auc": -1.0,
    },
    "db_restore": {"backup_id": "latest", "target_database": "restored_through_rest"},
    # a budget that never binds: it would move shares to the cheapest arm, past the exploration floor
    "offer_feedback": {
        "min_exploration": 0.6,
        "budget_per_impression_cents": 10**9,
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


def trigger(stack, token: str, dag_id: str, conf: dict) -> str:
    """A manual run with `conf`. Its run_after lies a day back: queued runs start in order of
    run_after, so it goes before any run queued meanwhile (an asset-triggered audit, say)."""
    early = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    body = {
        "logical_date": None,
        "run_after": early,
        "conf": conf,
        "dag_run_id": f"rest_{uuid.uuid4().hex[:8]}",
    }
    return api(f"{dag_url(stack, dag_id)}/dagRuns", token, body)["dag_run_id"]


def xcom(stack, token: str, run: dict, task_id: str, key: str = "return_value", map_index: int = -1):
    return api(
        f"{dag_url(stack, run['dag_id'])}/dagRuns/{run['dag_run_id']}/taskInstances/{task_id}/xcomEntries/"
        f"{key}?map_index={map_index}&deserialize=true",
        token,
    )["value"]


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


@pytest.fixture(scope="module")
def rest_runs(stack) -> dict[str, dict]:
    """Each DAG of REST_CONFS triggered through the REST API with its conf, wave by wave, and
    followed to its end: the finished runs by DAG id."""
    token = token_for(stack.info.login)
    enqueue_rest_tasks(stack)
    finished: dict[str, dict] = {}
    for wave in WAVES:
        started = {dag_id: trigger(stack, token, dag_id, REST_CONFS[dag_id]) for dag_id in wave}
        for dag_id in wave:
            set_paused(stack, dag_id, False)  # task_batch and adversarial_audit were paused for `dags test`

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


@pytest.mark.parametrize("dag_id", list(REST_CONFS))
def test_each_dag_triggered_through_rest_with_a_conf_has_its_effect(stack, rest_runs, dag_id):
    run = rest_runs[dag_id]
    assert (run["state"], run["run_type"], run["conf"]) == (
        "success",
        "manual",
        REST_CONFS[dag_id],
    ), run
    EFFECTS[dag_id](stack, token_for(stack.info.login), run)


def healthcheck_effect(stack, token: str, run: dict) -> None:
    assert rows(
        stack,
        "SELECT conn_id, ok FROM healthcheck_results WHERE run_id = %s ORDER BY conn_id",
        (run["dag_run_id"],),
    ) == [
        (c, True)
        for c in sorted(("app_db", "aws_default", "redis_default", "smtp_default", "stripe_default"))
    ]


def backup_effect(stack, token: str, run: dict) -> None:
    import boto3

    backup_id = xcom(stack, token, run, "dump_and_upload")["backup_id"]
    [(status, location)] = rows(stack, f"SELECT status, location FROM backups WHERE id = {int(backup_id)}")
    assert status == "verified"
    aws = connections(stack.ports, stack.secret)["aws_default"]
    s3 = boto3.client(
        "s3",
        endpoint_url=aws["extra"]["endpoint_url"],
        region_name=aws["extra"]["region_name"],
        aws_access_key_id=aws["login"],
        aws_secret_access_key=aws["password"],
    )
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    assert bucket == BACKUP_BUCKET and s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] > 0
    # keep_daily=1, keep_weekly=0: of the backups verified by the run's end, only its own is kept
    assert rows(
        stack,
        "SELECT id FROM backups WHERE status = 'verified' AND verified_at <= %s",
        (run["end_date"],),
    ) == [(backup_id,)]
    assert xcom(stack, token, run, "apply_retention"), "retention deleted none of the earlier backups"


def task_batch_effect(stack, token: str, run: dict) -> None:
    conf = REST_CONFS["task_batch"]
    assert set(xcom(stack, token, run, "measure_backlog", key="backlog")) == {"idea"}
    drains = api(
        f"{dag_url(stack, 'task_batch')}/dagRuns/{run['dag_run_id']}/taskInstances/drain/listMapped",
        token,
    )["task_instances"]
    assert len(drains) == conf["parallelism"] and {d["state"] for d in drains} == {"success"}
    by_type = [xcom(stack, token, run, "drain", map_index=d["map_index"])["by_type"] for d in drains]
    assert {t for b in by_type for t in b} == {"idea"}
    assert sum(b["idea"]["succeeded"] for b in by_type if "idea" in b) == REST_TASKS["idea"]
    # the other type waited: untouched until the run ended (task_batch's scheduled run may take it after)
    assert rows(
        stack,
        "SELECT count(*) FROM execution_tasks WHERE idempotency_key LIKE 'rest-implementation-%%' "
        "AND started_at <= %s",
        (run["end_date"],),
    ) == [(0,)]


def retrain_effect(stack, token: str, run: dict) -> None:
    import stripe

    version_id = xcom(stack, token, run, "train")["version_id"]
    assert xcom(stack, token, run, "promote_or_keep")["promoted"]
    share = REST_CONFS["offer_model_retrain"]["holdout_share"]
    for segment, holdout, users in rows(
        stack,
        "SELECT segment, count(*) FILTER (WHERE holdout), count(*) "
        f"FROM offer_assignments WHERE model_version_id = {int(version_id)} "
        "GROUP BY segment",
    ):
        # each user is held out with probability holdout_share: within 4 binomial deviations
        assert abs(holdout / users - share) <= 4 * (share * (1 - share) / users) ** 0.5, (
            segment,
            holdout,
            users,
        )
    coupons = rows(
        stack,
        f"SELECT stripe_coupon_id FROM offer_publications WHERE model_version_id = {int(version_id)}",
    )
    assert coupons
    conn = connections(stack.ports, stack.secret)["stripe_default"]
    client = stripe.StripeClient(api_key=conn["password"], base_addresses={"api": conn["host"]})
    for (coupon,) in coupons:
        assert client.coupons.retrieve(coupon).id == coupon


def restore_effect(stack, token: str, run: dict) -> None:
    restored = xcom(stack, token, run, "restore_backup")
    assert restored["target_database"] == REST_CONFS["db_restore"]["target_database"]
    # 'latest': no backup was verified after it and before the run started
    assert rows(
        stack,
        "SELECT count(*) FROM backups WHERE verified_at < %s AND verified_at > "
        "(SELECT verified_at FROM backups WHERE id = %s)",
        (run["start_date"], restored["backup_id"]),
    ) == [(0,)]
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    with psycopg2.connect(stack.app_dsn(restored["target_database"])) as conn, conn.cursor() as cur:
        cur.execute(tables)
        restored_tables = cur.fetchall()
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchall() == [(heads()[0],)]
    conn.close()
    assert restored_tables == rows(stack, tables)


def feedback_effect(stack, token: str, run: dict) -> None:
    explore = REST_CONFS["offer_feedback"]["min_exploration"]
    arms = dict(rows(stack, "SELECT segment, count(*) FROM offer_bandit_arms GROUP BY 1"))
    top = xcom(stack, token, run, "update_bandit")["top_offer_share"]
    assert arms and set(top) == set(arms)
    for segment, n in arms.items():  # every arm keeps explore / n: the best gets at most the rest
        assert top[segment] <= 1 - (n - 1) * explore / n + 1e-9, (segment, n, top[segment])
    signal = api(
        f"{dag_url(stack, 'offer_feedback')}/dagRuns/{run['dag_run_id']}/taskInstances/"
        "signal_enough_feedback",
        token,
    )
    assert signal["state"] == "skipped"  # fewer than retrain_after_redemptions: no retrain asked


def roi_effect(stack, token: str, run: dict) -> None:
    assert rows(
        stack,
        "SELECT count(*) = count(*) FILTER (WHERE r.computed_at >= %s), count(*) "
        "FROM offer_roi r JOIN model_versions v ON v.id = r.model_version_id "
        "WHERE v.status = 'champion'",
        (run["start_date"],),
    )[0] == (
        True,
        rows(
            stack,
            "SELECT count(DISTINCT p.segment) FROM offer_publications p "
            "JOIN model_versions v ON v.id = p.model_version_id WHERE v.status = 'champion'",
        )[0][0],
    )


def audit_effect(stack, token: str, run: dict) -> None:
    [(audit_run_id, status)] = rows(
        stack, "SELECT id, status FROM audit_runs WHERE dag_run_id = %s", (run["dag_run_id"],)
    )
    assert status == "passed"
    assert rows(
        stack,
        "SELECT threshold FROM audit_findings "
        f"WHERE audit_run_id = {audit_run_id} AND gate = 'queue_expired_leases'",
    ) == [("0 with a lease expired over 30 min",)]
    digest = xcom(stack, token, run, "daily_digest")
    assert "all gates passed" in digest["subject"] and digest["failed_gates"] == [] and digest["to"]
    assert any(f"Subject: {digest['subject']}" in m for m in read_messages(stack.folder / "mail"))


EFFECTS = {
    "platform_healthcheck": healthcheck_effect,
    "db_backup": backup_effect,
    "task_batch": task_batch_effect,
    "offer_model_retrain": retrain_effect,
    "db_restore": restore_effect,
    "offer_feedback": feedback_effect,
    "roi_sync": roi_effect,
    "adversarial_audit": audit_effect,
}


def test_the_ops_dashboard_is_behind_the_login_and_shows_what_happened(stack):
    login = stack.info.login
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{login['url']}/ops/", timeout=30)
    assert refused.value.code in (401, 403)
    token = token_for(login)

    def page(path: str) -> str:
        request = urllib.request.Request(
            f"{login['url']}/ops/{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    overview, audits = page(""), page("audits")
    for panel in ("Backups", "Migrations", "Recent alerts"):
        assert f"<h2>{panel}</h2>" in overview
    assert "<h2>Audits</h2>" in audits
    assert "rolled_back" in overview and "queue_dead_without_error" in audits  # from the stories above
    plugins = api(f"{login['url']}/api/v2/plugins", token)["plugins"]
    assert any(p["name"] == "ops_dashboard" for p in plugins)


# -- the operator's browser, on what the stories and the REST runs above left -----------------
# Every browser test asks for rest_runs: the dashboard has something to show only after them.


@pytest.fixture(scope="module")
def shots(request):
    """Screenshots, numbered in the order taken; the folder is printed after the module."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    taken: list[Path] = []
    yield taken
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"\nbrowser screenshots ({len(taken)}): {ARTIFACTS}")


@pytest.fixture(scope="module")
def browser(shots):
    driver = chromium()
    yield driver
    driver.quit()


def dag_runs(stack, dag_id: str) -> list[dict]:
    try:
        return api(f"{dag_url(stack, dag_id)}/dagRuns?order_by=-run_after", token_for(stack.info.login))[
            "dag_runs"
        ]
    except urllib.error.HTTPError:  # not parsed yet
        return []


def wait_for_success(stack, dag_id: str, timeout: float = 1800) -> dict:
    """A successful run of `dag_id`; fails fast when every run so far has failed."""

    def succeeded():
        runs = dag_runs(stack, dag_id)
        if runs and all(r["state"] == "failed" for r in runs):
            raise AssertionError(f"every run of {dag_id} failed: {[r['dag_run_id'] for r in runs]}")
        return next((r for r in runs if r["state"] == "success"), None)

    return wait_for(succeeded, timeout, f"a successful run of {dag_id}")


def test_login_in_the_browser_shows_the_project_dags(stack, rest_runs, browser, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    login = stack.info.login
    browser.get(f"{login['url']}/")
    until(browser, EC.presence_of_element_located((By.NAME, "username")), "the login form").send_keys(
        login["username"]
    )
    browser.find_element(By.NAME, "password").send_keys(login["password"])
    shot(browser, shots, "login")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    until(browser, lambda b: "/auth/login" not in b.current_url, "the login to go through")

    browser.get(f"{login['url']}/dags")
    project_dags = (
        "platform_healthcheck",
        "db_backup",
        "db_restore",
        "db_migrate",
        "task_batch",
        "adversarial_audit",
        "offer_model_retrain",
        "offer_feedback",
        "roi_sync",
    )
    for dag_id in project_dags:
        until(
            browser,
            EC.presence_of_element_located((By.LINK_TEXT, dag_id)),
            f"{dag_id} in the DAG list",
        )
    shot(browser, shots, "dag-list")


def test_db_restore_triggered_from_its_form_restores_into_a_new_database(stack, rest_runs, browser, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    wait_for_success(stack, "db_backup")
    login = stack.info.login
    target = f"restore_browser_{uuid.uuid4().hex[:8]}"
    earlier = {r["dag_run_id"] for r in dag_runs(stack, "db_restore")}  # the REST run above
    browser.get(f"{login['url']}/dags/db_restore")
    until(
        browser,
        EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]")),
        "the Trigger button",
    ).click()
    field = until(
        browser,
        EC.visibility_of_element_located((By.ID, "element_target_database")),
        "the trigger form's target_database field",
    )
    field.send_keys(target)
    shot(browser, shots, "db_restore-trigger-form")
    submit = browser.find_element(By.XPATH, "//*[@role='dialog']//button[normalize-space()='Trigger']")
    until(browser, lambda b: submit.is_enabled(), "the form to validate")
    submit.click()

    def new_runs() -> list[dict]:
        return [r for r in dag_runs(stack, "db_restore") if r["dag_run_id"] not in earlier]

    [run] = wait_for(new_runs, 60, "the triggered run")
    assert run["conf"]["target_database"] == target
    browser.get(f"{login['url']}/dags/db_restore/runs/{run['dag_run_id']}")
    # the page has a state badge for the run and one per task: all Success, none Running or Queued
    badges = "//*[contains(@class, 'badge') and normalize-space()='{}']"
    until(
        browser,
        lambda b: (
            b.find_elements(By.XPATH, badges.format("Success"))
            and not any(b.find_elements(By.XPATH, badges.format(s)) for s in ("Running", "Queued", "Failed"))
        ),
        "the run to show success",
        timeout=1800,
    )
    shot(browser, shots, "db_restore-run-success")
    assert (
        api(f"{dag_url(stack, 'db_restore')}/dagRuns/{run['dag_run_id']}", token_for(login))["state"]
        == "success"
    )

    public_tables = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    restored = {r[0] for r in rows(stack, public_tables, dbname=target)}
    assert {"execution_tasks", "backups", "model_versions", "offer_roi"} <= restored
    assert rows(stack, "SELECT count(*) FROM execution_tasks", dbname=target)[0][0] > 0


DASHBOARD = {  # page -> the panels that must show rows once the runs above have succeeded
    ".": ("Backups", "Task queue"),
    "models": ("Model versions",),
    "offers": ("Published offers", "Offer ROI", "Offer feedback"),
    "audits": ("Audits",),
}


def test_each_dashboard_page_in_the_browser_renders_its_panels_with_data(stack, rest_runs, browser, shots):
    from selenium.webdriver.common.by import By

    # ROI is computed for the offers the champion published: the second wave's roi_sync ran
    # after the first wave's retrain
    for dag_id in ("offer_model_retrain", "adversarial_audit", "offer_feedback", "roi_sync"):
        wait_for_success(stack, dag_id)
    login = stack.info.login
    browser.get(f"{login['url']}/")  # the UI's navigation has the dashboard's entry
    until(
        browser,
        lambda b: b.find_elements(By.XPATH, "//a[contains(@href, 'ops')] | //*[@title='Ops dashboard']"),
        "the Ops dashboard entry in the UI's navigation",
    )
    for page, filled in DASHBOARD.items():
        browser.get(f"{login['url']}/ops/{page}")
        panels = {
            e.get_attribute("data-panel"): int(e.get_attribute("data-rows"))
            for e in browser.find_elements(By.CSS_SELECTOR, "section.panel")
        }
        name = "overview" if page == "." else page
        shot(browser, shots, f"dashboard-{name}")
        empty = [title for title in filled if not panels.get(title)]
        assert not empty, f"dashboard page {name}: panels without rows {empty} (all: {panels})"
        if name == "models":
            images = browser.find_elements(By.CSS_SELECTOR, "img[data-plot]")
            assert {i.get_attribute("data-plot") for i in images} == {"roc", "calibration"}
            assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images), (
                "every stored plot loads from S3"
            )
        if name == "audits":
            assert "Leading indicators" in panels


def test_the_rollback_button_triggers_offer_model_retrain_with_rollback(stack, rest_runs, browser, shots):
    from selenium.webdriver.common.by import By

    login = stack.info.login
    before = {r["dag_run_id"] for r in dag_runs(stack, "offer_model_retrain")}
    browser.get(f"{login['url']}/ops/models")
    browser.find_element(By.ID, "rollback").click()
    flash = until(browser, lambda b: b.find_elements(By.ID, "flash"), "the dashboard to confirm the trigger")[
        0
    ]
    shot(browser, shots, "dashboard-models-rollback-triggered")
    new = [r for r in dag_runs(stack, "offer_model_retrain") if r["dag_run_id"] not in before]
    assert len(new) == 1 and new[0]["conf"] == {"rollback": True}, new
    assert new[0]["dag_run_id"] in flash.text
    assert new[0]["triggering_user_name"] == login["username"]


def test_the_rollback_action_needs_a_login_and_this_origin(stack):
    login = stack.info.login
    url = f"{login['url']}/ops/models/rollback"
    before = len(dag_runs(stack, "offer_model_retrain"))

    def post(headers: dict[str, str]) -> int:
        return status_of(urllib.request.Request(url, data=b"", method="POST", headers=headers))

    bearer = {"Authorization": f"Bearer {token_for(login)}"}
    assert post({"Origin": login["url"]}) in (401, 403), "no login"
    assert post({**bearer, "Origin": "http://attacker.example"}) == 403, "another site's page"
    assert post(bearer) == 403, "no Origin or Referer at all"
    assert len(dag_runs(stack, "offer_model_retrain")) == before, "no refused request triggered a run"
    for page in ("", "models", "offers", "audits"):
        assert status_of(urllib.request.Request(f"{login['url']}/ops/{page}")) in (401, 403), (
            f"/ops/{page} without a login"
        )
