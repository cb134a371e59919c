"""The redemption model: training rows, quarantine, a calibrated Pipeline, a time split, metrics."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.offers.products import IMPRESSION_FEATURES_SQL, PRODUCT_PRICES_CENTS

MODEL_NAME = "offer_redemption"
NUMERIC = ["recency_days", "frequency_30d", "spend_cents", "discount_pct"]
CATEGORICAL = ["segment", "channel", "product"]
FEATURES = NUMERIC + CATEGORICAL
LABEL = "redeemed"
# The share of a full-price sale the business keeps; a discount is paid out of it.
MARGIN_RATE = 0.8

# Every impression with its features as of that moment (the seed's documented definition).
TRAINING_ROWS_SQL = f"SELECT * FROM ({IMPRESSION_FEATURES_SQL}) AS impressions"  # noqa: S608


# --- bad input -------------------------------------------------------------------------------


def quarantine_reasons(frame: pd.DataFrame, now: datetime) -> pd.Series:
    """Why each row cannot be trained on (None when it can): the first failed check wins."""
    checks = [
        (frame["occurred_at"] > pd.Timestamp(now), "future timestamp"),
        (frame["spend_cents"] < 0, "negative amount"),
        (frame["recency_days"] < 0, "negative recency"),
        (frame["frequency_30d"] < 0, "negative frequency"),
        (~frame["discount_pct"].between(0, 100), "discount outside 0-100"),
        (~frame["product"].isin(list(PRODUCT_PRICES_CENTS)), "unknown product"),
        (frame[FEATURES].isna().any(axis=1), "missing feature"),
    ]
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for failed, reason in reversed(checks):
        reasons = reasons.mask(failed.fillna(True).astype(bool), reason)
    return reasons


# --- the pipeline ------------------------------------------------------------------------------


def build_pipeline(seed: int = 7):
    """Ordinal-encoded categories into gradient-boosted trees, probabilities calibrated.

    Trees find the segment x product affinities without hand-made crosses; sigmoid calibration
    (3 folds) keeps each tree model's ranking and corrects its probabilities.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    encode = ColumnTransformer(
        [
            ("numeric", "passthrough", NUMERIC),
            (
                "categorical",
                OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                CATEGORICAL,
            ),
        ]
    )
    trees = HistGradientBoostingClassifier(
        max_iter=150,
        learning_rate=0.06,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        categorical_features=list(range(len(NUMERIC), len(FEATURES))),
        early_stopping=False,
        random_state=seed,
    )
    calibrated = CalibratedClassifierCV(trees, method="sigmoid", cv=3)
    return Pipeline([("encode", encode), ("classifier", calibrated)])


