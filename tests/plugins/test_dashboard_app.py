"""The ops dashboard's panels from a real app database, rendered with every value escaped."""

from __future__ import annotations

import json
import os
from datetime import date
from decimal import Decimal

import psycopg2
import pytest


def test_panels_show_backups_migrations_queue_audits_alerts_and_escape_values(app_dsn):
    from execplatform.dashboard_app import render
    from include.migrations import all_revisions
    from include.observability.dashboard_panels import all_panels

    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO backups (database_name, status, verified_at, size_bytes, restore_seconds)
                VALUES ('app', 'verified', now() - interval '2 hours', 3 * 1024 * 1024, 12.34);
            INSERT INTO alerts (level, fingerprint, dag_id, task_id, message)
                VALUES ('critical', 'f', 'db_backup', 'verify_backup', '<script>alert(1)</script>');
            INSERT INTO execution_tasks (task_type, status) VALUES ('idea', 'queued'), ('idea', 'dead');
            INSERT INTO audit_runs (dag_run_id, status) VALUES ('manual__1', 'failed');
            INSERT INTO audit_findings (audit_run_id, gate, passed)
                SELECT id, 'queue_dead_without_error', false FROM audit_runs;
        """)
        panels = {p.title: p for p in all_panels(cur)}
    conn.close()
    assert panels["Backups"].rows[0][1:6] == (
        "verified",
        Decimal("2.0"),
        "3072 kB",
        Decimal("12.3"),
        True,
    )
    pending = ", ".join(r.revision for r in all_revisions()[1:])
    assert panels["Migrations"].note == f"applied: 0001; pending: {pending}"
    assert panels["Task queue"].rows == [("idea", 1, 0, 1, Decimal("0"))]
    assert panels["Task queue"].note.startswith("no bottleneck report yet")
    assert (
        panels["Audits"].rows[0][2] == "failed" and panels["Audits"].rows[0][5] == "queue_dead_without_error"
    )
    assert (
        panels["Leading indicators"].rows == []
        and "indicator_values does not exist" in panels["Leading indicators"].note
    )
    page = render(panels.values())
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_queue_panel_shows_the_newest_bottleneck_report(app_head_dsn):
    from include.observability.dashboard_panels import queue

    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO execution_tasks (task_type, status, ai_model) VALUES ('implementation', 'queued',
                'gpt-4.1');
            INSERT INTO task_bottleneck_reports (run_id, created_at, window_start, window_end, task_type,
                tasks,
                failures, avg_ms, p50_ms, p95_ms, queued_share, executing_share, cache_hit_share)
            VALUES ('old', now() - interval '1 hour', now() - interval '2 hours', now(), 'implementation',
                    10, 0, 900, 800, 1500, 0.1, 0.8, 0.1),
                   ('new', now(), now() - interval '1 hour', now(), 'implementation',
                    10, 0, 500, 400.04, 950.55, 0.2, 0.5, 0.3);
        """)
        panel = queue(cur)
    conn.close()
    assert panel.columns[-3:] == ["p50_ms", "p95_ms", "cache_hit_share"]
    assert panel.rows[0][0] == "implementation" and panel.rows[0][-3:] == (
        Decimal("400.0"),
        Decimal("950.6"),
        Decimal("0.300"),
    )


