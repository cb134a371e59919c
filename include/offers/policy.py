"""Which offers each segment gets: offers generated from the model's predicted response within a
discount budget, a holdout, and a Thompson-sampling bandit that shifts allocation between
retrains (its shares, its model priors, and when an arm has lost long enough to retire)."""

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
    """Expected ROI and discount cost per (segment, offer), summed over the segment's users, and
    the mean predicted redemption rate (`rate`).

    `predict(users, offers)` gives P(redeem) of every user (rows) for every offer (columns).
    """
    p = predict(users, offers)  # users x offers
    value = offer_value_cents(offers["product"], offers["discount_pct"])
    cost = discount_cost_cents(offers["product"], offers["discount_pct"])
    rows = []
    for segment, index in users.groupby("segment").indices.items():
        expected = p[index].sum(axis=0)
        rows += [
            (segment, int(o), r, c, e / len(index))
            for o, r, c, e in zip(offers["id"], expected * value, expected * cost, expected, strict=True)
        ]
    return pd.DataFrame(rows, columns=["segment", "offer_id", "roi", "cost", "rate"])


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


# --- generated offers -----------------------------------------------------------------------------

# The discount levels a retrain may propose for any catalog product (the seed's offers have 0-30%).
GENERATED_DISCOUNTS = (5, 10, 15, 20, 25, 30, 35, 40)
ARMS_PER_SEGMENT = 4  # offers published per segment, each a bandit arm
# How many impressions the model's prediction is worth as a prior: enough to start from what the
# model believes, little enough that a few hundred impressions of feedback outweigh it.
PRIOR_IMPRESSIONS = 50.0


def generated_code(segment: str, product: str, discount_pct: float) -> str:
    """The deterministic code (and so offer row and Stripe ids) of a generated offer."""
    return f"GEN_{segment}_{product}_{int(discount_pct):02d}".upper()


def offer_grid() -> pd.DataFrame:
    """Every (catalog product, generated discount) pair, with a provisional id per row."""
    rows = [(p, float(d)) for p in PRODUCT_PRICES_CENTS for d in GENERATED_DISCOUNTS]
    grid = pd.DataFrame(rows, columns=["product", "discount_pct"])
    return grid.assign(id=range(len(grid)))


@dataclass(frozen=True)
class ProposedOffer:
    segment: str
    product: str
    discount_pct: float
    rate: float  # the model's mean predicted redemption rate over the segment's treated users
    expected_roi_cents: float
    expected_discount_cents: float
    pick: bool  # the segment's budgeted choice (its assignment); the others are further arms

    @property
    def code(self) -> str:
        return generated_code(self.segment, self.product, self.discount_pct)


def propose_offers(
    scores: pd.DataFrame, grid: pd.DataFrame, budget_cents: float, per_segment: int = ARMS_PER_SEGMENT
) -> list[ProposedOffer]:
    """New offers per segment from the model's predicted response, within the budget.

    `scores` is `score_offers` over `grid` (`offer_grid()`). Per segment and product, the
    discount of highest expected ROI; over those, `choose_within_budget` picks each segment's
    offer so the whole set fits `budget_cents`. The segment's other arms are its next best
    (product, discount) pairs of positive expected ROI whose expected discount is at most its
    pick's: whatever share the bandit gives them, the expected discount stays within budget.
    """
    scored = scores.merge(grid[["id", "product"]].rename(columns={"id": "offer_id"}), on="offer_id")
    best = scored.loc[scored.groupby(["segment", "product"])["roi"].idxmax()]
    picks = {c.segment: c.offer_id for c in choose_within_budget(best, budget_cents)}
    proposed = []
    for segment, part in best.groupby("segment"):
        pick = part[part["offer_id"] == picks[segment]].iloc[0]
        others = part[(part["offer_id"] != pick.offer_id) & (part["cost"] <= pick.cost) & (part["roi"] > 0)]
        for row in [pick, *others.nlargest(per_segment - 1, "roi").itertuples(index=False)]:
            offer = grid.iloc[int(row.offer_id)]
            proposed.append(
                ProposedOffer(
                    segment,
                    offer["product"],
                    float(offer["discount_pct"]),
                    float(row.rate),
                    float(row.roi),
                    float(row.cost),
                    int(row.offer_id) == picks[segment],
                )
            )
    return proposed