def build_baseline():
    """The peer: one-hot categories and scaled numbers into a logistic regression."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    encode = ColumnTransformer(
        [
            ("numeric", StandardScaler(), NUMERIC),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    return Pipeline([("encode", encode), ("classifier", LogisticRegression(max_iter=1000))])


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    train_from: datetime
    valid_from: datetime
    valid_to: datetime


def time_split(frame: pd.DataFrame, valid_days: float = 21) -> Split:
    """Train on the past, validate on the most recent `valid_days` of impressions."""
    if frame.empty:
        raise ValueError("time_split needs training rows, got none")
    end = frame["occurred_at"].max()
    cut = end - timedelta(days=valid_days)
    train, valid = frame[frame["occurred_at"] < cut], frame[frame["occurred_at"] >= cut]
    for name, part in (("train", train), ("valid", valid)):
        if part[LABEL].nunique() < 2:
            raise ValueError(
                f"time_split: the {name} part ({len(part)} rows before/after {cut}) needs both "
                "redeemed and not-redeemed rows"
            )
    return Split(train, valid, frame["occurred_at"].min(), cut, end)


def fit(pipeline, frame: pd.DataFrame):
    return pipeline.fit(frame[FEATURES], frame[LABEL].astype(int))


def predict(pipeline, frame: pd.DataFrame) -> np.ndarray:
    return pipeline.predict_proba(frame[FEATURES])[:, 1]


def predict_each_offer(pipeline, users: pd.DataFrame, offers: pd.DataFrame) -> np.ndarray:
    """P(redeem) of every user (rows) for every offer (columns), in one predict call.

    One call over all pairs rather than one per offer: on a busy machine each call's thread
    pool start-up and synchronisation cost more than the trees themselves.
    """
    pairs = pd.concat(
        [users.assign(product=o.product, discount_pct=float(o.discount_pct)) for o in offers.itertuples()],
        ignore_index=True,
    )
    return predict(pipeline, pairs).reshape(len(offers), len(users)).T


# --- metrics ---------------------------------------------------------------------------------


def offer_value_cents(product: Any, discount_pct: Any) -> np.ndarray:
    """What one redemption is worth: the margin of the sale minus the discount paid."""
    price = pd.Series(product).map(PRODUCT_PRICES_CENTS).to_numpy(dtype=float)
    return price * (MARGIN_RATE - np.asarray(discount_pct, dtype=float) / 100)


def policy_value(pipeline, valid: pd.DataFrame, offers: pd.DataFrame) -> float:
    """Expected ROI per impression (cents) of showing each user the offer the model rates best.

    Impressions showed an offer drawn uniformly from `offers`, so rows whose logged offer equals
    the policy's choice, weighted by the number of offers, estimate the policy's value without
    bias (inverse propensity scoring).
    """
    p = predict_each_offer(pipeline, valid, offers)
    scores = p * offer_value_cents(offers["product"], offers["discount_pct"])[None, :]
    chosen = offers.iloc[scores.argmax(axis=1)]
    match = (chosen["product"].to_numpy() == valid["product"].to_numpy()) & (
        chosen["discount_pct"].to_numpy(dtype=float) == valid["discount_pct"].to_numpy(dtype=float)
    )
    realised = valid[LABEL].to_numpy(dtype=float) * offer_value_cents(valid["product"], valid["discount_pct"])
    return float(np.mean(np.where(match, realised * len(offers), 0.0)))


def calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over `bins` equal-count bins of the predictions, the mean of
    |observed rate − mean prediction|, weighted by each bin's rows."""
    chunks = np.array_split(np.argsort(p, kind="stable"), min(bins, len(p)))
    return float(sum(len(c) * abs(y[c].mean() - p[c].mean()) for c in chunks) / len(p))


def evaluate(pipeline, valid: pd.DataFrame, offers: pd.DataFrame | None = None) -> dict[str, Any]:
    """ROC AUC, log loss, Brier score, calibration curve and error, spread and policy ROI (the
    policy's expected value per impression) on `valid`."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score, roc_curve

    y = valid[LABEL].astype(int).to_numpy()
    p = predict(pipeline, valid)
    fpr, tpr, _ = roc_curve(y, p)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    metrics = {
        "auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "calibration_error": calibration_error(y, p),
        "prediction_std": float(np.std(p)),
        "rows": len(valid),
        "positive_rate": float(y.mean()),
        "calibration": {"predicted": predicted.tolist(), "observed": observed.tolist()},
        "roc": _thin(fpr, tpr),
    }
    if offers is not None:
        metrics["policy_roi_cents_per_impression"] = policy_value(pipeline, valid, offers)
    return metrics


def _thin(x: np.ndarray, y: np.ndarray, points: int = 101) -> dict[str, list[float]]:
    """At most `points` points of a curve, enough to plot it."""
    keep = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).astype(int))
    return {"x": x[keep].round(4).tolist(), "y": y[keep].round(4).tolist()}


# --- provenance --------------------------------------------------------------------------------


def data_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of the training rows' values, in row order."""
    hashed = pd.util.hash_pandas_object(frame[[*FEATURES, LABEL, "occurred_at"]], index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def code_version() -> str:
    """SHA-256 (12 hex digits) of this package's sources: what trained a version."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]
