"""The daily digest: gathered from the app database, plotted with change points marked, and mailed
with the plots attached through smtp_default to the real SMTP sink."""

from __future__ import annotations

import email
import email.policy
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from include.audit import indicators
from tests.airflow_api import postgres_connection
from tests.offers_fixtures import cursor


@pytest.fixture
def app_db(app_head_dsn, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    return app_head_dsn


def _mails_with(local_stack, text: str) -> list[email.message.EmailMessage]:
    found = []
    for path in sorted((local_stack.folder / "mail").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if text in str(message["Subject"]):
            found.append(message)
    return found


def _red_pixels(png: bytes) -> int:
    import io

    import matplotlib.image

    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    return int(((image[..., 0] > 0.9) & (image[..., 1] < 0.2) & (image[..., 2] < 0.2)).sum())


def test_digest_reports_gates_trend_changes_roi_and_backups_with_plots(app_db, local_stack, tmp_path):
    from execplatform.steps.digest_steps import send_digest

    today = datetime.now(UTC).date()
    rng = random.Random(5)
    with cursor(app_db) as cur:
        cur.execute("INSERT INTO audit_runs (dag_run_id) VALUES ('digest-test') RETURNING id")
        audit_run_id = cur.fetchone()[0]
        for gate, passed in (("queue_valid_status", True), ("backup_fresh_and_restored", False)):
            cur.execute(
                "INSERT INTO audit_findings (audit_run_id, gate, passed, observed, threshold) "
                "VALUES (%s, %s, %s, '3', '0')",
                (audit_run_id, gate, passed),
            )
        cur.execute(
            "INSERT INTO backups (database_name, status, verified_at, restore_seconds) "
            "VALUES ('app', 'verified', now() - interval '30 hours', 12.5)"
        )
        cur.execute(
            "INSERT INTO model_versions (model_name, version) VALUES ('offer_redemption', 1) RETURNING id"
        )
        version = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO users (email, segment, signup_channel, country) VALUES ('u@x', 'vip', 'web', 'US') "
            "RETURNING id"
        )
        cur.execute(
            "INSERT INTO offer_assignments (model_version_id, user_id, segment, holdout, assigned_at) "
            "VALUES (%s, %s, 'vip', true, now())",
            (version, cur.fetchone()[0]),
        )
        cur.execute(
            "INSERT INTO offer_roi (model_version_id, segment, treated_users, holdout_users, "
            "attributed_revenue_cents, discount_cost_cents, attributed_roi_cents, incremental_roi_cents) "
            "VALUES (%s, 'vip', 10, 10, 500000, 50000, 450000, 120000)",
            (version,),
        )
        start = today - timedelta(days=59)
        for i in range(60):
            day = start + timedelta(days=i)
            step = 0.05 if i >= 55 else 0.02
            indicators.store(
                cur,
                day,
                [
                    indicators.Value("task_failure_rate", step + rng.gauss(0, 0.003)),
                    indicators.Value("cache_hit_ratio", 0.8 + rng.gauss(0, 0.01)),
                ],
            )
        [change] = indicators.detect_changes(cur)
    assert change.indicator == "task_failure_rate"

    tag = uuid.uuid4().hex[:8]
    result = send_digest(
        "app_db", today, audit_run_id, to=f"ceo-{tag}@example.com, cfo@example.com", folder=tmp_path
    )
    assert result["failed_gates"] == ["backup_fresh_and_restored"] and result["plots"] == 2

    [mail] = [
        m for m in _mails_with(local_stack, "Platform audit") if f"ceo-{tag}@example.com" in str(m["To"])
    ]
    assert "1 gate(s) FAILED, 1 trend change(s)" in str(mail["Subject"])
    assert "cfo@example.com" in str(mail["To"])
    body = next(p for p in mail.walk() if p.get_content_type() == "text/html").get_content()
    assert "<b>FAILED</b>" in body and "task_failure_rate: up on" in body
    assert "$4,500.00" in body and "$1,200.00" in body  # attributed and incremental ROI
    assert "newest verified backup is 30.0 h old" in body
    attachments = {p.get_filename(): p.get_content() for p in mail.iter_attachments()}
    assert set(attachments) == {"task_failure_rate.png", "cache_hit_ratio.png"}
    assert all(png.startswith(b"\x89PNG") for png in attachments.values())
    # the change point is drawn in red on its series only
    assert _red_pixels(attachments["task_failure_rate.png"]) > 50
    assert _red_pixels(attachments["cache_hit_ratio.png"]) == 0


def test_recipients_come_from_the_param_then_the_variable_then_the_environment(monkeypatch):
    from execplatform.steps.digest_steps import recipients

    monkeypatch.setenv("AUDIT_DIGEST_TO", "env@example.com")
    assert recipients() == ["env@example.com"]
    monkeypatch.setenv("AIRFLOW_VAR_AUDIT_DIGEST_RECIPIENTS", "board@example.com, cto@example.com")
    assert recipients() == ["board@example.com", "cto@example.com"]
    assert recipients(["param@example.com"]) == ["param@example.com"]


def test_the_verdict_names_a_failed_step_gate_and_a_step_that_did_not_finish(app_db):
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.audit_steps import report

    with cursor(app_db) as cur:
        cur.execute("INSERT INTO audit_runs (dag_run_id) VALUES ('verdict-test') RETURNING id")
        audit_run_id = cur.fetchone()[0]
        for gate, passed in (
            ("queue_valid_status", True),
            ("adversarial_probes", False),
            ("alarm_delivery", True),
        ):
            cur.execute(
                "INSERT INTO audit_findings (audit_run_id, gate, passed) VALUES (%s, %s, %s)",
                (audit_run_id, gate, passed),
            )
    gates = ["queue_valid_status", "adversarial_probes", "alarm_delivery"]
    with pytest.raises(AirflowFailException) as failed:
        report("app_db", audit_run_id, gates, ["leading_indicators"])
    assert str(failed.value).startswith(
        f"adversarial audit {audit_run_id} failed gates: adversarial_probes; "
        "steps that did not finish: leading_indicators (FSAR report fsar_"
    )
    assert str(failed.value).endswith("severity 70; execution is blocked until it closes)")  # 60 + 10
    with cursor(app_db) as cur:
        cur.execute("UPDATE audit_findings SET passed = true WHERE audit_run_id = %s", (audit_run_id,))
    with pytest.raises(
        AirflowFailException,
        match=r"did not finish: leading_indicators \(FSAR report fsar_[0-9a-f-]{36}, severity 10\)$",
    ):
        report("app_db", audit_run_id, gates, ["leading_indicators"])
    assert report("app_db", audit_run_id, gates, [])["gates"] == 3
    with cursor(app_db) as cur:
        cur.execute("SELECT status FROM audit_runs WHERE id = %s", (audit_run_id,))
        assert cur.fetchone() == ("passed",)
