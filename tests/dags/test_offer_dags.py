"""The three offer DAGs end to end with `dag.test()` against PostgreSQL, moto S3 and localstripe.

retrain (train, promote, assign, publish to Stripe, report) → customers pay in Stripe →
roi_sync (payments, quarantine, attributed vs incremental ROI) → offer_feedback (posteriors,
Asset) → a second model promoted → rollback through the DAG param.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.stack import MODEL_BUCKET
from include.observability.metrics import NAMESPACE
from include.offers import jobs, registry
from include.offers.model import MODEL_NAME
from tests import offers_fixtures
from tests.airflow_api import postgres_connection
from tests.offers_fixtures import cursor

offers_dsn, s3 = offers_fixtures.offers_dsn, offers_fixtures.s3  # the shared fixtures
DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def airflow_db():
    """The test session's own Airflow metadata database, migrated."""
    from airflow.utils.db import initdb

    initdb()


@pytest.fixture
def dagbag(airflow_db):
    """The project's DAGs, parsed afresh: `dag.test(run_conf=...)` leaves its conf in the params."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def _run(dagbag, dag_id: str, run_after=None, **conf) -> dict[str, str]:
    """Run a DAG in-process (requested at `run_after`, by default now); returns each task's
    final state."""
    from airflow.models.serialized_dag import SerializedDagModel  # noqa: F401 (registers models)

    dag = dagbag.get_dag(dag_id)
    run = dag.test(run_after=run_after, run_conf=conf or None)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    return states


def _cloudwatch():
    import json
    import os

    from devstack.stack import aws_client

    return aws_client("cloudwatch", json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"]))


def _pay(client, user_id: int, amount: int, coupon: str | None = None) -> str:
    method = client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    metadata = {"user_id": str(user_id), **({"coupon": coupon} if coupon else {})}
    charge = client.v1.charges.create(
        {"amount": amount, "currency": "usd", "source": method.id, "metadata": metadata}
    )
    return charge.id


def test_offer_dags_end_to_end_with_rollback(dagbag, offers_dsn, s3):
    from execplatform.hooks.stripe_hook import StripeHook

    # 1. retrain: first model becomes champion, offers assigned with a holdout and published
    states = _run(dagbag, "offer_model_retrain")
    assert states["rollback_champion"] == "skipped" and states["publish_offers"] == "success"
    with cursor(offers_dsn) as cur:
        first = registry.champion(cur, MODEL_NAME)
        cur.execute(
            "SELECT count(*) FILTER (WHERE holdout), count(*) FROM offer_assignments WHERE model_version_id "
            "= %s",
            (first.id,),
        )
        holdout, total = cur.fetchone()
        cur.execute(
            "SELECT p.segment, p.stripe_coupon_id, o.discount_pct::float8, o.id FROM offer_publications p"
            " JOIN offers o ON o.id = p.offer_id WHERE p.model_version_id = %s AND p.published_at IS NOT NULL"
            " ORDER BY p.segment, o.code",
            (first.id,),
        )
        published = {r[0]: r[1:] for r in cur.fetchall()}
    assert first is not None and 0.05 * total < holdout < 0.15 * total
    assert set(published) == {"new", "casual", "regular", "vip"}
    client = StripeHook().get_conn()
    for _segment, (coupon, discount, _product) in published.items():
        stripe_coupon = client.v1.coupons.retrieve(coupon)
        assert stripe_coupon.percent_off == discount
        assert stripe_coupon.metadata["model_version_id"] == str(first.id)
    report_keys = {
        o["Key"] for o in s3.list_objects_v2(Bucket=MODEL_BUCKET, Prefix=f"{MODEL_NAME}/v0001/")["Contents"]
    }
    assert {
        f"{MODEL_NAME}/v0001/{n}" for n in ("model.skops", "roc.png", "calibration.png", "report.md")
    } <= report_keys
    png = registry.get_object(s3, f"s3://{MODEL_BUCKET}/{MODEL_NAME}/v0001/roc.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    # 2. customers pay: two treated users of each segment redeem (the product records it in
    #    user_events); two holdout users buy anyway
    with cursor(offers_dsn) as cur:
        cur.execute(
            """
            SELECT segment, user_id, holdout FROM (
                SELECT a.*, row_number() OVER (PARTITION BY segment, holdout ORDER BY user_id) AS n
                FROM offer_assignments a WHERE model_version_id = %s) x
            WHERE n <= 2 ORDER BY segment, holdout, user_id""",
            (first.id,),
        )
        buyers = cur.fetchall()
    attributed, paid = dict.fromkeys(published, 0), []
    for segment, user_id, held in buyers:
        if held:
            paid.append(_pay(client, user_id, 1_000))
        else:
            coupon, discount, offer_id = published[segment]
            paid.append(_pay(client, user_id, 2_000, coupon))
            attributed[segment] += 2_000
            with cursor(offers_dsn) as cur:
                cur.execute(
                    "INSERT INTO user_events (user_id, offer_id, event_type, channel, amount_cents,"
                    " occurred_at) VALUES (%s, %s, 'redemption', 'web', 2000, now() - interval '1 minute')",
                    (user_id, offer_id),
                )
    bad = [_pay(client, 99_999_999, 500), _pay(client, buyers[0][1], 500, "no-such-coupon")]

    # 3. roi_sync: payments in, the two impossible ones quarantined, ROI per segment stored
    _run(dagbag, "roi_sync")
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT source_key, reason FROM offer_quarantine WHERE source = 'stripe_charges' ORDER BY "
            "source_key"
        )
        quarantined = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM payments WHERE stripe_payment_id = ANY(%s)", (paid,))
        ours = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM payments WHERE stripe_payment_id LIKE 'ch_%%'")
        synced = cur.fetchone()[0]  # localstripe lives for the session: other tests' charges too
        cur.execute(
            "SELECT segment, attributed_revenue_cents, discount_cost_cents, attributed_roi_cents,"
            " incremental_roi_cents, incremental_ci_low_cents, incremental_ci_high_cents, roi_gap_cents"
            " FROM offer_roi WHERE model_version_id = %s",
            (first.id,),
        )
        roi = {r[0]: r[1:] for r in cur.fetchall()}
    assert set(bad) <= set(quarantined)
    assert any("unknown user" in r for r in quarantined.values()) and any(
        "unknown offer coupon" in r for r in quarantined.values()
    )
    assert ours == len(buyers)
    for segment, (revenue, cost, attributed_roi, incremental, low, high, gap) in roi.items():
        discount = published[segment][1]
        assert revenue == attributed[segment]
        assert cost == round(attributed[segment] * discount / (100 - discount))
        assert attributed_roi == revenue - cost
        assert low <= incremental <= high and gap == pytest.approx(attributed_roi - incremental)
    # both ROI figures and their gap per segment reached CloudWatch (moto)
    cloudwatch = _cloudwatch()
    for name in ("OfferRoiAttributedCents", "OfferRoiIncrementalCents", "OfferRoiGapCents"):
        listed = cloudwatch.list_metrics(Namespace=NAMESPACE, MetricName=name)["Metrics"]
        segments = {d["Value"] for m in listed for d in m["Dimensions"] if d["Name"] == "Segment"}
        assert segments == set(published), name
    # a re-run lists the same charges (overlap) and changes nothing
    _run(dagbag, "roi_sync")
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT count(*) FROM payments WHERE stripe_payment_id LIKE 'ch_%%'")
        assert cur.fetchone()[0] == synced
        cur.execute("SELECT count(*) FROM offer_quarantine WHERE source = 'stripe_charges'")
        assert cur.fetchone()[0] == len(quarantined)

    # 4. offer_feedback: posteriors per segment x offer, allocation shares sum to 1, Asset signalled
    states = _run(dagbag, "offer_feedback", retrain_after_redemptions=1)
    assert states["signal_enough_feedback"] == "success"
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT segment, sum(share), min(share), sum(impressions), sum(redemptions) FROM "
            "offer_bandit_arms GROUP BY segment"
        )
        arms = cur.fetchall()
        cur.execute(
            "SELECT count(*) FROM user_events e JOIN users u ON u.id = e.user_id"
            " JOIN offer_bandit_arms a ON a.segment = u.segment AND a.offer_id = e.offer_id"
            " WHERE e.event_type = 'redemption'"
        )
        redemptions = cur.fetchone()[0]  # the seeded catalog's offers are no arms: not folded
    assert len(arms) == 4 and all(s == pytest.approx(1.0) and low > 0 for _, s, low, _, _ in arms)
    assert sum(r for *_, r in arms) == redemptions == len([b for b in buyers if not b[2]])
    states = _run(dagbag, "offer_feedback", retrain_after_redemptions=10**6)  # nothing new: no signal
    assert states["signal_enough_feedback"] == "skipped"

    # 5. new data, a second champion (margin lowered), then the rollback param restores the first
    with cursor(offers_dsn) as cur:
        cur.execute("""INSERT INTO user_events (user_id, offer_id, event_type, channel, occurred_at)
                       SELECT user_id, offer_id, event_type, channel, occurred_at + interval '1 second'
                       FROM user_events WHERE event_type = 'impression' ORDER BY id DESC LIMIT 50""")
    _run(dagbag, "offer_model_retrain", margin_auc=-1.0)
    with cursor(offers_dsn) as cur:
        second = registry.champion(cur, MODEL_NAME)
    assert second.id != first.id
    # the rollback names the champion it rolls back; submitted twice (a double click), it moves
    # the champion back once: the second run finds it done and changes nothing. A third, without
    # champion_id, requested before the first ran, names the champion of then: done, too.
    requested = datetime.now(UTC)
    for conf in ({"champion_id": second.id},) * 2 + ({"champion_id": 0, "run_after": requested},):
        states = _run(dagbag, "offer_model_retrain", rollback=True, **conf)
        assert states["extract"] == "skipped" and states["report"] == "skipped"
        assert states["retire_rolled_back_offers"] == states["publish_offers"] == "success"
        with cursor(offers_dsn) as cur:
            assert registry.champion(cur, MODEL_NAME).id == first.id
            cur.execute("SELECT status FROM model_versions WHERE id = %s", (second.id,))
            assert cur.fetchone()[0] == "rejected"
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT model_version_id, stripe_coupon_id, retired_at IS NOT NULL FROM offer_publications"
            " WHERE model_version_id IN (%s, %s)",
            (first.id, second.id),
        )
        coupons = cur.fetchall()
        cur.execute(
            "SELECT count(*) FROM security_events WHERE event_type = 'rollback'"
            " AND (details->>'retired')::bigint = %s",
            (second.id,),
        )
        assert cur.fetchone()[0] == 1
    import stripe

    # the rolled-back version's coupons are gone from localstripe: nobody can redeem them; the
    # restored version's are live (localstripe never applies a coupon to a charge, so a coupon
    # that cannot be retrieved is one that cannot be redeemed)
    assert {v for v, _, _ in coupons} == {first.id, second.id}
    with cursor(offers_dsn) as cur:  # ROI and the customers follow the restored champion's offers
        assert jobs.latest_assignment(cur) == first.id
    for version_id, coupon, retired in coupons:
        assert retired is (version_id == second.id)
        if version_id == second.id:
            with pytest.raises(stripe.InvalidRequestError) as gone:
                client.v1.coupons.retrieve(coupon)
            assert gone.value.http_status == 404
        else:
            assert client.v1.coupons.retrieve(coupon).metadata["model_version_id"] == str(first.id)
    # a rollback naming a version that is not champion (and was not rolled back to this one) is refused
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.offer_steps import roll_back_champion

    with pytest.raises(AirflowFailException, match=f"model version id {second.id + 10**6} does not exist"):
        roll_back_champion(second.id + 10**6)
    with cursor(offers_dsn) as cur:
        assert registry.champion(cur, MODEL_NAME).id == first.id


def test_a_tampered_champion_is_refused_alerted_and_stays(dagbag, offers_dsn, s3):
    _run(dagbag, "offer_model_retrain")
    with cursor(offers_dsn) as cur:
        champion = registry.champion(cur, MODEL_NAME)
    data = bytearray(registry.get_object(s3, champion.artifact_uri))
    data[-100] ^= 0xFF
    registry.put_object(s3, champion.artifact_uri, bytes(data))
    with cursor(offers_dsn) as cur:  # new feedback, so the retrain makes a new challenger
        cur.execute("""INSERT INTO user_events (user_id, offer_id, event_type, channel, occurred_at)
                       SELECT user_id, offer_id, event_type, channel, occurred_at + interval '1 second'
                       FROM user_events WHERE event_type = 'impression' ORDER BY id DESC LIMIT 50""")

    run = dagbag.get_dag("offer_model_retrain").test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    # nothing is offered from a model that cannot be verified: the run fails at assign_offers
    assert run.state == "failed" and states["promote_or_keep"] == "success", states
    assert states["assign_offers"] == "failed" and states["publish_offers"] == "upstream_failed"
    with cursor(offers_dsn) as cur:
        assert registry.champion(cur, MODEL_NAME).id == champion.id
        cur.execute("SELECT status, metrics->>'decision' FROM model_versions WHERE id <> %s", (champion.id,))
        status, decision = cur.fetchone()
        cur.execute("SELECT task_id, level FROM alerts WHERE message LIKE '%%artifact refused%%'")
        alerts = set(cur.fetchall())
        cur.execute("SELECT count(*) FROM security_events WHERE event_type = 'input_refused'")
        refusals = cur.fetchone()[0]
    assert status == "rejected" and decision.startswith("champion artifact refused")
    # the champion's refusal alerts from evaluate (critical), then assign_offers fails and alerts
    assert {("evaluate", "critical"), ("assign_offers", "critical")} <= alerts
    assert refusals >= 1


@pytest.fixture
def own_stripe(tmp_path, monkeypatch):
    """A localstripe of this test's own (the session's is shared by every test): every object
    in it is this test's, so counts can be exact. `stripe_default` points at it."""
    import json
    import os
    import sys

    import stripe

    from devstack.stack import Service, Supervisor, free_port, http_answers

    port, supervisor = free_port(), Supervisor(tmp_path / "logs")
    supervisor.start(
        Service(
            "stripe",
            [sys.executable, "-m", "devstack.stripe_server", "--port", str(port)],
            http_answers(f"http://127.0.0.1:{port}/v1/customers"),
        )
    )
    conn = {
        **json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"]),
        "host": f"http://127.0.0.1:{port}",
    }
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(conn))
    yield stripe.StripeClient(api_key=conn["password"], base_addresses={"api": conn["host"]})
    supervisor.stop_all(grace=5)