def test_model_offer_roi_and_indicator_panels_read_their_tables(app_head_dsn):
    from include.observability.dashboard_panels import PAGES, page_panels

    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO model_versions (model_name, version, status, metrics, artifact_uri, promoted_at)
                VALUES ('offer_model', 1, 'retired', '{"auc": 0.61}', 's3://m/offer_model/v0001/model.skops',
                    now()),
                       ('offer_model', 2, 'champion', '{"auc": 0.65432, "log_loss": 0.4, "brier": 0.1}',
                        's3://m/offer_model/v0002/model.skops', now());
            INSERT INTO users (id, email, segment, signup_channel, country) OVERRIDING SYSTEM VALUE
                VALUES (1, 'u@example.com', 'new', 'web', 'US');
            INSERT INTO offers (code, product, discount_pct) VALUES ('NEW10', 'pro', 10);
            INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id,
                stripe_coupon_id)
                SELECT max(v.id), 'new', o.id, 'prod_1', 'mv2-new-NEW10' FROM model_versions v, offers o
                    GROUP BY o.id;
            INSERT INTO offer_assignments (model_version_id, user_id, segment, offer_id, holdout, assigned_at)
                SELECT model_version_id, 1, 'new', offer_id, false, now() FROM offer_publications;
            INSERT INTO offer_roi (model_version_id, segment, treated_users, holdout_users,
                attributed_revenue_cents,
                                   discount_cost_cents, attributed_roi_cents, incremental_roi_cents,
                                       roi_gap_cents)
                SELECT model_version_id, 'new', 10, 2, 12345, 345, 12000, 2000, 10000 FROM offer_publications;
        """)
        models = page_panels(cur, "models")[0]
        published, roi, feedback = page_panels(cur, "offers")
        reports, audits, indicators = page_panels(cur, "audits")
        assert indicators.rows == []  # 0005 made the tables; no audit has filled them
        assert reports.rows == [] and reports.note.startswith("execution is not blocked")
        cur.execute("""
            INSERT INTO indicator_values (day, indicator, dimension, value, sample_size)
                VALUES ('2026-01-01', 'roi_gap', 'new', 1, 5), ('2026-01-02', 'roi_gap', 'new', 2.5, 5);
            INSERT INTO indicator_changes (indicator, dimension, day, direction, reference_mean, score)
                VALUES ('roi_gap', 'new', '2026-01-02', 'up', 1, 13);
        """)
        indicators = page_panels(cur, "audits")[2]
    conn.close()
    assert set(PAGES) == {"overview", "models", "offers", "audits"}
    assert models.note == "champion: offer_model v2"
    assert [(r[2], r[3], r[4]) for r in models.rows] == [
        (2, "champion", Decimal("0.6543")),
        (1, "retired", Decimal("0.6100")),
    ]
    assert [r[1:4] for r in published.rows] == [("new", "NEW10", "pro")] and published.rows[0][-1] == 1
    assert roi.rows[0][1:8] == (
        "new",
        10,
        2,
        Decimal("123.45"),
        Decimal("3.45"),
        Decimal("120.00"),
        Decimal("20.00"),
    )
    assert feedback.rows == []
    assert [r[:4] for r in indicators.rows] == [("roi_gap", "new", date(2026, 1, 2), Decimal("2.5000"))]
    assert indicators.rows[0][5:] == (date(2026, 1, 2), "up")


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"origin": "http://localhost:8080"}, True),
        ({"referer": "http://localhost:8080/ops/models"}, True),
        ({"origin": "http://attacker.example"}, False),
        ({"origin": "https://localhost:8080"}, False),
        ({"referer": "http://localhost:8081/ops/models"}, False),
        ({}, False),
    ],
)
def test_only_a_same_origin_request_may_trigger_an_action(headers, allowed):
    from execplatform.dashboard_app import same_origin

    assert same_origin(_request(headers), base_url="") is allowed


def _request(headers: dict[str, str], host: str = "localhost:8080"):
    from starlette.requests import Request

    name, _, port = host.partition(":")
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "server": (name, int(port)),
        "path": "/ops/models/rollback",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in [("host", host), *headers.items()]],
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"origin": "https://airflow.example.com"}, True),
        ({"referer": "https://airflow.example.com/ops/models"}, True),
        ({"origin": "http://airflow.example.com"}, False),
        ({"origin": "https://attacker.example"}, False),
    ],
)
def test_behind_a_tls_proxy_the_configured_base_url_is_this_dashboards_origin(headers, allowed, monkeypatch):
    """The proxy ends TLS and forwards plain http to the api-server: the browser's Origin is the
    deployment's base URL, not the address the request arrived at; every rollback was refused."""
    from execplatform.dashboard_app import same_origin

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    assert same_origin(_request(headers, host="10.0.0.7:8080")) is allowed


