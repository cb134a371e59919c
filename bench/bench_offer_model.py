"""The offer model against the best possible and against a logistic-regression peer.

Impressions are drawn with labels from the demo generator's own response model
(devstack.demo_data.RESPONSE_MODEL), so the true redemption probability of every holdout row is known
and the Bayes-optimal AUC on that sample is computable. Features: segment, channel and offer
uniform over the seed's values (offers as the seed shows them: uniformly), recency
exponential (mean 12 days, capped at 180), visits in 30 days Poisson(3), organic spend
log-normal (median $40, a quarter of users at 0). The last BENCH_OFFER_HOLDOUT rows are the
holdout (the sample has no time order; in the DAG the split is by time).

Prints:
- `offer_model_auc_vs_bayes: ratio=X (ours/peer)`: our calibrated pipeline's holdout AUC over the
  true model's (goal >= 0.97), trained on BENCH_OFFER_ROWS (default 100k) rows;
- `offer_model_auc_vs_logreg: ratio=X (ours/peer)`: over a one-hot logistic regression trained on
  the same rows (goal >= 1.0);
- `offer_model_train_scaling: ratio=X (1M rows/100k rows)`: training time at 10x the rows
  (goal near 10, i.e. linear; median of BENCH_OFFER_ROUNDS rounds);
- `offer_policy_regret: ratio=X (ours/uniform)`: regret of the served policy over
  BENCH_POLICY_DECISIONS (default 10,000) simulated decisions against the best fixed offer per
  segment in hindsight (the oracle), ours over uniform random serving's (goal <= 0.3). The
  offers are what the retrain proposes from our trained model (`policy.propose_offers`), the
  arms' priors its predictions (`policy.model_prior`); users arrive at random, each shown an
  offer drawn from the current shares (`policy.thompson_shares`, exploration floor 0.1) and
  redeeming with the true model's probability; the shares are refreshed every
  BENCH_POLICY_ROUND decisions (default 250: an hourly offer_feedback at 250 visits an hour).
  Regret is in expected value (cents): the oracle's arm's mean value in the user's segment
  minus the served arm's. Both policies see the same users in the same order.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import pandas as pd

from devstack.demo_data import (
    CHANNELS,
    DISCOUNT_LEVELS,
    PRODUCT_PRICES_CENTS,
    RESPONSE_MODEL,
    SEGMENTS,
)
from include.offers.model import (
    FEATURES,
    build_baseline,
    build_pipeline,
    fit,
    offer_value_cents,
    predict,
    predict_each_offer,
)
from include.offers.policy import model_prior, offer_grid, propose_offers, score_offers, thompson_shares

ROWS = int(os.environ.get("BENCH_OFFER_ROWS", "100000"))
HOLDOUT = int(os.environ.get("BENCH_OFFER_HOLDOUT", "50000"))
ROUNDS = int(os.environ.get("BENCH_OFFER_ROUNDS", "1"))
POLICY_DECISIONS = int(os.environ.get("BENCH_POLICY_DECISIONS", "10000"))
POLICY_ROUND = int(os.environ.get("BENCH_POLICY_ROUND", "250"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def impressions(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """n impressions with features and labels, and the true probabilities behind the labels."""
    rng = np.random.default_rng(seed)
    spend = np.where(rng.random(n) < 0.25, 0, np.round(np.exp(rng.normal(np.log(4000), 1.0, n))))
    frame = pd.DataFrame(
        {
            "recency_days": np.minimum(rng.exponential(12.0, n), 180.0),
            "frequency_30d": rng.poisson(3.0, n),
            "spend_cents": spend,
            "discount_pct": rng.choice(np.array(DISCOUNT_LEVELS, dtype=float), n),
            "segment": rng.choice(SEGMENTS, n),
            "channel": rng.choice(CHANNELS, n),
            "product": rng.choice(list(PRODUCT_PRICES_CENTS), n),
        }
    )
    truth = RESPONSE_MODEL.probability(**{k: frame[k].to_numpy() for k in FEATURES})
    frame["redeemed"] = rng.random(n) < truth
    return frame, truth


def timed_fit(pipeline, frame: pd.DataFrame) -> float:
    start = time.perf_counter()
    fit(pipeline, frame)
    return time.perf_counter() - start


def main() -> int:
    from sklearn.metrics import roc_auc_score

    frame, truth = impressions(ROWS + HOLDOUT, seed=11)
    train, holdout = frame.iloc[:ROWS], frame.iloc[ROWS:]
    y = holdout["redeemed"].to_numpy()
    ours = fit(build_pipeline(), train)
    peer = fit(build_baseline(), train)
    auc_ours = roc_auc_score(y, predict(ours, holdout))
    auc_bayes = roc_auc_score(y, truth[ROWS:])
    auc_logreg = roc_auc_score(y, predict(peer, holdout))
    log(f"{ROWS} training rows, {HOLDOUT} holdout rows ({y.mean():.3f} redeemed)")
    print(
        f"offer_model_auc_vs_bayes: ratio={auc_ours / auc_bayes:.4f} (ours/peer) "
        f"ours={auc_ours:.4f} bayes_optimal={auc_bayes:.4f} goal>=0.97"
    )
    print(
        f"offer_model_auc_vs_logreg: ratio={auc_ours / auc_logreg:.4f} (ours/peer) "
        f"ours={auc_ours:.4f} logistic_regression={auc_logreg:.4f} goal>=1.0"
    )

    policy_regret(ours)

    small, _ = impressions(100_000, seed=12)
    large, _ = impressions(1_000_000, seed=13)
    small_s, large_s = [], []
    for _ in range(ROUNDS):  # interleaved, so a busy machine slows both alike
        small_s.append(timed_fit(build_pipeline(), small))
        large_s.append(timed_fit(build_pipeline(), large))
    t_small, t_large = statistics.median(small_s), statistics.median(large_s)
    print(
        f"offer_model_train_scaling: ratio={t_large / t_small:.2f} (1M rows/100k rows) "
        f"100k={t_small:.1f}s 1M={t_large:.1f}s goal near 10"
    )
    return 0


def policy_regret(pipeline, seed: int = 21) -> tuple[float, float]:
    """Regret of our served policy and of uniform random serving (see the module docstring)."""
    users, _ = impressions(4_000, seed=seed)
    users = users.drop(columns=["discount_pct", "product", "redeemed"])
    grid = offer_grid()
    arms = pd.DataFrame(
        [
            (o.segment, o.product, o.discount_pct, o.rate)
            for o in propose_offers(
                score_offers(lambda u, o: predict_each_offer(pipeline, u, o), users, grid), grid, 1e12
            )
        ],
        columns=["segment", "product", "discount_pct", "predicted"],
    )
    arms["value_cents"] = offer_value_cents(arms["product"], arms["discount_pct"])
    arms["cost_cents"] = 0.0
    # the truth: each user's redemption probability for each arm of the user's segment
    truth = {}
    for segment, part in arms.groupby("segment"):
        who = users[users["segment"] == segment]
        truth[segment] = np.column_stack(
            [
                RESPONSE_MODEL.probability(
                    **{k: who[k].to_numpy() for k in FEATURES if k not in ("product", "discount_pct")},
                    product=np.full(len(who), a.product),
                    discount_pct=np.full(len(who), a.discount_pct),
                )
                for a in part.itertuples()
            ]
        )
    mean_value = {
        s: truth[s].mean(axis=0) * arms[arms["segment"] == s]["value_cents"].to_numpy() for s in truth
    }
    oracle = {s: v.max() for s, v in mean_value.items()}

    rng = np.random.default_rng(seed)
    segments = rng.choice(sorted(truth), POLICY_DECISIONS)
    picks_user = {s: rng.integers(0, len(truth[s]), POLICY_DECISIONS) for s in truth}
    draws = rng.random((POLICY_DECISIONS, 2))

    def play(served_by_us: bool, model_priors: bool = True) -> tuple[float, float]:
        posterior = {
            s: np.array([model_prior(r) if model_priors else (1.0, 1.0) for r in part["predicted"]])
            for s, part in arms.groupby("segment")
        }
        counts = {s: np.zeros((len(p), 2)) for s, p in posterior.items()}  # impressions, redemptions
        shares: dict[str, np.ndarray] = {}
        regret = value = 0.0
        for i, segment in enumerate(segments):
            if i % POLICY_ROUND == 0:  # offer_feedback: fold what came in, publish new shares
                for s, part in arms.groupby("segment"):
                    k = len(part)
                    if not served_by_us:
                        shares[s] = np.full(k, 1 / k)
                        continue
                    imp, red = counts[s][:, 0], counts[s][:, 1]
                    state = part.assign(alpha=posterior[s][:, 0] + red, beta=posterior[s][:, 1] + imp - red)
                    shares[s] = thompson_shares(
                        state, min_exploration=0.1, budget_per_impression_cents=None, seed=seed + i
                    ).to_numpy()
            arm = min(
                int(np.searchsorted(np.cumsum(shares[segment]), draws[i, 0] * shares[segment].sum())),
                len(shares[segment]) - 1,
            )
            user = picks_user[segment][i]
            redeemed = draws[i, 1] < truth[segment][user, arm]
            counts[segment][arm] += (1, redeemed)
            regret += oracle[segment] - mean_value[segment][arm]
            value += mean_value[segment][arm]
        return regret, value

    ours_regret, ours_value = play(True)
    uniform_regret, uniform_value = play(False)
    flat_regret, _ = play(True, model_priors=False)
    oracle_value = sum(oracle[s] for s in segments)
    log(f"{len(arms)} arms, {len(truth)} segments, {POLICY_DECISIONS} decisions, shares every {POLICY_ROUND}")
    print(
        f"offer_policy_regret: ratio={ours_regret / uniform_regret:.3f} (ours/uniform) "
        f"ours={ours_regret:.0f} uniform={uniform_regret:.0f} cents of expected value below the oracle "
        f"(ours reaches {ours_value / oracle_value:.3f} of the oracle's value, uniform "
        f"{uniform_value / oracle_value:.3f}; with flat priors instead of the model's, ratio "
        f"{flat_regret / uniform_regret:.3f}) goal<=0.3"
    )
    return ours_regret, uniform_regret


if __name__ == "__main__":
    raise SystemExit(main())
