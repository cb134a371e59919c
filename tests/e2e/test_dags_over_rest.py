"""Every DAG triggered through the REST API with a conf (tests/e2e/rest_waves.py), followed to
its end on the shared stack and checked by its effect in the app database, moto, localstripe or
the SMTP sink. The runs start from the app database at head with its seeded backlog drained."""

from __future__ import annotations

import json

import psycopg2
import pytest

from devstack.smtp_sink import read_messages
from devstack.stack import BACKUP_BUCKET, aws_client, connections
from include.migrations import heads
from tests.airflow_api import api, dag_url, rows, token_for, xcom
from tests.e2e.rest_waves import REST_CONFS, REST_TASKS


@pytest.mark.parametrize("dag_id", list(REST_CONFS))
def test_each_dag_triggered_through_rest_with_a_conf_has_its_effect(ops_stack, rest_runs, dag_id):
    run = rest_runs[dag_id]
    assert (run["state"], run["run_type"], run["conf"]) == (
        "success",
        "manual",
        REST_CONFS[dag_id],
    ), run
    EFFECTS[dag_id](ops_stack, token_for(ops_stack.info.login), run)


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
    backup_id = xcom(stack, token, run, "dump_and_upload")["backup_id"]
    [(status, location)] = rows(stack, f"SELECT status, location FROM backups WHERE id = {int(backup_id)}")
    assert status == "verified"
    s3 = aws_client("s3", connections(stack.ports, stack.secret)["aws_default"])
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    assert bucket == BACKUP_BUCKET and s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["KeyCount"] > 0
    # the catalog entry beside the files says the same as the table
    entry = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}catalog.json")["Body"].read())
    assert (entry["id"], entry["status"]) == (backup_id, "verified")
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
    restored = xcom(stack, token, run, "restore")
    assert restored["database"].startswith(f"restore_{restored['backup_id']}_"), "a new, generated name"
    assert xcom(stack, token, run, "plan")["over_live"] is False
    # 'latest': no backup was verified after it and before the run started
    assert rows(
        stack,
        "SELECT count(*) FROM backups WHERE verified_at < %s AND verified_at > "
        "(SELECT verified_at FROM backups WHERE id = %s)",
        (run["start_date"], restored["backup_id"]),
    ) == [(0,)]
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    with psycopg2.connect(stack.app_dsn(restored["database"])) as conn, conn.cursor() as cur:
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