def test_the_models_page_shows_the_evaluation_and_the_plots_stored_in_the_database_behind_the_login(
    local_stack, app_head_dsn, monkeypatch
):
    """The plots are read from the database (`model_version_plots`), which outlives the object
    store: the local stack's moto forgets S3 on a restart."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient
    from psycopg2.extensions import parse_dsn

    from execplatform.dashboard_app import create_app
    from include.offers import registry
    from include.offers.plots import line_plot_png

    conn = json.loads(os.environ["AIRFLOW_CONN_APP_DB"])
    monkeypatch.setenv(
        "AIRFLOW_CONN_DASHBOARD_TEST",
        json.dumps({**conn, "schema": parse_dsn(app_head_dsn)["dbname"]}),
    )
    metrics = {"auc": 0.71, "log_loss": 0.3, "brier": 0.08, "calibration_error": 0.0123}
    roc = line_plot_png([0, 0.2, 1], [0, 0.7, 1], title="ROC", xlabel="FPR", ylabel="TPR")
    calibration = line_plot_png([0, 1], [0, 1], title="Calibration", xlabel="predicted", ylabel="observed")
    with psycopg2.connect(app_head_dsn) as db, db.cursor() as cur:
        cur.execute(
            """
            INSERT INTO model_versions (model_name, version, status, metrics)
                VALUES ('offer_redemption', 1, 'champion', %s), ('offer_redemption', 2, 'rejected', '{}')
                RETURNING id""",
            (json.dumps({**metrics, "policy_roi_cents_per_impression": 41.5}),),
        )
        plotted, unplotted = (row[0] for row in cur.fetchall())
        registry.store_plots(cur, plotted, {"roc": roc, "calibration": calibration})
    db.close()

    from airflow.api_fastapi.app import create_auth_manager

    create_auth_manager()  # as the api-server does: the dashboard asks it who may see what
    app = create_app(conn_id="dashboard_test")
    client = TestClient(app)
    assert client.get("/models").status_code == 401, "no login, no page"
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="ops", role="viewer")
    page = client.get("/models").text
    assert f"src='models/{plotted}/roc.png'" in page and f"src='models/{plotted}/calibration.png'" in page
    assert f"models/{unplotted}/" not in page, "a version without stored plots shows no broken image"
    assert "champion: offer_redemption v1" in page and "id='rollback'" in page and "method='post'" in page
    for column, value in (
        ("calibration_error", "0.0123"),
        ("policy_value_cents", "41.50"),
        ("auc", "0.7100"),
    ):
        assert f"<th>{column}</th>" in page and f"<td>{value}</td>" in page
    png = client.get(f"/models/{plotted}/roc.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content == roc
    assert client.get(f"/models/{plotted}/calibration.png").content == calibration
    assert client.get(f"/models/{unplotted}/roc.png").status_code == 404
    assert client.get(f"/models/{plotted}/model.png").status_code == 404, "only the plots are served"
    assert all(client.get(f"/{page}").status_code == 200 for page in ("", "offers", "audits"))


@pytest.fixture
def dashboard(local_stack, app_head_dsn, monkeypatch):
    """The dashboard app on a database of its own, deciding through the configured auth manager
    (the simple one: roles viewer, user, op, admin); `as_user(role)` logs a user in."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient
    from psycopg2.extensions import parse_dsn

    from execplatform.dashboard_app import create_app

    create_auth_manager()
    conn = json.loads(os.environ["AIRFLOW_CONN_APP_DB"])
    monkeypatch.setenv(
        "AIRFLOW_CONN_DASHBOARD_TEST",
        json.dumps({**conn, "schema": parse_dsn(app_head_dsn)["dbname"]}),
    )
    app = create_app(conn_id="dashboard_test")

    def as_user(role: str | None, name: str = "someone") -> TestClient:
        app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username=name, role=role)
        return TestClient(app)

    return as_user, app_head_dsn


PAGES = ("/", "/models", "/offers", "/audits")


def _denials(dsn: str) -> list[tuple]:
    from tests.pg import query

    return query(
        dsn,
        "SELECT actor, details->>'path', details->>'method' FROM security_events "
        "WHERE event_type = 'permission_denied' ORDER BY id",
    )


def test_a_logged_in_user_without_permission_sees_no_page_and_each_refusal_is_a_security_event(dashboard):
    """Revenue, ROI, backup and migration errors and alert text are not for any logged-in user: a
    user the auth manager grants nothing gets 403 on every page, plot and action."""
    as_user, dsn = dashboard
    nobody = as_user(None, "nobody")
    for path in (*PAGES, "/models/1/roc.png"):
        response = nobody.get(path)
        assert response.status_code == 403, path
        assert "not permitted: the Ops dashboard" in response.text
    origin = {"origin": "http://testserver"}
    assert nobody.post("/models/rollback", headers=origin).status_code == 403
    assert _denials(dsn) == [
        *[("nobody", path, "GET") for path in (*PAGES, "/models/1/roc.png")],
        ("nobody", "/models/rollback", "POST"),
    ]


def test_a_viewer_reads_the_pages_but_may_not_trigger_the_rollback(dashboard):
    as_user, dsn = dashboard
    viewer = as_user("viewer", "vera")
    assert [viewer.get(path).status_code for path in PAGES] == [200] * 4
    refused = viewer.post("/models/rollback", headers={"origin": "http://testserver"})
    assert refused.status_code == 403 and "POST runs of offer_model_retrain" in refused.text
    assert _denials(dsn) == [("vera", "/models/rollback", "POST")]