def model_prior(rate: float, strength: float = PRIOR_IMPRESSIONS) -> tuple[float, float]:
    """A Beta prior (alpha, beta) whose mean is the model's predicted rate, worth `strength`
    impressions."""
    rate = min(max(float(rate), 1e-3), 1 - 1e-3)
    return rate * strength, (1 - rate) * strength


# --- the feedback bandit ----------------------------------------------------------------------------

# Values within this fraction of the best sampled value count as a tie in a Thompson draw: arms
# the data cannot tell apart share traffic instead of one of them being starved by noise.
TIE_TOLERANCE = 0.05
# An arm whose win probability (its share before the exploration floor) stays below this is
# losing; one that has lost for `retire_after_days` is retired.
LOSING_WIN_SHARE = 0.01
# An arm whose chance of being within TIE_TOLERANCE of the leader is at least this is undecided:
# it keeps `min_exploration` of the traffic (not only its floor) until the data decide.
UNDECIDED_CHANCE = 0.01


def win_shares(
    arms: pd.DataFrame, *, draws: int = 4000, seed: int = 0, tie_tolerance: float = TIE_TOLERANCE
) -> np.ndarray:
    """How often each arm has the highest sampled value (ties within `tie_tolerance` split)."""
    rng = np.random.default_rng(seed)
    k = len(arms)
    sampled = rng.beta(arms["alpha"].to_numpy(), arms["beta"].to_numpy(), size=(draws, k))
    values = sampled * arms["value_cents"].to_numpy()
    best = values.max(axis=1, keepdims=True)
    winners = values >= best - tie_tolerance * np.abs(best)
    return (winners / winners.sum(axis=1, keepdims=True)).mean(axis=0)


def undecided(arms: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Arms that may still be as good as the leader: the chance that an arm's value is within
    `tie_tolerance` of the leader's expected value is at least UNDECIDED_CHANCE. The leader (the
    arm of highest expected value) is not counted."""
    from scipy.stats import beta as beta_distribution

    mean = arms["alpha"] / (arms["alpha"] + arms["beta"])
    value = arms["value_cents"].to_numpy()
    expected = mean.to_numpy() * value
    leader = int(expected.argmax())
    # P(rate * value >= (1 - tol) * leader's expected value), from each arm's Beta posterior
    threshold = np.divide(
        (1 - tie_tolerance) * expected[leader], value, where=value > 0, out=np.ones_like(value)
    )
    chance = beta_distribution.sf(np.clip(threshold, 0, 1), arms["alpha"], arms["beta"])
    result = (chance >= UNDECIDED_CHANCE) & (value > 0)
    result[leader] = False
    return result


def _keep_undecided_exploring(shares: np.ndarray, undecided_arms: np.ndarray, share: float) -> np.ndarray:
    """Raise every undecided arm to at least `share`, taking it from the arms above `share` in
    proportion to their excess. Without it, an arm that is as good as the leader but drew badly
    early keeps only the floor and takes many rounds to recover (Thompson sampling exploits
    its early luck); with it, it gathers evidence until the data tell the two apart."""
    shares = np.asarray(shares, dtype=float).copy()
    raise_to = np.where(undecided_arms, np.maximum(shares, share), shares)
    deficit = float((raise_to - shares).sum())
    excess = np.where(~undecided_arms, np.maximum(shares - share, 0), 0)
    if deficit <= 0 or excess.sum() < deficit:
        return shares
    return raise_to - excess * deficit / excess.sum()


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
    value; an arm's share is how often it wins (`win_shares`). Guardrails, in order: every arm
    keeps at least `min_exploration / len(arms)`; an `undecided` arm keeps `min_exploration`;
    then, when the expected discount per impression exceeds the budget, allocation moves to the
    cheapest arm just enough to meet it.
    """
    k = len(arms)
    shares = (1 - min_exploration) * win_shares(arms, draws=draws, seed=seed) + min_exploration / k
    shares = _keep_undecided_exploring(shares, undecided(arms), min_exploration)
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
