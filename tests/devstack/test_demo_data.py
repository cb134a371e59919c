"""The demo-data generator: sizes, determinism, row shapes, and the response model it follows."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import timedelta
from decimal import Decimal

import numpy as np
import psycopg2
import pytest

from devstack.demo_data import (
    AI_MODELS,
    ANCHOR,
    RESPONSE_MODEL,
    WINDOW_DAYS,
    OfferFeatures,
    UserFeatures,
    redemption_probability,
    seed,
    seed_if_empty,
)
from include.offers.products import IMPRESSION_FEATURES_SQL
from tests.project import ROOT

SEEDED_TABLES = ("execution_tasks", "users", "offers", "user_events", "payments")


def fetch(dsn: str, query: str, params: dict | None = None) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def execute(dsn: str, statement: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def table_counts(dsn: str) -> dict[str, int]:
    return {table: fetch(dsn, f"SELECT count(*) FROM {table}")[0][0] for table in SEEDED_TABLES}


def content_digest(dsn: str) -> dict[str, str]:
    """An md5 per table over all its rows, every column, in id order."""
    return {
        table: fetch(dsn, f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t.id)) FROM {table} t")[0][0]
        for table in SEEDED_TABLES
    }


def empty_tables(dsn: str) -> None:
    # identities restart too, so a second load into the same database is a load into a fresh one
    execute(dsn, f"TRUNCATE {', '.join(SEEDED_TABLES)} RESTART IDENTITY")


def schema_snapshot(dsn: str) -> list[tuple]:
    return fetch(
        dsn,
        """
        SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL
        SELECT 'constraint', conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2
        """,
    )


def test_counts_scale_linearly_with_scale(app_dsn):
    small = seed(app_dsn, scale=0.02)
    assert small == table_counts(app_dsn)
    empty_tables(app_dsn)
    large = seed(app_dsn, scale=0.04)
    assert large == table_counts(app_dsn)

    assert (small["execution_tasks"], large["execution_tasks"]) == (2_000, 4_000)
    assert (small["users"], large["users"]) == (400, 800)
    assert small["offers"] == large["offers"] == 40  # the catalog: products x discount levels
    # behaviour is drawn per user, so its volume follows the user count up to sampling noise
    for table in ("user_events", "payments"):
        assert 1.7 < large[table] / small[table] < 2.3, (table, small[table], large[table])
    assert 15 < large["user_events"] / large["users"] < 25


def test_a_tiny_scale_still_gives_one_row_of_each_sized_table(app_dsn):
    counts = seed(app_dsn, scale=1e-6)
    assert counts["execution_tasks"] == counts["users"] == 1
    assert counts == table_counts(app_dsn)


def test_same_seed_and_scale_give_identical_rows_across_processes(app_dsn):
    seed(app_dsn, scale=0.03)
    first = content_digest(app_dsn)
    empty_tables(app_dsn)
    # a second process through the CLI: hash randomisation or import order must not leak in
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "devstack.demo_data", "--dsn", app_dsn, "--scale", "0.03"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "user_events:" in done.stdout
    assert content_digest(app_dsn) == first

    empty_tables(app_dsn)
    seed(app_dsn, scale=0.03, seed=8)
    other = content_digest(app_dsn)
    assert other["execution_tasks"] != first["execution_tasks"]
    assert other["user_events"] != first["user_events"]


def test_seeding_leaves_the_schema_as_the_migrations_made_it(app_dsn):
    # the loader rebuilds secondary indexes and foreign keys after the rows; they must come back
    before = schema_snapshot(app_dsn)
    seed(app_dsn, scale=0.01)
    assert schema_snapshot(app_dsn) == before
    assert not fetch(
        app_dsn,
        "SELECT 1 FROM information_schema.columns"
        " WHERE table_name = 'execution_tasks' AND column_name = 'ai_model'",
    )


def test_execution_tasks_look_like_the_platform_s_history_and_backlog(app_dsn):
    counts = seed(app_dsn, scale=0.05)
    n = counts["execution_tasks"]

    ((with_model, idempotent, complete),) = fetch(
        app_dsn,
        """
        SELECT avg((payload ? 'ai_model')::int)::float8,
               count(idempotency_key),
               bool_and(payload ?& array['prompt', 'repo', 'inputs']
                        AND jsonb_typeof(payload -> 'inputs') = 'object')
        FROM execution_tasks
        """,
    )
    assert 0.27 < with_model < 0.33
    assert complete
    assert 0 < idempotent < n * 0.05
    named = fetch(app_dsn, "SELECT DISTINCT payload ->> 'ai_model' FROM execution_tasks")
    models = {m for (m,) in named if m is not None}
    assert models <= set(AI_MODELS) and len(models) > 1

    queued = fetch(
        app_dsn,
        "SELECT available_at, available_at <= now(), started_at, attempts FROM execution_tasks"
        " WHERE status = 'queued'",
    )
    assert len(queued) == round(n * 0.10)
    assert all(
        at == ANCHOR and claimable and started is None and attempts == 0
        for at, claimable, started, attempts in queued
    )

    ((historic_complete, first_created, last_finished),) = fetch(
        app_dsn,
        """
        SELECT bool_and(started_at IS NOT NULL AND finished_at >= started_at
                        AND duration_ms IS NOT NULL AND lease_token IS NULL),
               min(created_at), max(finished_at)
        FROM execution_tasks WHERE status IN ('succeeded', 'failed', 'dead')
        """,
    )
    assert historic_complete
    assert ANCHOR - timedelta(days=WINDOW_DAYS) <= first_created and last_finished <= ANCHOR
    assert {s for (s,) in fetch(app_dsn, "SELECT DISTINCT status FROM execution_tasks")} == {
        "succeeded",
        "failed",
        "dead",
        "queued",
    }

    durations = dict(
        fetch(app_dsn, "SELECT task_type, avg(duration_ms)::float8 FROM execution_tasks GROUP BY 1")
    )
    slow = min(durations["implementation"], durations["self_improvement"])
    assert slow > 5 * max(durations["idea"], durations["idea_implementation"])


def test_users_offers_and_payments_hang_together(app_dsn):
    seed(app_dsn, scale=0.05)
    segments = {s for (s,) in fetch(app_dsn, "SELECT DISTINCT segment FROM users")}
    channels = {c for (c,) in fetch(app_dsn, "SELECT DISTINCT signup_channel FROM users")}
    assert segments == {"new", "casual", "regular", "vip"}
    assert channels == {"web", "ios", "android", "partner"}

    offers = fetch(app_dsn, "SELECT DISTINCT discount_pct, status, stripe_coupon_id FROM offers")
    assert {d for d, _, _ in offers} == {Decimal(d) for d in (0, 5, 10, 20, 30)}
    assert {(s, c) for _, s, c in offers} == {("active", None)}

    # one succeeded payment per redemption (offer price after discount) and per purchase
    ((unmatched, paid_events, payments, bad_ids),) = fetch(
        app_dsn,
        """
        SELECT (SELECT count(*) FROM user_events e
                WHERE e.event_type IN ('redemption', 'purchase')
                  AND NOT EXISTS (SELECT 1 FROM payments p
                                  WHERE p.user_id = e.user_id AND p.created_at = e.occurred_at
                                    AND p.amount_cents = e.amount_cents
                                    AND p.offer_id IS NOT DISTINCT FROM e.offer_id)),
               (SELECT count(*) FROM user_events WHERE event_type IN ('redemption', 'purchase')),
               (SELECT count(*) FROM payments WHERE status = 'succeeded'),
               (SELECT count(*) FROM payments WHERE stripe_payment_id !~ '^pi_seed_[0-9]{6,}$')
        """,
    )
    assert (unmatched, bad_ids) == (0, 0)
    assert paid_events == payments > 0
    (full_price_redemptions,) = fetch(
        app_dsn,
        """
        SELECT count(*) FROM user_events e JOIN offers o ON o.id = e.offer_id
        WHERE e.event_type = 'redemption' AND o.discount_pct > 0
          AND e.amount_cents >= (SELECT max(p.amount_cents) FROM user_events p
                                 WHERE p.event_type = 'purchase')
        """,
    )[0]
    assert full_price_redemptions == 0
    (outside_window,) = fetch(
        app_dsn,
        "SELECT count(*) FROM user_events e JOIN users u ON u.id = e.user_id"
        " WHERE e.occurred_at < u.created_at OR e.occurred_at >= %(anchor)s"
        " OR e.occurred_at < %(anchor)s - interval '180 days'",
        {"anchor": ANCHOR},
    )[0]
    assert outside_window == 0


def test_seed_if_empty_seeds_once(app_dsn, monkeypatch):
    monkeypatch.setenv("SEED_SCALE", "0.02")
    first = seed_if_empty(app_dsn)
    assert first is not None and first["users"] == 400
    assert seed_if_empty(app_dsn) is None
    assert table_counts(app_dsn) == first


def test_seed_refuses_a_database_that_holds_data(app_dsn):
    seed(app_dsn, scale=0.01)
    before = content_digest(app_dsn)
    with pytest.raises(ValueError, match="execution_tasks, users"):
        seed(app_dsn, scale=0.01)
    assert content_digest(app_dsn) == before


def test_seed_names_a_bad_scale(monkeypatch):
    with pytest.raises(ValueError, match="-1"):
        seed("dbname=unused", scale=-1)
    monkeypatch.setenv("SEED_SCALE", "lots")
    with pytest.raises(ValueError, match="SEED_SCALE.*lots"):
        seed_if_empty("dbname=unused")


def test_redemption_probability_rises_with_discount_and_accepts_rows_as_mappings():
    user = UserFeatures(
        recency_days=3.0, frequency_30d=4, spend_cents=5_000, segment="regular", channel="web"
    )
    probabilities = [redemption_probability(user, OfferFeatures("pro_annual", d)) for d in (0, 5, 10, 20, 30)]
    assert all(0 < p < 1 for p in probabilities)
    assert probabilities == sorted(set(probabilities))

    # rows straight from SQL (numeric as Decimal) give the same answer as the dataclasses
    row = {"product": "pro_annual", "discount_pct": Decimal("10.00")}
    assert redemption_probability(asdict(user), row) == probabilities[2]
    vectorised = RESPONSE_MODEL.probability(
        recency_days=np.array([3.0, 3.0]),
        frequency_30d=np.array([4, 4]),
        spend_cents=np.array([5_000, 5_000]),
        segment=np.array(["regular", "regular"]),
        channel=np.array(["web", "web"]),
        discount_pct=np.array([0.0, 30.0]),
        product=np.array(["pro_annual", "pro_annual"]),
    )
    assert vectorised == pytest.approx([probabilities[0], probabilities[-1]])
    # each feature moves the probability the documented way
    stale = UserFeatures(
        recency_days=90.0, frequency_30d=0, spend_cents=0, segment="casual", channel="android"
    )
    assert redemption_probability(stale, OfferFeatures("pro_annual", 10)) < probabilities[2]


def test_generated_redemptions_follow_the_response_model(app_dsn):
    seed(app_dsn, scale=0.05)
    rows = fetch(app_dsn, IMPRESSION_FEATURES_SQL)
    assert len(rows) > 2_000
    by_discount: dict[float, list[float]] = {}  # discount -> [expected, variance, observed, shown]
    for *_, recency, frequency, spend, segment, channel, discount, product, redeemed in rows:
        p = redemption_probability(
            UserFeatures(recency, frequency, spend, segment, channel),
            OfferFeatures(product, discount),
        )
        tally = by_discount.setdefault(discount, [0.0, 0.0, 0, 0])
        tally[0] += p
        tally[1] += p * (1 - p)
        tally[2] += redeemed
        tally[3] += 1

    assert sorted(by_discount) == [0, 5, 10, 20, 30]
    for discount, (expected, variance, observed, _) in by_discount.items():
        # the features recomputed from the tables give back the probabilities the rows were drawn from
        assert abs(observed - expected) <= 4 * math.sqrt(variance) + 2, (
            discount,
            observed,
            expected,
        )
    rates = [by_discount[d][2] / by_discount[d][3] for d in (0, 10, 20, 30)]
    assert rates == sorted(rates) and rates[-1] > 2 * rates[0]

    expected = sum(t[0] for t in by_discount.values())
    observed = sum(t[2] for t in by_discount.values())
    assert abs(observed - expected) <= 4 * math.sqrt(sum(t[1] for t in by_discount.values()))
    (redemptions,) = fetch(app_dsn, "SELECT count(*) FROM user_events WHERE event_type = 'redemption'")[0]
    assert abs(redemptions - observed) <= 0.02 * redemptions  # labels match events but for repeats