def _all(listing) -> list[dict]:
    return [o.to_dict() for o in listing({"limit": 100}).auto_paging_iter()]


def test_the_offer_story_with_simulated_customers(dagbag, offers_dsn, own_stripe):
    """retrain publishes each offer once → the demo customers pay in localstripe → roi_sync
    reconciles with Stripe and stores attributed and incremental ROI → offer_feedback learns
    from the customers' redemptions. The local stack's `customers` service runs the same code."""
    from devstack import customer_simulator as simulator

    client = own_stripe
    _run(dagbag, "offer_model_retrain")
    with cursor(offers_dsn) as cur:
        version = jobs.latest_assignment(cur)
        cur.execute(
            "SELECT stripe_coupon_id, stripe_product_id FROM offer_publications WHERE model_version_id = %s",
            (version,),
        )
        coupons, products = zip(*cur.fetchall(), strict=True)
    # every published offer exists exactly once in Stripe, and nothing else does
    assert sorted(c["id"] for c in _all(client.v1.coupons.list)) == sorted(coupons)
    assert sorted(p["id"] for p in _all(client.v1.products.list)) == sorted(products)

    _run(dagbag, "offer_feedback")  # the seed's history first, so what follows is the customers'
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT max(id) FROM user_events")
        events_from = cur.fetchone()[0]  # what follows is the customers'
        cur.execute("SELECT segment, offer_id, impressions, redemptions FROM offer_bandit_arms")
        arms_before = {(s, o): (i, r) for s, o, i, r in cur.fetchall()}

    with cursor(offers_dsn) as cur:
        played = simulator.simulate(cur, client, seed=7)
    assert played["status"] == "simulated" and played["model_version_id"] == version
    assert played["charges_created"] == played["payments"] > 0 and played["charges_existing"] == 0
    assert played["redemptions"] > 0 and played["holdout_purchases"] > 0
    charges = _all(client.v1.charges.list)
    assert len(charges) == played["payments"]
    redeemed = [c for c in charges if "coupon" in c["metadata"]]
    assert sum(c["amount"] for c in redeemed) == played["redeemed_revenue_cents"]
    assert {c["metadata"]["coupon"] for c in redeemed} <= set(coupons) and len(redeemed) == played[
        "redemptions"
    ]
    assert all(c["customer"] and c["status"] == "succeeded" for c in charges)

    # a re-run changes nothing; with its mark and events lost, the same customers (same seed)
    # are found in Stripe, not charged again
    with cursor(offers_dsn) as cur:
        assert simulator.simulate(cur, client, seed=7)["status"] == "done"
        cur.execute("DELETE FROM sync_cursors WHERE name = %s", (simulator.marker(version),))
        cur.execute("DELETE FROM offer_decisions WHERE impression_event_id > %s", (events_from,))
        cur.execute("DELETE FROM user_events WHERE id > %s", (events_from,))
    with cursor(offers_dsn) as cur:
        again = simulator.simulate(cur, client, seed=7)
    assert again["charges_created"] == 0 and again["charges_existing"] == played["payments"]
    assert {k: v for k, v in again.items() if not k.startswith("charges")} == {
        k: v for k, v in played.items() if not k.startswith("charges")
    }
    assert len(_all(client.v1.charges.list)) == played["payments"]

    # roi_sync: every Stripe charge becomes one payment; ROI both ways with an interval
    _run(dagbag, "roi_sync")
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT count(*), count(offer_id), coalesce(sum(amount_cents) FILTER (WHERE offer_id IS NOT "
            "NULL), 0)"
            " FROM payments WHERE stripe_payment_id LIKE 'ch_%%'"
        )
        synced, attributed_payments, attributed_cents = cur.fetchone()
        cur.execute("SELECT count(*) FROM offer_quarantine WHERE source = 'stripe_charges'")
        quarantined = cur.fetchone()[0]
        cur.execute(
            "SELECT segment, treated_users, holdout_users, attributed_revenue_cents, attributed_roi_cents,"
            " incremental_roi_cents, incremental_ci_low_cents, incremental_ci_high_cents, roi_gap_cents"
            " FROM offer_roi WHERE model_version_id = %s",
            (version,),
        )
        roi = cur.fetchall()
        cur.execute(
            "SELECT count(*) FILTER (WHERE NOT holdout), count(*) FILTER (WHERE holdout)"
            " FROM offer_assignments WHERE model_version_id = %s",
            (version,),
        )
        treated_users, holdout_users = cur.fetchone()
    assert (synced, quarantined) == (played["payments"], 0)
    assert (attributed_payments, attributed_cents) == (
        played["redemptions"],
        played["redeemed_revenue_cents"],
    )
    assert len(roi) == 4
    assert sum(r[1] for r in roi) == treated_users and sum(r[2] for r in roi) == holdout_users
    assert sum(r[3] for r in roi) == played["redeemed_revenue_cents"]
    for _segment, *_, attributed_roi, incremental, low, high, gap in roi:
        assert low < incremental < high and gap == pytest.approx(attributed_roi - incremental)
    # pytest -rP
    sys.stdout.write(
        f"simulated: {played}\nROI (segment, treated, holdout, attributed revenue, attributed ROI,"
        f" incremental ROI, CI low, CI high, gap):\n" + "\n".join(map(str, roi)) + "\n"
    )

    # offer_feedback: the bandit gains exactly the customers' impressions and redemptions
    _run(dagbag, "offer_feedback")
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT u.segment, e.offer_id, count(*) FILTER (WHERE e.event_type = 'impression'),"
            " count(*) FILTER (WHERE e.event_type = 'redemption') FROM user_events e"
            " JOIN users u ON u.id = e.user_id WHERE e.id > %s AND e.offer_id IS NOT NULL"
            " GROUP BY 1, 2",
            (events_from,),
        )
        played_arms = {(s, o): (i, r) for s, o, i, r in cur.fetchall()}
        cur.execute("SELECT segment, offer_id, impressions, redemptions FROM offer_bandit_arms")
        arms_after = {(s, o): (i, r) for s, o, i, r in cur.fetchall()}
    assert sum(r for _, r in played_arms.values()) == played["redemptions"]
    assert sum(i for i, _ in played_arms.values()) == played["shown"]
    for arm, (imp, red) in arms_after.items():
        before, new = arms_before[arm], played_arms.get(arm, (0, 0))
        assert (imp - before[0], red - before[1]) == new, arm


def test_before_the_migrations_an_offer_dag_fails_at_once_naming_the_missing_table(
    dagbag, app_dsn, monkeypatch
):
    """On the baseline schema (as `make run` starts) roi_sync's first read meets a table that
    revision 0004 creates: the task fails on its first try with one alert that names the table
    and the remedy, instead of retrying into a warning per try."""
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_dsn))
    run = dagbag.get_dag("roi_sync").test()
    assert run.state == "failed"
    ti = {ti.task_id: ti for ti in run.get_task_instances()}["sync_payments"]
    assert (ti.state, ti.try_number) == ("failed", 1)
    with cursor(app_dsn) as cur:
        cur.execute("SELECT level, message FROM alerts WHERE task_id = 'sync_payments'")
        alerts = cur.fetchall()
    assert [level for level, _ in alerts] == ["error"], alerts
    assert (
        "schema is behind the code" in alerts[0][1]
        and 'relation "sync_cursors" does not exist' in alerts[0][1]
    )
    assert "db_migrate" in alerts[0][1]