def test_a_rollback_must_name_the_champion_the_page_showed(dashboard):
    """The form carries the champion it rolls back; a request without one, or naming another than
    the champion now (the page was drawn before a promotion or another rollback), is refused
    before any run is triggered."""
    from tests.pg import query

    as_user, dsn = dashboard
    (champion,) = query(
        dsn,
        "INSERT INTO model_versions (model_name, version, status) VALUES ('offer_redemption', 3, 'champion')"
        " RETURNING id",
    )[0]
    op = as_user("admin", "olga")
    assert f"name='champion_id' value='{champion}'" in op.get("/models").text
    assert "Roll back the champion v3" in op.get("/models").text
    origin = {"origin": "http://testserver"}
    unnamed = op.post("/models/rollback", headers=origin)
    assert unnamed.status_code == 400 and "must name the champion" in unnamed.text
    stale = op.post("/models/rollback", headers=origin, data={"champion_id": str(champion + 1)})
    assert stale.status_code == 409
    assert f"the page showed champion id {champion + 1}, the champion is now v3 (id {champion})" in stale.text
    query(dsn, "UPDATE model_versions SET status = 'retired' WHERE id = %s", (champion,))
    gone = op.post("/models/rollback", headers=origin, data={"champion_id": str(champion)})
    assert gone.status_code == 409 and "the champion is now none" in gone.text
    assert "no champion to roll back" in op.get("/models").text


def test_alerts_show_only_for_the_dags_a_user_may_read(dashboard, monkeypatch):
    """A user of some DAGs only (an auth manager finer than the simple one's roles): the pages of
    the others are refused, and the overview's alerts leave theirs out."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    from tests.pg import query

    as_user, dsn = dashboard
    query(
        dsn,
        "INSERT INTO alerts (level, fingerprint, dag_id, task_id, message) VALUES "
        "('error', 'a', 'task_batch', 'drain', 'drain failed'), "
        "('error', 'b', 'roi_sync', 'compute_roi', 'revenue 12345 cents missing')",
    )
    real = SimpleAuthManager.is_authorized_dag

    def no_offers(self, *, method, user, access_entity=None, details=None):
        if details is not None and details.id in ("roi_sync", "offer_model_retrain", "offer_feedback"):
            return False
        return real(self, method=method, user=user, access_entity=access_entity, details=details)

    monkeypatch.setattr(SimpleAuthManager, "is_authorized_dag", no_offers)
    ops = as_user("viewer", "ops")
    page = ops.get("/")
    assert page.status_code == 200
    assert "drain failed" in page.text and "revenue 12345" not in page.text
    assert ops.get("/offers").status_code == 403 and ops.get("/audits").status_code == 200


def test_offer_decisions_are_served_behind_the_login_and_recorded_once(dashboard):
    from tests.offers_fixtures import synthetic_arms
    from tests.pg import query

    as_user, dsn = dashboard
    ids = synthetic_arms(dsn, ["ONE", "TWO"], users=2)
    viewer = as_user("viewer", "vera")
    shares = viewer.get("/offers/shares").json()
    assert set(shares["shares"]["vip"]) == {"ONE", "TWO"}
    assert sum(shares["shares"]["vip"].values()) == pytest.approx(1.0)
    first, again = viewer.get("/offers/decision/1"), viewer.get("/offers/decision/1")
    decision = first.json()
    assert first.status_code == 200 and decision == again.json()
    assert decision["offer_id"] in ids.values() and decision["policy_version"] == shares["policy_version"]
    assert decision["share"] == pytest.approx(shares["shares"]["vip"][decision["offer_code"]])
    assert query(dsn, "SELECT count(*) FROM offer_decisions") == [(1,)]  # asked twice, recorded once
    assert query(dsn, "SELECT count(*) FROM user_events WHERE event_type = 'impression'") == [(1,)]
    missing = viewer.get("/offers/decision/999")
    assert missing.status_code == 404 and "unknown user id" in missing.text
    page = viewer.get("/offers").text  # the arms with their model prior and share, live first
    assert "model_prior_mean" in page and "<td>ONE</td>" in page and "<td>TWO</td>" in page
    assert as_user(None, "nobody").get("/offers/decision/2").status_code == 403
    assert query(dsn, "SELECT count(*) FROM offer_decisions") == [(1,)]
