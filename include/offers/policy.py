"""Which offer each segment gets: expected ROI within a discount budget, a holdout, and a
Thompson-sampling bandit that shifts allocation between retrains."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from include.offers.model import offer_value_cents
from include.offers.products import PRODUCT_PRICES_CENTS

# Current features of every user, as IMPRESSION_FEATURES_SQL defines them for an impression at
# %(as_of)s; the channel is the user's signup channel (the one offers are sent through).
USER_FEATURES_SQL = """
SELECT u.id AS user_id, u.segment, u.signup_channel AS channel,
       least(coalesce(extract(epoch FROM %(as_of)s - max(e.occurred_at)
                      FILTER (WHERE e.event_type = 'visit')) / 86400, 180), 180)::float8
           AS recency_days,
       count(*) FILTER (WHERE e.event_type = 'visit'
                          AND e.occurred_at >= %(as_of)s - INTERVAL '30 days') AS frequency_30d,
       coalesce(sum(e.amount_cents) FILTER (WHERE e.event_type = 'purchase'), 0)::bigint
           AS spend_cents
FROM users u
LEFT JOIN user_events e ON e.user_id = u.id AND e.occurred_at < %(as_of)s
GROUP BY u.id
ORDER BY u.id
"""


def in_holdout(user_ids, share: float, salt: str) -> np.ndarray:
    """A random-looking but reproducible `share` of users: a hash of (salt, user) below share.

    A re-run with the same salt picks the same users, so assignments are idempotent.
    """
    buckets = [
        int.from_bytes(hashlib.sha256(f"{salt}:{u}".encode()).digest()[:8], "big") / 2**64 for u in user_ids
    ]
    return np.asarray(buckets) < share


def discount_cost_cents(product, discount_pct) -> np.ndarray:
    price = pd.Series(product).map(PRODUCT_PRICES_CENTS).to_numpy(dtype=float)
    return price * np.asarray(discount_pct, dtype=float) / 100


@dataclass(frozen=True)
class SegmentChoice:
    segment: str
    offer_id: int
    expected_roi_cents: float  # summed over the segment's treated users
    expected_discount_cents: float


def score_offers(predict, users: pd.DataFrame, offers: pd.DataFrame) -> pd.DataFrame:
    """Expected ROI and discount cost per (segment, offer), summed over the segment's users.

    `predict(users, offers)` gives P(redeem) of every user (rows) for every offer (columns).
    """
    p = predict(users, offers)  # users x offers
    value = offer_value_cents(offers["product"], offers["discount_pct"])
    cost = discount_cost_cents(offers["product"], offers["discount_pct"])
    rows = []
    for segment, index in users.groupby("segment").indices.items():
        expected = p[index].sum(axis=0)
        rows += [
            (segment, int(o), r, c)
            for o, r, c in zip(offers["id"], expected * value, expected * cost, strict=True)
        ]
    return pd.DataFrame(rows, columns=["segment", "offer_id", "roi", "cost"])


def choose_within_budget(scores: pd.DataFrame, budget_cents: float) -> list[SegmentChoice]:
    """One offer per segment maximising total expected ROI with expected discount <= budget.

    Starts from each segment's best offer; while over budget, makes the switch that gives up
    the least ROI per cent of discount saved. Raises ValueError when even the cheapest offers
    exceed the budget.
    """
    best = scores.loc[scores.groupby("segment")["roi"].idxmax()].set_index("segment")
    chosen = {s: (int(r.offer_id), r.roi, r.cost) for s, r in best.iterrows()}
    while sum(c for _, _, c in chosen.values()) > budget_cents:
        switches = []
        for segment, (_, roi, cost) in chosen.items():
            cheaper = scores[(scores["segment"] == segment) & (scores["cost"] < cost)]
            for r in cheaper.itertuples():
                switches.append(((roi - r.roi) / (cost - r.cost), segment, r))
        if not switches:
            raise ValueError(
                f"no offer set fits the discount budget of {budget_cents:.0f} cents; the cheapest "
                f"costs {sum(c for _, _, c in chosen.values()):.0f}"
            )
        _, segment, r = min(switches, key=lambda s: s[0])
        chosen[segment] = (int(r.offer_id), r.roi, r.cost)
    return [SegmentChoice(s, o, roi, cost) for s, (o, roi, cost) in sorted(chosen.items())]


# --- the feedback bandit ----------------------------------------------------------------------------


def thompson_shares(
    arms: pd.DataFrame,
    *,
    min_exploration: float,
    budget_per_impression_cents: float | None,
    draws: int = 4000,
    seed: int = 0,
) -> pd.Series:
    """Allocation shares per arm of one segment from its Beta posteriors.

    `arms` has alpha, beta, value_cents (worth of a redemption) and cost_cents (discount paid on
    one). Each draw samples every arm's redemption rate and picks the arm of highest sampled
    value; an arm's share is how often it wins. Guardrails, in order: every arm keeps at least
    `min_exploration / len(arms)`; then, when the expected discount per impression exceeds
    the budget, allocation moves to the cheapest arm just enough to meet it.
    """
    rng = np.random.default_rng(seed)
    k = len(arms)
    sampled = rng.beta(arms["alpha"].to_numpy(), arms["beta"].to_numpy(), size=(draws, k))
    wins = np.bincount((sampled * arms["value_cents"].to_numpy()).argmax(axis=1), minlength=k)
    shares = (1 - min_exploration) * wins / draws + min_exploration / k
    if budget_per_impression_cents is not None:
        rate = (arms["alpha"] / (arms["alpha"] + arms["beta"])).to_numpy()
        cost = rate * arms["cost_cents"].to_numpy()
        spent = float(shares @ cost)
        cheapest = int(cost.argmin())
        if spent > budget_per_impression_cents and spent > cost[cheapest]:
            # mix with the cheapest arm: spent(t) = (1 - t) * spent + t * cost[cheapest]
            t = min(1.0, (spent - budget_per_impression_cents) / (spent - cost[cheapest]))
            shares = (1 - t) * shares
            shares[cheapest] += t
    return pd.Series(shares, index=arms.index)
