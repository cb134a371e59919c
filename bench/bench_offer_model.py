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
  (goal near 10, i.e. linear; median of BENCH_OFFER_ROUNDS rounds).
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
from include.offers.model import FEATURES, build_baseline, build_pipeline, fit, predict

ROWS = int(os.environ.get("BENCH_OFFER_ROWS", "100000"))
HOLDOUT = int(os.environ.get("BENCH_OFFER_HOLDOUT", "50000"))
ROUNDS = int(os.environ.get("BENCH_OFFER_ROUNDS", "1"))


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


if __name__ == "__main__":
    raise SystemExit(main())
