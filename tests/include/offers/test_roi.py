"""ROI and a free offer: its cost cannot be derived from what was paid (`/ (100 - pct)`)."""

from __future__ import annotations

import psycopg2
import pytest

from include.offers.roi import discount_cost_cents


def test_the_discount_cost_is_derived_from_what_was_paid_below_100_percent_only():
    assert discount_cost_cents(900, 10) == pytest.approx(100)  # list price 1000, paid 900
    assert discount_cost_cents(1, 99.99) == pytest.approx(9999)
    for pct in (100, 150, -1):
        with pytest.raises(ValueError, match="has no price to derive its cost from"):
            discount_cost_cents(0, pct)


def test_roi_refuses_an_assignment_of_a_free_offer_naming_it(app_dsn):
    """On a schema before revision 0009 (which now refuses such an offer): the ROI query divided
    by zero, and the whole roi_sync failed without saying which offer."""
    from include.migrations import upgrade
    from include.offers.jobs import compute_roi

    upgrade(app_dsn, "0008")
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO users (id, email, segment, signup_channel, country) OVERRIDING SYSTEM VALUE
                VALUES (1, 'a@example.com', 'new', 'web', 'US'), (2, 'b@example.com', 'new', 'web', 'US');
            INSERT INTO offers (code, product, discount_pct) VALUES ('FREE100', 'pro_monthly', 100);
            INSERT INTO model_versions (model_name, version, status, artifact_uri)
                VALUES ('offer_model', 1, 'champion', 's3://m/v1/model.skops');
            INSERT INTO offer_assignments (model_version_id, user_id, segment, offer_id, holdout, assigned_at)
                SELECT v.id, 1, 'new', o.id, false, now() - interval '1 day' FROM model_versions v, offers o;
            INSERT INTO payments (stripe_payment_id, user_id, offer_id, amount_cents, status, created_at)
                SELECT 'ch_1', 1, id, 0, 'succeeded', now() FROM offers;
        """)
        cur.execute("SELECT id FROM model_versions")
        [(version,)] = cur.fetchall()
        with pytest.raises(ValueError, match=r"FREE100 \(100%\)"):
            compute_roi(cur, version)
    conn.close()
