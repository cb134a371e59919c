"""Demo customers: they see the offers published to Stripe and pay for them, in localstripe.

Production has real customers, whose payments reach Stripe and whose visits reach `user_events`
on their own; this module stands in for them on the local stack only (the `customers` service of
`make up`), so that roi_sync has payments to sync and offer_feedback has redemptions to learn from.

The customers follow the demo generator's known response model (`devstack.demo_data`):

- Every user of the live assignment visits once during `SIMULATED_DAYS` after the assignment.
- A user would buy at full price anyway ("organic") with the probability the seed's visit and
  purchase rates give over those days, a product drawn by the segment's taste, as in the seed.
- A treated user is shown the offer the platform serves at that visit
  (`include.offers.serving.decide`: drawn from the bandit's current shares over the segment's
  published offers, and recorded as an impression), and redeems it with `RESPONSE_MODEL`'s
  probability for the user's features at assignment time. A redeemer buys once,
  with the coupon: one who would have bought anyway now pays less (what makes revenue attributed
  to offers overstate their incremental effect).
- A holdout user is shown nothing and buys only organically: the control group.

Every draw comes from a generator seeded with (seed, model version), in user order: the same
seed gives the same customers. Each purchase is a Stripe charge (a customer per user, metadata
naming user, segment, offer and coupon); the visit, impression, click, redemption and purchase
go to `user_events` as the product would record them. A re-run creates nothing twice: charges
already in Stripe for this database and version are found by their metadata and skipped, and the
events are written in the same transaction as the `sync_cursors` mark that says the version is
done.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from devstack.demo_data import (
    PRODUCT_PRICES_CENTS,
    RESPONSE_MODEL,
    SEGMENT_PURCHASE_PER_VISIT,
    SEGMENT_VISITS_PER_DAY,
)

SIMULATED_DAYS = 7.0
TEST_CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}


def marker(model_version_id: int) -> str:
    """The `sync_cursors` row that says this version's customers have been played."""
    return f"customers_simulated_mv{model_version_id}"


def visit_times(n: int, *, seed: int, model_version_id: int, start: datetime, days: float) -> pd.Series:
    """When each of `n` users (in user order) visits: the plan's own draws, so the same seed
    gives the same times."""
    draws = np.random.default_rng([seed, model_version_id]).random((n, 5))
    return pd.Timestamp(start) + pd.to_timedelta(draws[:, 3] * days, unit="D").round("us")


def plan(
    users: pd.DataFrame,
    offers: pd.DataFrame,
    *,
    seed: int,
    model_version_id: int,
    start: datetime,
    days: float = SIMULATED_DAYS,
) -> pd.DataFrame:
    """What each user does; a pure function of its arguments.

    `users`: user_id, segment, holdout, channel, recency_days, frequency_30d, spend_cents (the
    features at assignment time). `offers`: per user shown an offer (indexed by user_id), its
    offer_id, product, discount_pct and coupon. Returns one row per user: shown (offer_id or
    NA), redeemed, product, amount_cents (0: no purchase), coupon, visit_at and paid_at.
    """
    users = users.sort_values("user_id").reset_index(drop=True)
    n = len(users)
    draws = np.random.default_rng([seed, model_version_id]).random((n, 5))
    segment = users["segment"].to_numpy(dtype=str)
    rate = pd.Series(segment).map(lambda s: SEGMENT_VISITS_PER_DAY[s] * SEGMENT_PURCHASE_PER_VISIT[s])
    organic = draws[:, 0] < 1 - np.exp(-rate.to_numpy() * days)
    products = list(PRODUCT_PRICES_CENTS)
    taste = {s: np.exp([RESPONSE_MODEL.affinity[s][p] for p in products]) for s in set(segment)}
    taste_cdf = np.array([np.cumsum(taste[s]) / taste[s].sum() for s in segment]).reshape(n, len(products))
    organic_product = np.array(products)[
        np.minimum((draws[:, [1]] > taste_cdf).sum(axis=1), len(products) - 1)
    ]

    offer = offers.reindex(users["user_id"])
    treated = ~users["holdout"].to_numpy(dtype=bool) & offer["offer_id"].notna().to_numpy()
    shown = pd.Series(offer["offer_id"].to_numpy(), dtype="Int64").where(treated)
    offer_product = offer["product"].fillna("pro_monthly").to_numpy(dtype=str)
    discount = offer["discount_pct"].fillna(0).to_numpy(dtype=float)
    p_redeem = RESPONSE_MODEL.probability(
        recency_days=users["recency_days"],
        frequency_30d=users["frequency_30d"],
        spend_cents=users["spend_cents"],
        segment=segment,
        channel=users["channel"].to_numpy(dtype=str),
        discount_pct=discount,
        product=offer_product,
    )
    redeemed = treated & (draws[:, 2] < p_redeem)

    price = pd.Series(offer_product).map(PRODUCT_PRICES_CENTS).to_numpy(dtype=float)
    paid_offer = np.round(price * (100 - discount) / 100).astype(np.int64)
    organic_price = pd.Series(organic_product).map(PRODUCT_PRICES_CENTS).to_numpy(dtype=np.int64)
    amount = np.where(redeemed, paid_offer, np.where(organic, organic_price, 0))
    visit_at = visit_times(n, seed=seed, model_version_id=model_version_id, start=start, days=days)
    # the purchase follows its visit by 1 to 30 minutes (a redemption: after the click)
    paid_at = visit_at + pd.to_timedelta(60 + draws[:, 4] * 1_740, unit="s").round("us")
    return pd.DataFrame(
        {
            "user_id": users["user_id"].astype(int),
            "segment": segment,
            "holdout": users["holdout"].astype(bool),
            "channel": users["channel"],
            "shown": shown,
            "redeemed": redeemed,
            "product": np.where(redeemed, offer_product, np.where(organic, organic_product, None)),
            "amount_cents": amount,
            "coupon": pd.Series(offer["coupon"].to_numpy()).where(redeemed, None),
            "visit_at": visit_at,
            "paid_at": paid_at,
        }
    )


