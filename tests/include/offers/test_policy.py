"""Offer choice within a budget, the holdout, the Thompson-sampling bandit, and ROI."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from devstack.stack import MODEL_BUCKET
from include.offers import jobs, registry
from include.offers.policy import (
    ARMS_PER_SEGMENT,
    GENERATED_DISCOUNTS,
    PRIOR_IMPRESSIONS,
    choose_within_budget,
    generated_code,
    in_holdout,
    propose_offers,
    thompson_shares,
)
from include.offers.products import PRODUCT_PRICES_CENTS
from include.offers.roi import dispute_row, is_final, payment_row, segment_roi
from tests import offers_fixtures
from tests.offers_fixtures import cursor, snapshot_uri

offers_dsn, s3 = offers_fixtures.offers_dsn, offers_fixtures.s3  # the shared fixtures
NOW = datetime(2026, 7, 1, tzinfo=UTC)


def test_holdout_is_reproducible_and_near_its_share():
    users = range(20_000)
    first, again = in_holdout(users, 0.1, "mv1"), in_holdout(users, 0.1, "mv1")
    assert (first == again).all() and 0.09 < first.mean() < 0.11
    assert (first != in_holdout(users, 0.1, "mv2")).any()  # a new version draws a new control group


def test_budget_moves_the_costliest_segment_to_a_cheaper_offer():
    scores = pd.DataFrame(
        [("a", 1, 100.0, 50.0), ("a", 2, 90.0, 10.0), ("b", 3, 80.0, 40.0), ("b", 4, 20.0, 5.0)],
        columns=["segment", "offer_id", "roi", "cost"],
    )
    assert [c.offer_id for c in choose_within_budget(scores, 1_000)] == [1, 3]
    # over budget by 40: switching a gives up 10 ROI for 40 saved, b would give up 60 for 35
    assert [c.offer_id for c in choose_within_budget(scores, 50)] == [2, 3]
    with pytest.raises(ValueError, match="no offer set fits"):
        choose_within_budget(scores, 1)


def test_generated_offers_fit_the_budget_and_no_arm_costs_more_than_its_pick():
    grid = pd.DataFrame(
        {"id": [0, 1, 2, 3], "product": ["pro_monthly", "pro_monthly", "api_addon", "credits_1k"]}
    )
    scores = pd.DataFrame(
        [
            ("vip", 0, 100.0, 40.0, 0.2),
            ("vip", 1, 120.0, 90.0, 0.3),  # same product, better ROI, dearer discount
            ("vip", 2, 80.0, 30.0, 0.1),
            ("vip", 3, -5.0, 1.0, 0.1),  # loses money: never an arm
        ],
        columns=["segment", "offer_id", "roi", "cost", "rate"],
    )
    roomy = propose_offers(scores, grid.assign(discount_pct=[10.0, 30.0, 5.0, 5.0]), 1_000)
    assert [(o.product, o.discount_pct, o.pick) for o in roomy] == [
        ("pro_monthly", 30.0, True),
        ("api_addon", 5.0, False),
    ]
    tight = propose_offers(scores, grid.assign(discount_pct=[10.0, 30.0, 5.0, 5.0]), 35)
    assert [(o.product, o.pick) for o in tight] == [("api_addon", True)]  # nothing cheaper with ROI > 0


def test_thompson_shares_favour_the_better_arm_and_keep_exploring_within_budget():
    arms = pd.DataFrame(
        {
            "alpha": [200.0, 20.0, 5.0],
            "beta": [800.0, 980.0, 95.0],
            "value_cents": [1000.0, 1000.0, 1000.0],
            "cost_cents": [300.0, 50.0, 100.0],
        }
    )
    shares = thompson_shares(arms, min_exploration=0.3, budget_per_impression_cents=None, seed=1)
    assert shares.sum() == pytest.approx(1.0) and shares.idxmax() == 0
    assert shares.min() >= 0.1 - 1e-12  # 0.3 spread over 3 arms
    capped = thompson_shares(arms, min_exploration=0.3, budget_per_impression_cents=20.0, seed=1)
    rate = arms["alpha"] / (arms["alpha"] + arms["beta"])
    assert float(capped @ (rate * arms["cost_cents"])) == pytest.approx(20.0)
    assert capped.sum() == pytest.approx(1.0) and capped[1] > shares[1]


def test_payment_rows_quarantine_impossible_charges():
    users, coupons = {7}, {"mv1-vip-x": 3}
    base = {
        "id": "ch_1",
        "amount": 1000,
        "created": 1_780_000_000,
        "status": "succeeded",
        "currency": "usd",
        "metadata": {"user_id": "7", "coupon": "mv1-vip-x"},
    }
    row, reason = payment_row(base, known_users=users, coupon_offers=coupons, now=NOW)
    assert reason is None and (row.user_id, row.offer_id, row.amount_cents) == (7, 3, 1000)
    cases = {
        "negative or missing amount": {**base, "amount": -5},
        "future timestamp": {**base, "created": int(NOW.timestamp()) + 86_400},
        "unknown user id": {**base, "metadata": {"user_id": "8"}},
        "unknown offer coupon": {**base, "metadata": {"user_id": "7", "coupon": "nope"}},
        "no app user": {**base, "metadata": {}},
    }
    for expected, charge in cases.items():
        row, reason = payment_row(charge, known_users=users, coupon_offers=coupons, now=NOW)
        assert row is None and reason.startswith(expected), (expected, reason)


def test_a_charge_is_final_once_failed_captured_or_released_and_carries_its_refunds():
    users, coupons = {7}, {}
    base = {
        "id": "ch_2",
        "amount": 1000,
        "created": 1_780_000_000,
        "status": "succeeded",
        "captured": True,
        "amount_refunded": 0,
        "metadata": {"user_id": "7"},
    }
    not_final = [{**base, "status": "pending"}, {**base, "captured": False}]
    final = [
        base,
        {**base, "status": "failed", "captured": False},
        {**base, "captured": False, "amount_refunded": 1000},
    ]
    assert [is_final(c) for c in not_final + final] == [False, False, True, True, True]
    for charge in not_final:
        row, reason = payment_row(charge, known_users=users, coupon_offers=coupons, now=NOW)
        assert row is None and "is not final" in reason
    partly, fully, too_much = ({**base, "amount_refunded": n} for n in (250, 1000, 1001))
    rows = [payment_row(c, known_users=users, coupon_offers=coupons, now=NOW)[0] for c in (partly, fully)]
    assert [(r.status, r.refunded_cents) for r in rows] == [("succeeded", 250), ("refunded", 1000)]
    row, reason = payment_row(too_much, known_users=users, coupon_offers=coupons, now=NOW)
    assert row is None and reason == "amount_refunded 1001 outside 0-1000"


def test_a_dispute_withholds_what_is_left_of_its_charge_at_most_or_is_quarantined():
    base = {
        "id": "dp_1",
        "charge": "ch_1",
        "amount": 3000,
        "currency": "usd",
        "status": "needs_response",
        "reason": "fraudulent",
        "created": 1_780_000_000,
    }
    payment = (5000, 1000, 1000)  # paid, refunded, withheld by the charge's other disputes: 3000 left
    withheld = {
        status: dispute_row({**base, "status": status}, payment=payment, now=NOW)[0].withheld_cents
        for status in (
            "warning_needs_response",
            "needs_response",
            "under_review",
            "won",
            "lost",
            "warning_closed",
        )
    }
    assert withheld == {
        "warning_needs_response": 0,  # an inquiry withholds nothing
        "needs_response": 3000,
        "under_review": 3000,
        "won": 0,  # the money is back
        "lost": 3000,
        "warning_closed": 0,
    }
    cases = {
        "amount -5 is not a positive integer": ({**base, "amount": -5}, payment),
        "amount '3000' is not a positive integer": ({**base, "amount": "3000"}, payment),
        "unknown status 'charge_refunded'": ({**base, "status": "charge_refunded"}, payment),
        "future timestamp": ({**base, "created": 1_790_000_000}, payment),
        "charge 'ch_1' is not in payments": (base, None),
        "amount 3001 above the 3000 left of charge ch_1 (5000 paid, 1000 refunded, 1000 withheld": (
            {**base, "amount": 3001},
            payment,
        ),
        "amount 5001 above charge ch_1's 5000": ({**base, "amount": 5001, "status": "won"}, payment),
    }
    for expected, (dispute, paid) in cases.items():
        row, reason = dispute_row(dispute, payment=paid, now=NOW)
        assert row is None and reason.startswith(expected), (expected, reason)
    # a won dispute withholds nothing, so what refunds and other disputes took does not limit it
    row, _ = dispute_row({**base, "amount": 5000, "status": "won"}, payment=payment, now=NOW)
    assert (row.amount_cents, row.withheld_cents) == (5000, 0)


def test_incremental_roi_is_the_lift_over_the_holdout_with_an_interval():
    rng = np.random.default_rng(0)
    treated = (rng.random(4000) < 0.12) * 2000.0  # 12% buy
    holdout = (rng.random(4000) < 0.10) * 2000.0  # 10% would have bought anyway
    roi = segment_roi(
        "vip",
        treated.tolist(),
        holdout.tolist(),
        attributed_revenue_cents=int(treated.sum()),
        discount_cost_cents=50_000,
    )
    lift = (treated.mean() - holdout.mean()) * 4000
    assert roi.incremental_roi_cents == pytest.approx(lift - 50_000)
    assert roi.incremental_ci_low_cents < roi.incremental_roi_cents < roi.incremental_ci_high_cents
    assert roi.gap_cents == pytest.approx(treated.sum() - lift)  # attribution overstates it
    assert roi.gap_cents > 0


def test_assignments_follow_the_champion_keep_a_holdout_and_are_idempotent(offers_dsn, s3):
    uri = snapshot_uri("assign")
    with cursor(offers_dsn) as cur:
        jobs.extract(cur, s3, uri, NOW)
        trained = jobs.train(cur, s3, snapshot_uri=uri, bucket=MODEL_BUCKET, valid_days=21)
        evaluation = jobs.evaluate(
            cur,
            s3,
            snapshot_uri=uri,
            version_id=trained["version_id"],
            valid_from=trained["valid_from"],
        )
        jobs.promote_or_keep(cur, evaluation, registry.Gates())
    with cursor(offers_dsn) as cur:
        result = jobs.assign_offers(cur, s3, holdout_share=0.2, budget_cents=1e12)
        again = jobs.assign_offers(cur, s3, holdout_share=0.2, budget_cents=1e12)
        cur.execute(
            "SELECT segment, count(*) FILTER (WHERE holdout), count(*), count(DISTINCT offer_id)"
            " FROM offer_assignments GROUP BY segment"
        )
        per_segment = cur.fetchall()
        cur.execute(
            "SELECT p.segment, o.code, o.product, o.discount_pct::float8, o.segment, a.prior_alpha,"
            " a.prior_beta, a.alpha, a.share FROM offer_publications p JOIN offers o ON o.id = p.offer_id"
            " JOIN offer_bandit_arms a ON a.segment = p.segment AND a.offer_id = p.offer_id"
            " WHERE a.retired_at IS NULL ORDER BY 1, 2"
        )
        arms = cur.fetchall()
        cur.execute("SELECT count(*) FROM offer_policy_versions")
        policies = cur.fetchone()[0]
    assert result["assignments_inserted"] == result["users"] and again["assignments_inserted"] == 0
    assert set(result["offers"]) == {"new", "casual", "regular", "vip"}
    for _segment, held, total, offers in per_segment:
        assert 0.1 * total < held < 0.3 * total and offers == 1
    # generated offers: per segment up to ARMS_PER_SEGMENT catalog products at generated
    # discounts, each a live arm whose prior is the model's predicted rate, shares summing to 1
    assert again["arms"] == result["arms"] and policies == 1 == again["policy_version"]
    for segment, codes in result["arms"].items():
        assert result["offers"][segment] in codes and 1 <= len(codes) <= ARMS_PER_SEGMENT
    assert len(arms) == sum(len(c) for c in result["arms"].values())
    for segment, code, product, pct, offer_segment, prior_alpha, prior_beta, alpha, _share in arms:
        assert code == generated_code(segment, product, pct) and offer_segment == segment
        assert product in PRODUCT_PRICES_CENTS and pct in GENERATED_DISCOUNTS
        assert prior_alpha + prior_beta == pytest.approx(PRIOR_IMPRESSIONS) and alpha == prior_alpha
    for segment in result["arms"]:
        assert sum(a[-1] for a in arms if a[0] == segment) == pytest.approx(1.0)
    # a tight budget picks offers whose expected discount fits it
    with cursor(offers_dsn) as cur:
        cur.execute("DELETE FROM offer_decisions")
        cur.execute("DELETE FROM offer_policy_versions")
        cur.execute("DELETE FROM offer_publications")
        cur.execute("DELETE FROM offer_assignments")
        tight = jobs.assign_offers(
            cur, s3, holdout_share=0.2, budget_cents=result["expected_discount_cents"] / 2
        )
    assert tight["expected_discount_cents"] <= result["expected_discount_cents"] / 2
