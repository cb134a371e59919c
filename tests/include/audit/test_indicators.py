"""Leading indicators on the real app database: absent when their input is, upserted once, and a
trend change alerted through the platform's alert path while every value is inside its limits."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta

import psycopg2
import psycopg2.extras
import pytest

from include.audit import indicators
from tests import offers_fixtures
from tests.airflow_api import postgres_connection
from tests.offers_fixtures import cursor

offers_dsn, s3 = offers_fixtures.offers_dsn, offers_fixtures.s3  # the shared fixtures


def test_an_input_that_does_not_exist_is_absent_not_zero(app_head_dsn):
    today = datetime.now(UTC).date()
    with cursor(app_head_dsn) as cur:
        assert indicators.compute(cur, today) == []
        cur.execute(
            "INSERT INTO execution_tasks (task_type, status, finished_at, duration_ms, error, ai_model) "
            "VALUES ('idea', 'dead', now(), 1200, 'boom', 'gpt-4.1')"
        )
        values = indicators.compute(cur, today)
    assert {(v.indicator, v.dimension, v.value, v.sample_size) for v in values} == {
        ("task_failure_rate", "", 1.0, 1),
        ("task_p95_duration_ms", "idea", 1200.0, 1),
    }


def test_seeded_day_matches_an_independent_count_and_a_rerun_changes_nothing(offers_dsn):
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT max(finished_at)::date FROM execution_tasks")
        day = cur.fetchone()[0]
        values = {(v.indicator, v.dimension): v for v in indicators.compute(cur, day)}
        stored = indicators.store(cur, day, values.values())
        cur.execute("SELECT status FROM execution_tasks WHERE finished_at::date = %s", (day,))
        statuses = [s for (s,) in cur.fetchall() if s in ("succeeded", "failed", "dead")]
    assert values[("task_failure_rate", "")].value == pytest.approx(
        sum(s != "succeeded" for s in statuses) / len(statuses)
    )
    assert values[("task_failure_rate", "")].sample_size == len(statuses)
    assert {"task_p95_duration_ms", "queue_age_p95_s", "trust_tasks_unconfirmed"} <= {k[0] for k in values}
    assert stored == len(values)
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT computed_at FROM indicator_values")
        before = sorted(cur.fetchall())
        assert indicators.store(cur, day, indicators.compute(cur, day)) == 0
        cur.execute("SELECT computed_at FROM indicator_values")
        assert sorted(cur.fetchall()) == before


def test_a_succeeded_task_with_a_malformed_result_or_payload_is_not_confirmed(app_head_dsn):
    good = {"prompt": "p", "repo": "r", "inputs": {"count": 3}}
    with cursor(app_head_dsn) as cur:
        for payload, result in (
            (good, '{"output": {"x": 1}}'),
            (good, "null"),
            ({"prompt": 5}, '{"o": 1}'),
            (good, "[]"),
        ):
            cur.execute(
                "INSERT INTO execution_tasks (task_type, status, finished_at, payload, result, ai_model) "
                "VALUES ('idea', 'succeeded', now(), %s, %s, 'gpt-4.1')",
                (psycopg2.extras.Json(payload), result),
            )
        [value] = indicators.trust_tasks_unconfirmed(cur, datetime.now(UTC).date())
    assert (value.value, value.sample_size) == (0.75, 4)


def _write_series(cur, name: str, values: list[float], start: date) -> None:
    for i, value in enumerate(values):
        indicators.store(cur, start + timedelta(days=i), [indicators.Value(name, value, "x")])


def test_a_step_inside_the_threshold_is_alerted_once_through_the_alert_path(offers_dsn, local_stack):
    """A failure rate moving from 2% to 4% stays under any sane threshold (say 10%), yet its trend
    changed: the detector signals it, the alert path records it, and a re-run alerts nothing."""
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier
    from execplatform.steps.indicator_steps import record_indicators

    rng = random.Random(3)
    name = f"synthetic_rate_{uuid.uuid4().hex[:6]}"
    step_day = 40
    values = [0.02 + rng.gauss(0, 0.003) for _ in range(step_day)] + [
        0.04 + rng.gauss(0, 0.003) for _ in range(20)
    ]
    assert max(values) < 0.10
    start = datetime.now(UTC).date() - timedelta(days=len(values))
    with cursor(offers_dsn) as cur:
        _write_series(cur, name, values, start)

    sent = []

    def alert(level: str, title: str) -> None:
        sent.append(title)
        PlatformAlertNotifier(level, title).notify({"run_id": "test"})

    result = record_indicators("app_db", datetime.now(UTC).date(), alert=alert)
    ours = [t for t in result["trend_changes"] if name in t]
    assert len(ours) == 1 and ": up from a mean of 0.01" in ours[0]
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT day, direction FROM indicator_changes WHERE indicator = %s", (name,))
        [(day, direction)] = cur.fetchall()
        cur.execute("SELECT level FROM alerts WHERE message LIKE %s", (f"%{name}%",))
        assert cur.fetchall() == [("warning",)]
    assert direction == "up" and 0 <= (day - (start + timedelta(days=step_day))).days <= 13

    again = record_indicators("app_db", datetime.now(UTC).date(), alert=alert)
    assert not [t for t in again["trend_changes"] if name in t]
    assert sum(name in t for t in sent) == 1


def test_stable_series_raise_no_change(app_head_dsn):
    rng = random.Random(11)
    with cursor(app_head_dsn) as cur:
        _write_series(cur, "stable", [100 + rng.gauss(0, 5) for _ in range(90)], date(2026, 1, 1))
        assert indicators.detect_changes(cur) == []


def test_the_champion_is_scored_on_the_days_impressions_and_each_feature_gets_a_psi(
    offers_dsn, s3, local_stack
):
    from devstack.stack import MODEL_BUCKET
    from execplatform.steps.indicator_steps import record_indicators
    from include.offers import jobs, registry
    from include.offers.model import FEATURES

    uri = offers_fixtures.snapshot_uri("indicators")
    with cursor(offers_dsn) as cur:
        jobs.extract(cur, s3, uri, datetime(2026, 7, 1, tzinfo=UTC))
    with cursor(offers_dsn) as cur:
        trained = jobs.train(cur, s3, snapshot_uri=uri, bucket=MODEL_BUCKET, valid_days=21)
    with cursor(offers_dsn) as cur:
        jobs.evaluate(
            cur, s3, snapshot_uri=uri, version_id=trained["version_id"], valid_from=trained["valid_from"]
        )
        registry.promote(cur, "offer_redemption", trained["version_id"])
        cur.execute(
            "SELECT occurred_at::date FROM user_events WHERE event_type = 'impression' "
            "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        )
        busiest = cur.fetchone()[0]
    result = record_indicators("app_db", busiest, alert=lambda level, title: None)
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT indicator, dimension, value, threshold FROM indicator_values WHERE day = %s",
            (busiest,),
        )
        rows = {(i, d): (v, t) for i, d, v, t in cur.fetchall()}
    assert 0.5 < rows[("model_auc", "")][0] <= 1 and 0 <= rows[("model_calibration_error", "")][0] < 0.5
    assert {d for i, d in rows if i == "feature_psi"} == set(FEATURES)
    assert all(t is not None and v >= 0 for (i, _), (v, t) in rows.items() if i.endswith("_psi"))
    assert ("prediction_psi", "") in rows and result["values"] == len(rows)


def test_before_revision_0005_the_indicator_step_skips_and_the_digest_still_gathers(app_dsn, monkeypatch):

    from execplatform.steps.indicator_steps import record_indicators
    from include.audit.digest import gather

    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_dsn))
    today = datetime.now(UTC).date()
    assert (
        record_indicators("app_db", today, alert=lambda level, title: None)["skipped"]
        == "revision 0005 not applied"
    )
    with cursor(app_dsn) as cur:
        digest = gather(cur, today, None)
    assert (digest.values, digest.changes, digest.roi, digest.backup_age_hours) == (
        [],
        [],
        [],
        None,
    )


def test_every_indicator_has_its_alert_level_and_trust_and_model_ones_email():
    """The one table of levels covers every indicator the module computes (read from its source,
    so a new indicator without a level fails here); trust and model quality are errors (email)."""
    import inspect
    import re

    from include.audit import indicators as module

    source = inspect.getsource(module)
    computed = set(re.findall(r'(?:Value|_ratio|_psi)\(\s*"([a-z_0-9]+)"', source))
    assert len(computed) >= 13, computed
    assert computed == set(module.CHANGE_ALERT_LEVELS)
    for name, level in module.CHANGE_ALERT_LEVELS.items():
        wanted = (
            "error" if name.startswith(("trust_", "model_", "feature_psi", "prediction_psi")) else "warning"
        )
        assert level == wanted, name
    assert (
        module.alert_level("trust_roi_gap_cents") == "error"
        and module.alert_level("cache_hit_ratio") == "warning"
    )
