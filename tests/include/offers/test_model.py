"""The offer model against real PostgreSQL and moto S3: training, registry, promotion, rollback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from devstack.stack import MODEL_BUCKET
from include.offers import jobs, registry
from include.offers import model as m
from tests import offers_fixtures
from tests.offers_fixtures import cursor, snapshot_uri
from tests.project import ROOT

offers_dsn, s3 = offers_fixtures.offers_dsn, offers_fixtures.s3  # the shared fixtures
NOW = datetime(2026, 7, 1, tzinfo=UTC)


def _train(dsn, s3, name: str, valid_days: float = 21) -> dict:
    with cursor(dsn) as cur:
        extracted = jobs.extract(cur, s3, snapshot_uri(name), NOW)
    with cursor(dsn) as cur:
        trained = jobs.train(
            cur, s3, snapshot_uri=snapshot_uri(name), bucket=MODEL_BUCKET, valid_days=valid_days
        )
    with cursor(dsn) as cur:
        evaluation = jobs.evaluate(
            cur,
            s3,
            snapshot_uri=snapshot_uri(name),
            version_id=trained["version_id"],
            valid_from=trained["valid_from"],
        )
    return {"extracted": extracted, "trained": trained, "evaluation": evaluation}


def test_quarantine_reasons_name_each_impossible_row():
    rows = pd.DataFrame(
        {
            "occurred_at": pd.to_datetime(
                ["2026-05-01", "2027-01-01", "2026-05-01", "2026-05-01", "2026-05-01"], utc=True
            ),
            "recency_days": [1.0, 1.0, 1.0, 1.0, 1.0],
            "frequency_30d": [1, 1, 1, 1, 1],
            "spend_cents": [0, 0, -5, 0, 0],
            "discount_pct": [10.0, 10.0, 10.0, 140.0, 10.0],
            "segment": ["vip"] * 5,
            "channel": ["web"] * 5,
            "product": [
                "pro_monthly",
                "pro_monthly",
                "pro_monthly",
                "pro_monthly",
                "no_such_product",
            ],
        }
    )
    reasons = m.quarantine_reasons(rows, NOW).tolist()
    assert reasons == [
        None,
        "future timestamp",
        "negative amount",
        "discount outside 0-100",
        "unknown product",
    ]


def test_impossible_rows_are_quarantined_counted_and_training_goes_on(offers_dsn, s3):
    with cursor(offers_dsn) as cur:
        # two impressions dated after "now": impossible for a log of what happened
        cur.execute(
            """
            INSERT INTO user_events (user_id, offer_id, event_type, channel, occurred_at)
            SELECT u.id, o.id, 'impression', 'web', %s FROM
              (SELECT id FROM users ORDER BY id LIMIT 2) u, (SELECT id FROM offers ORDER BY id LIMIT 1) o
        """,
            (NOW + timedelta(days=30),),
        )
    result = _train(offers_dsn, s3, "quarantine")
    assert result["extracted"]["quarantined"] == 2
    assert result["extracted"]["quarantine_reasons"] == {"future timestamp": 2}
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT count(*), min(reason) FROM offer_quarantine WHERE source = 'training_rows'")
        assert cur.fetchone() == (2, "future timestamp")
        # a re-run refuses the same rows again but keeps them once
        jobs.extract(cur, s3, snapshot_uri("quarantine"), NOW)
        cur.execute("SELECT count(*) FROM offer_quarantine")
        assert cur.fetchone()[0] == 2
    assert result["evaluation"]["challenger"]["auc"] > 0.6


def test_first_model_is_registered_verified_and_promoted_and_retraining_is_idempotent(offers_dsn, s3):
    result = _train(offers_dsn, s3, "first")
    version_id = result["trained"]["version_id"]
    with cursor(offers_dsn) as cur:
        decision = jobs.promote_or_keep(cur, result["evaluation"], registry.Gates())
        assert decision["promoted"] and decision["champion_id"] == version_id
        cur.execute(
            "SELECT status, artifact_sha256, data_fingerprint, code_version, trained_from < trained_to,"
            " metrics ? 'calibration' FROM model_versions WHERE id = %s",
            (version_id,),
        )
        status, sha, fingerprint, code, ordered, calibrated = cur.fetchone()
    assert (status, ordered, calibrated) == ("champion", True, True)
    with cursor(offers_dsn) as cur:  # the first champion, too, carries its evaluation and plots
        champion = registry.get(cur, version_id)
        plots = registry.stored_plots(cur, version_id)
    assert all(isinstance(champion.metrics[k], float) for k in registry.EVALUATION)
    assert 0 <= champion.metrics["calibration_error"] < 0.1
    assert set(plots) == set(registry.PLOTS) and all(p.startswith(b"\x89PNG") for p in plots.values())
    assert fingerprint == result["extracted"]["data_fingerprint"] and code == m.code_version()
    data = registry.get_object(s3, f"s3://{MODEL_BUCKET}/{m.MODEL_NAME}/v0001/model.skops")
    assert registry.sha256_bytes(data) == sha
    # same data, same code, the version decided: a retrain leaves the champion's artifact and row
    # alone (refitting would overwrite the object it serves from) and promotes nothing again
    row = "SELECT status, promoted_at, metrics, artifact_sha256 FROM model_versions WHERE id = %s"
    with cursor(offers_dsn) as cur:
        cur.execute(row, (version_id,))
        before = cur.fetchone()
    artifact = s3.head_object(Bucket=MODEL_BUCKET, Key=f"{m.MODEL_NAME}/v0001/model.skops")
    again = _train(offers_dsn, s3, "first")
    assert (again["trained"]["version_id"], again["trained"]["unchanged"]) == (version_id, "champion")
    assert again["evaluation"]["challenger"]["auc"] == champion.metrics["auc"]
    with cursor(offers_dsn) as cur:
        decision = jobs.promote_or_keep(cur, again["evaluation"], registry.Gates())
        assert (decision["promoted"], decision["champion_id"]) == (False, version_id)
        assert "same data and code" in decision["reason"]
        cur.execute(row, (version_id,))
        assert cur.fetchone() == before
        cur.execute("SELECT count(*) FROM model_versions")
        assert cur.fetchone()[0] == 1
    kept = s3.head_object(Bucket=MODEL_BUCKET, Key=f"{m.MODEL_NAME}/v0001/model.skops")
    assert (kept["ETag"], kept["LastModified"]) == (artifact["ETag"], artifact["LastModified"])
    # a version a person rolled back (rejected) is not promoted again by a retrain on its data
    with cursor(offers_dsn) as cur:
        cur.execute("UPDATE model_versions SET status = 'rejected' WHERE id = %s", (version_id,))
    again = _train(offers_dsn, s3, "first")
    with cursor(offers_dsn) as cur:
        decision = jobs.promote_or_keep(cur, again["evaluation"], registry.Gates())
        assert (decision["promoted"], decision["champion_id"]) == (False, None)
        assert registry.get(cur, version_id).status == "rejected"


def test_a_retried_train_updates_its_own_candidate(offers_dsn, s3):
    first = _train(offers_dsn, s3, "retry")["trained"]
    with cursor(offers_dsn) as cur:
        again = jobs.train(cur, s3, snapshot_uri=snapshot_uri("retry"), bucket=MODEL_BUCKET, valid_days=21)
        cur.execute("SELECT count(*), min(status) FROM model_versions")
        assert (again["version_id"], "unchanged" in again, cur.fetchone()) == (
            first["version_id"],
            False,
            (1, "candidate"),
        )


def test_an_altered_artifact_is_refused_and_the_champion_stays(offers_dsn, s3):
    first = _train(offers_dsn, s3, "tamper")
    with cursor(offers_dsn) as cur:
        jobs.promote_or_keep(cur, first["evaluation"], registry.Gates())
        champion = registry.champion(cur, m.MODEL_NAME)
    data = bytearray(registry.get_object(s3, champion.artifact_uri))
    data[len(data) // 2] ^= 0xFF
    registry.put_object(s3, champion.artifact_uri, bytes(data))
    with pytest.raises(registry.ArtifactRefused, match="differs from the registry"):
        registry.fetch_model(s3, champion)
    # a challenger is not promoted over a champion that cannot be read; the champion stays
    with cursor(offers_dsn) as cur:
        cur.execute("UPDATE model_versions SET code_version = 'older' WHERE id = %s", (champion.id,))
    second = _train(offers_dsn, s3, "tamper")
    assert second["evaluation"]["champion_refused"]["version_id"] == champion.id
    with cursor(offers_dsn) as cur:
        decision = jobs.promote_or_keep(cur, second["evaluation"], registry.Gates())
        assert not decision["promoted"] and "champion artifact refused" in decision["reason"]
        assert registry.champion(cur, m.MODEL_NAME).id == champion.id


def test_an_artifact_with_unexpected_types_is_refused_even_with_a_matching_hash():
    from sklearn.tree import DecisionTreeClassifier

    sio = registry.skops_io()  # skops as the code imports it: without its import-time warnings

    class Sneaky(DecisionTreeClassifier):  # a type no offer model contains
        pass

    data = sio.dumps(Sneaky())
    with pytest.raises(registry.ArtifactRefused, match="outside the allowlist"):
        registry.load_model(data, registry.sha256_bytes(data))


QUIET_SKOPS = """
import json, warnings
import airflow.models, airflow.utils.timezone  # loaded first, as in a task process
import numpy as np
from sklearn.linear_model import LogisticRegression
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from include.offers.registry import dump_model, load_model, sha256_bytes
    data = dump_model(LogisticRegression().fit(np.eye(2), [0, 1]))
    load_model(data, sha256_bytes(data))