def _listed(service) -> list[dict[str, Any]]:
    """Every object of a Stripe list endpoint, as plain dicts."""
    return [o.to_dict() for o in service.list({"limit": 100}).auto_paging_iter()]


def _live_coupons(cur, client, model_version_id: int) -> dict[str, float] | None:
    """The version's coupons as Stripe has them (id -> percent off), or None while any of its
    publications is not in Stripe yet."""
    cur.execute(
        "SELECT stripe_coupon_id, published_at IS NOT NULL FROM offer_publications"
        " WHERE model_version_id = %s AND retired_at IS NULL",
        (model_version_id,),
    )
    rows = cur.fetchall()
    if not rows or not all(published for _, published in rows):
        return None
    wanted = {coupon for coupon, _ in rows}
    coupons = {
        c["id"]: float(c["percent_off"])
        for c in _listed(client.v1.coupons)
        if c["id"] in wanted and (c.get("metadata") or {}).get("model_version_id") == str(model_version_id)
    }
    return coupons if len(coupons) == len(wanted) else None


def _served_offers(cur, users: pd.DataFrame, visits: pd.Series, coupons: dict[str, float]) -> pd.DataFrame:
    """Each treated user's offer as the platform serves it (`include.offers.serving.decide`,
    recorded as an impression at the user's visit), with Stripe's percent off."""
    from include.offers.serving import decide

    rows = []
    for user_id, visit_at in zip(users["user_id"], visits, strict=True):
        [decision] = decide(cur, [int(user_id)], at=visit_at.to_pydatetime())
        if decision.offer_id is not None:
            rows.append((decision.user_id, decision.offer_id, decision.stripe_coupon_id))
    served = pd.DataFrame(rows, columns=["user_id", "offer_id", "coupon"])
    cur.execute("SELECT id, product FROM offers WHERE id = ANY(%s)", (served["offer_id"].unique().tolist(),))
    product_of = dict(cur.fetchall())
    served["product"] = served["offer_id"].map(product_of)
    served["discount_pct"] = served["coupon"].map(coupons)
    return served.set_index("user_id")


def _assigned_users(cur, model_version_id: int) -> tuple[pd.DataFrame, datetime]:
    from include.offers.jobs import user_features

    cur.execute(
        "SELECT user_id, holdout, assigned_at FROM offer_assignments WHERE model_version_id = %s ORDER BY "
        "user_id",
        (model_version_id,),
    )
    rows = cur.fetchall()
    as_of = rows[0][2]
    features, _ = user_features(cur, as_of)
    assigned = pd.DataFrame([r[:2] for r in rows], columns=["user_id", "holdout"])
    return assigned.merge(features, on="user_id"), as_of


def _namespace(cur, model_version_id: int) -> str:
    """Whose charges these are: one Stripe account may serve several app databases (tests)."""
    cur.execute("SELECT current_database()")
    return f"{cur.fetchone()[0]}/mv{model_version_id}"


def pay(client, purchases: pd.DataFrame, namespace: str) -> dict[str, int]:
    """A Stripe charge per purchase not yet in Stripe under `namespace`; returns counts."""
    done = {
        charge["metadata"].get("user_id")
        for charge in _listed(client.v1.charges)
        if (charge.get("metadata") or {}).get("simulation") == namespace
    }
    customers = {
        c["metadata"].get("user_id"): c["id"]
        for c in _listed(client.v1.customers)
        if (c.get("metadata") or {}).get("app") == namespace.split("/")[0]
    }
    created = 0
    for p in purchases.itertuples(index=False):
        user = str(p.user_id)
        if user in done:
            continue
        if user not in customers:
            method = client.v1.payment_methods.create({"type": "card", "card": TEST_CARD})
            customers[user] = client.v1.customers.create(
                {
                    "email": f"user{user}@demo.invalid",
                    "payment_method": method.id,
                    "invoice_settings": {"default_payment_method": method.id},
                    "metadata": {"app": namespace.split("/")[0], "user_id": user},
                }
            ).id
        metadata = {
            "simulation": namespace,
            "user_id": user,
            "segment": p.segment,
            "product": p.product,
        }
        if p.redeemed:  # (coupon is NaN, which is truthy, on the others)
            metadata |= {"coupon": p.coupon, "offer_id": str(p.shown)}
        client.v1.charges.create(
            {
                "amount": int(p.amount_cents),
                "currency": "usd",
                "customer": customers[user],
                "metadata": metadata,
            }
        )
        created += 1
    return {
        "charges_created": created,
        "charges_existing": len(done & set(purchases["user_id"].astype(str))),
    }


def _events(plan_: pd.DataFrame) -> list[tuple]:
    """user_events rows (user, offer, type, channel, amount, time) for what the customers did."""
    rows = []
    for p in plan_.itertuples(index=False):
        shown = None if pd.isna(p.shown) else int(p.shown)
        if shown is None and not p.amount_cents:
            continue  # neither shown an offer nor bought: nothing the product would record
        rows.append((p.user_id, None, "visit", p.channel, None, p.visit_at))
        # the impression itself was recorded by the decision that served the offer
        if p.redeemed:
            rows.append((p.user_id, shown, "click", p.channel, None, p.visit_at + timedelta(seconds=30)))
            rows.append((p.user_id, shown, "redemption", p.channel, int(p.amount_cents), p.paid_at))
        elif p.amount_cents:
            rows.append((p.user_id, None, "purchase", p.channel, int(p.amount_cents), p.paid_at))
    return [(int(u), o, t, c, a, ts.to_pydatetime()) for u, o, t, c, a, ts in rows]


def simulate(cur, client, *, seed: int, model_version_id: int | None = None) -> dict[str, Any]:
    """Play the customers of the live assignment (or `model_version_id`) once.

    Returns what was done, or {"status": "waiting"|"done", ...} when there is nothing to do:
    no assignment, offers not all in Stripe yet, or this version already played.
    """
    from psycopg2.extras import execute_values

    from include.offers.jobs import get_cursor, latest_assignment, set_cursor

    version = model_version_id or latest_assignment(cur)
    if version is None:
        return {"status": "waiting", "reason": "no offer assignment yet"}
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (marker(version),))
    if get_cursor(cur, marker(version), -1) >= 0:
        return {"status": "done", "model_version_id": version}
    coupons = _live_coupons(cur, client, version)
    if coupons is None:
        return {
            "status": "waiting",
            "reason": f"offers of model version {version} not all in Stripe yet",
        }
    users, as_of = _assigned_users(cur, version)
    users = users.sort_values("user_id").reset_index(drop=True)
    visits = visit_times(len(users), seed=seed, model_version_id=version, start=as_of, days=SIMULATED_DAYS)
    treated = ~users["holdout"].to_numpy(dtype=bool)
    offers = _served_offers(cur, users[treated], visits[treated], coupons)
    customers = plan(users, offers, seed=seed, model_version_id=version, start=as_of)
    purchases = customers[customers["amount_cents"] > 0]
    counts = pay(client, purchases, _namespace(cur, version))
    events = _events(customers)
    execute_values(
        cur,
        "INSERT INTO user_events (user_id, offer_id, event_type, channel, amount_cents, occurred_at) VALUES "
        "%s",
        events,
        page_size=5000,
    )
    set_cursor(cur, marker(version), len(purchases))
    treated = customers[~customers["holdout"]]
    return {
        "status": "simulated",
        "model_version_id": version,
        "users": len(customers),
        "shown": int(treated["shown"].notna().sum()),
        "redemptions": int(customers["redeemed"].sum()),
        "organic_purchases": int(((customers["amount_cents"] > 0) & ~customers["redeemed"]).sum()),
        "holdout_purchases": int(((customers["amount_cents"] > 0) & customers["holdout"]).sum()),
        "payments": len(purchases),
        "revenue_cents": int(purchases["amount_cents"].sum()),
        "redeemed_revenue_cents": int(purchases.loc[purchases["redeemed"], "amount_cents"].sum()),
        "events": len(events),
        **counts,
    }