print(json.dumps([f"{w.category.__name__}: {w.message}" for w in caught]))
"""


def test_saving_and_loading_a_model_in_a_process_with_airflow_warns_nothing():
    """skops looks up ~290 scipy ufuncs in every loaded module on import, and each lookup in
    one of Airflow's deprecated-module shims warned: over a thousand lines in a task's log."""
    # the project root, for `include`
    done = subprocess.run(
        [sys.executable, "-c", QUIET_SKOPS], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_a_worse_challenger_is_not_promoted_and_rollback_restores_the_old_predictions(offers_dsn, s3):
    first = _train(offers_dsn, s3, "rollback")
    with cursor(offers_dsn) as cur:
        jobs.promote_or_keep(cur, first["evaluation"], registry.Gates())
        old = registry.champion(cur, m.MODEL_NAME)
    valid = jobs.read_snapshot(s3, snapshot_uri("rollback")).tail(500)
    old_predictions = m.predict(registry.fetch_model(s3, old), valid)

    # a worse challenger: labels shuffled, so it learns noise; same holdout as the champion
    frame = jobs.read_snapshot(s3, snapshot_uri("rollback"))
    frame["redeemed"] = np.random.default_rng(3).permutation(frame["redeemed"].to_numpy())
    noisy = snapshot_uri("rollback-noisy")
    _put_snapshot(s3, noisy, frame)
    with cursor(offers_dsn) as cur:
        worse = jobs.train(cur, s3, snapshot_uri=noisy, bucket=MODEL_BUCKET, valid_days=21)
        evaluation = jobs.evaluate(
            cur,
            s3,
            snapshot_uri=snapshot_uri("rollback"),
            version_id=worse["version_id"],
            valid_from=first["trained"]["valid_from"],
        )
        decision = jobs.promote_or_keep(cur, evaluation, registry.Gates())
    assert not decision["promoted"] and decision["champion_id"] == old.id

    # a challenger that passes (promotion forced by a negative margin), then one step back
    with cursor(offers_dsn) as cur:
        cur.execute("UPDATE model_versions SET code_version = 'next' WHERE id = %s", (old.id,))
    second = _train(offers_dsn, s3, "rollback", valid_days=14)
    with cursor(offers_dsn) as cur:
        promoted = jobs.promote_or_keep(cur, second["evaluation"], registry.Gates(margin_auc=-1.0))
        assert promoted["promoted"] and promoted["champion_id"] != old.id
        new_predictions = m.predict(registry.fetch_model(s3, registry.champion(cur, m.MODEL_NAME)), valid)
        assert not np.allclose(new_predictions, old_predictions)
        retired, restored = registry.rollback(cur, m.MODEL_NAME)
    assert (retired.id, restored.id) == (promoted["champion_id"], old.id)
    with cursor(offers_dsn) as cur:
        back = registry.champion(cur, m.MODEL_NAME)
        cur.execute("SELECT status FROM model_versions WHERE id = %s", (retired.id,))
        assert cur.fetchone()[0] == "rejected"
    np.testing.assert_array_equal(m.predict(registry.fetch_model(s3, back), valid), old_predictions)


def _put_snapshot(s3, uri: str, frame: pd.DataFrame) -> None:
    import gzip

    registry.put_object(s3, uri, gzip.compress(frame.to_csv(index=False).encode()))


def test_sanity_gates_refuse_collapsed_or_poor_models():
    good = {"auc": 0.8, "log_loss": 0.3, "brier": 0.09, "prediction_std": 0.05}
    gates = registry.Gates()
    assert registry.decide(good, None, gates)[0]
    assert not registry.decide({**good, "prediction_std": 0.0001}, None, gates)[0]
    assert not registry.decide({**good, "auc": 0.55}, None, gates)[0]
    assert not registry.decide(good, {**good, "auc": 0.799}, gates)[0]  # within the margin
    assert registry.decide(good, {**good, "auc": 0.79}, gates)[0]


def test_a_version_without_a_recorded_evaluation_is_never_promoted(offers_dsn, s3):
    uri = snapshot_uri("unevaluated")
    with cursor(offers_dsn) as cur:
        jobs.extract(cur, s3, uri, NOW)
    with cursor(offers_dsn) as cur:
        trained = jobs.train(cur, s3, snapshot_uri=uri, bucket=MODEL_BUCKET, valid_days=21)
    with cursor(offers_dsn) as cur, pytest.raises(registry.NotEvaluated) as refused:
        registry.promote(cur, m.MODEL_NAME, trained["version_id"])
    assert "calibration_error, policy_roi_cents_per_impression, roc plot, calibration plot" in str(
        refused.value
    )
    with cursor(offers_dsn) as cur:
        assert registry.champion(cur, m.MODEL_NAME) is None


def test_calibration_error_is_the_weighted_gap_between_predicted_and_observed():
    y = np.array([0, 0, 0, 1] * 25)
    assert m.calibration_error(y, np.full(100, 0.25), bins=1) == pytest.approx(0.0)
    assert m.calibration_error(y, np.full(100, 0.65)) == pytest.approx(0.4)
    p = np.linspace(0, 1, 100)
    assert m.calibration_error((p > 0.5).astype(int), p, bins=2) == pytest.approx(0.25, abs=0.01)
