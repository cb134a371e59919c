"""Deterministic demo data for the app database, and the offer response model it is drawn from."""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii
from types import MappingProxyType
from typing import Any

import numpy as np

from include.ids import TASK_TYPES
from include.offers.products import PRODUCT_PRICES_CENTS

# Every timestamp is relative to this fixed instant, so a given seed and scale always give the
# same bytes; it lies in the past, so queued tasks (available_at = ANCHOR) are claimable now.
ANCHOR = datetime(2026, 6, 1, tzinfo=UTC)
WINDOW_DAYS = 180
WINDOW_START = ANCHOR - timedelta(days=WINDOW_DAYS)
DAY_MS = 86_400_000
WINDOW_MS = WINDOW_DAYS * DAY_MS

# Row counts at scale 1.0; users' behaviour (visits, offers shown, purchases) follows from these.
BASE_EXECUTION_TASKS = 100_000
BASE_USERS = 20_000
QUEUED_SHARE = 0.10
IDEMPOTENT_SHARE = 0.02
AI_MODEL_SHARE = 0.30

TASK_TYPE_SHARES = (0.35, 0.15, 0.30, 0.20)
# Real workloads repeat their inputs: a few are asked again and again, most seldom. Each task
# type's inputs (prompt, repo, inputs; the model is drawn apart) follow Zipf's law with this
# exponent over as many distinct inputs as the type has tasks: the k-th most popular input is
# asked with probability proportional to 1/k. The most popular one is then about 9% of its type's
# tasks at scale 1.0. Of the 10,000 queued tasks, 47% ask a model what another queued task
# asked it before them (the same type, input and model): what the task cache answers instead of
# the executor (28% of the 500 at scale 0.05).
INPUT_ZIPF_EXPONENT = 1.0
# Log-normal duration per type (median ms, sigma): the first two dominate the average on purpose.
TASK_DURATIONS = {
    "implementation": (180_000, 0.7),
    "self_improvement": (300_000, 0.8),
    "idea": (6_000, 0.5),
    "idea_implementation": (25_000, 0.6),
}
EXECUTOR_TIMEOUT_MS = 3_600_000
AI_MODELS = ("gpt-4.1", "claude-sonnet-4", "llama-3.1-70b", "gpt-4o-mini", "mistral-large-2")

SEGMENTS = ("new", "casual", "regular", "vip")
SEGMENT_SHARES = (0.25, 0.35, 0.30, 0.10)
# (min, max) days between signup and ANCHOR: "new" users signed up recently, VIPs long ago.
SEGMENT_AGE_DAYS = {"new": (0, 30), "casual": (0, 365), "regular": (30, 540), "vip": (90, 900)}
SEGMENT_VISITS_PER_DAY = {"new": 0.22, "casual": 0.05, "regular": 0.11, "vip": 0.22}
SEGMENT_PURCHASE_PER_VISIT = {"new": 0.03, "casual": 0.05, "regular": 0.08, "vip": 0.15}
CHANNELS = ("web", "ios", "android", "partner")
CHANNEL_SHARES = (0.45, 0.25, 0.20, 0.10)
COUNTRIES = ("US", "GB", "DE", "IN", "BR", "FR", "CA", "NL", "JP", "ES")
COUNTRY_SHARES = (0.35, 0.10, 0.10, 0.10, 0.08, 0.07, 0.06, 0.05, 0.05, 0.04)

DISCOUNT_LEVELS = (0, 5, 10, 20, 30)
IMPRESSION_PER_VISIT = 0.40
CLICK_WITHOUT_REDEMPTION = 0.08
RECENCY_CAP_DAYS = 180.0


# --- the response model ---------------------------------------------------------------------


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ResponseModel:
    """The true probability that a user redeems an offer they were shown; events are drawn from it.

    logit = intercept
            + recency   * log1p(min(recency_days, 180))
            + frequency * log1p(frequency_30d)
            + spend     * log1p(spend_cents / 100)
            + discount  * discount_pct
            + segment[user segment] + channel[impression channel]
            + affinity[user segment][offer product]

    The features are those of the impression event `e` (user `u`, time `t`), computable from the
    tables alone (see IMPRESSION_FEATURES_SQL):

    - recency_days: days from u's latest `visit` strictly before t to t; 180 when there is none.
    - frequency_30d: u's `visit` events in [t - 30 days, t).
    - spend_cents: sum of amount_cents of u's `purchase` events (organic, offer_id NULL) before t;
      redemptions are left out so that features never depend on earlier draws of this model.
    - segment: users.segment; channel: the impression's own user_events.channel.
    - discount_pct, product: the offer's columns.

    Each impression shows an offer drawn uniformly from all offers, so the log is an unbiased
    sample for offline evaluation. A model that knew these coefficients would be the best possible
    predictor: compare a trained model's log-loss or AUC against this one on the same impressions.
    At seed 7 and scale 1.0: 98k impressions, 10.6% redeemed (4% at 0% off, 22% at 30% off), and
    this model scores AUC 0.83, log-loss 0.263 on them.
    """

    intercept: float = -4.3
    recency: float = -0.45
    frequency: float = 0.30
    spend: float = 0.20
    discount: float = 0.07
    segment: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"new": 0.35, "casual": -0.25, "regular": 0.0, "vip": 0.45})
    )
    channel: Mapping[str, float] = field(
        default_factory=lambda: _frozen({"web": 0.0, "ios": 0.20, "android": -0.10, "partner": 0.30})
    )
    affinity: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: _frozen(
            {
                segment: _frozen(dict(zip(PRODUCT_PRICES_CENTS, values, strict=True)))
                for segment, values in {
                    # pro_monthly, pro_annual, team_seat, credits_1k, credits_10k, gpu, priority, api
                    "new": (0.5, -0.6, -0.4, 0.6, -0.3, 0.0, -0.2, -0.3),
                    "casual": (0.3, -0.3, -0.5, 0.4, 0.0, 0.1, 0.0, -0.2),
                    "regular": (0.0, 0.4, 0.2, -0.2, 0.4, 0.3, 0.2, 0.3),
                    "vip": (-0.4, 0.6, 0.6, -0.5, 0.5, 0.5, 0.4, 0.6),
                }.items()
            }
        )
    )

    def logit(
        self,
        *,
        recency_days: Any,
        frequency_30d: Any,
        spend_cents: Any,
        segment: Any,
        channel: Any,
        discount_pct: Any,
        product: Any,
    ) -> Any:
        """The log-odds of redemption; each argument is a scalar or an array of one length."""
        recency = np.minimum(np.asarray(recency_days, dtype=float), RECENCY_CAP_DAYS)
        return (
            self.intercept
            + self.recency * np.log1p(recency)
            + self.frequency * np.log1p(np.asarray(frequency_30d, dtype=float))
            + self.spend * np.log1p(np.asarray(spend_cents, dtype=float) / 100)
            + self.discount * np.asarray(discount_pct, dtype=float)
            + _lookup(self.segment, segment)
            + _lookup(self.channel, channel)
            + _lookup_pair(self.affinity, segment, product)
        )

    def probability(self, **features: Any) -> Any:
        """The redemption probability for scalars or arrays; arguments as for `logit`."""
        return 1.0 / (1.0 + np.exp(-self.logit(**features)))


def _lookup(table: Mapping[str, float], keys: Any) -> Any:
    if isinstance(keys, str):
        return table[keys]
    # factorise first: one dict lookup per distinct key, not per row
    uniques, codes = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    return np.array([table[key] for key in uniques], dtype=float)[codes]


def _lookup_pair(table: Mapping[str, Mapping[str, float]], outer: Any, inner: Any) -> Any:
    if isinstance(outer, str) and isinstance(inner, str):
        return table[outer][inner]
    outer_keys, outer_codes = np.unique(np.asarray(outer, dtype=str), return_inverse=True)
    inner_keys, inner_codes = np.unique(np.asarray(inner, dtype=str), return_inverse=True)
    grid = np.array([[table[o][i] for i in inner_keys] for o in outer_keys], dtype=float)
    return grid.reshape(len(outer_keys), len(inner_keys))[outer_codes, inner_codes]


RESPONSE_MODEL = ResponseModel()


@dataclass(frozen=True)
class UserFeatures:
    """What the response model knows about a user at the moment an offer is shown."""

    recency_days: float
    frequency_30d: int
    spend_cents: int
    segment: str
    channel: str


@dataclass(frozen=True)
class OfferFeatures:
    product: str
    discount_pct: float


def redemption_probability(
    user_features: UserFeatures | Mapping[str, Any],
    offer: OfferFeatures | Mapping[str, Any],
    model: ResponseModel = RESPONSE_MODEL,
) -> float:
    """The true probability that this user redeems this offer once shown it (pure)."""

    def get(source: Any, name: str) -> Any:
        return source[name] if isinstance(source, Mapping) else getattr(source, name)

    logit = model.logit(
        recency_days=float(get(user_features, "recency_days")),
        frequency_30d=float(get(user_features, "frequency_30d")),
        spend_cents=float(get(user_features, "spend_cents")),
        segment=str(get(user_features, "segment")),
        channel=str(get(user_features, "channel")),
        discount_pct=float(get(offer, "discount_pct")),  # numeric columns arrive as Decimal
        product=str(get(offer, "product")),
    )
    return 1.0 / (1.0 + math.exp(-float(logit)))


# --- generators: pure functions of (rng, sizes) returning column arrays ----------------------
# Integer columns use -1 for NULL, other columns None; times are milliseconds from WINDOW_START.


def _count(base: int, scale: float) -> int:
    return max(1, round(base * scale))


def _timestamps(ms: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """ISO-8601 UTC text for millisecond offsets from WINDOW_START; None where not `valid`."""
    start = np.datetime64(WINDOW_START.replace(tzinfo=None), "ms")
    text = np.datetime_as_string(start + ms.astype("timedelta64[ms]"), unit="ms", timezone="UTC")
    out = text.astype(object)
    if valid is not None:
        out[~valid] = None
    return out


REPOS = (
    "acme/web-app",
    "acme/billing",
    "acme/agent-core",
    "acme/infra",
    "acme/mobile",
    "acme/docs",
)
BRANCHES = ("main", "main", "main", "develop", "release/2026.05")
FEATURES = (
    "rate limiting",
    "pagination",
    "retry with backoff",
    "CSV export",
    "audit logging",
    "SSO login",
    "webhook signature checks",
    "dark mode",
    "bulk invite",
    "usage quotas",
)
FILES = (
    "api/handlers.py",
    "billing/service.py",
    "worker/queue.py",
    "web/settings.tsx",
    "auth/session.py",
    "reports/export.py",
    "agent/planner.py",
    "infra/terraform/main.tf",
)
METRICS = ("p95 latency", "error rate", "token usage", "flaky test count", "memory use")
COMPONENTS = ("the planner", "the code reviewer agent", "the test runner", "the retrieval step")
GOALS = (
    "improve onboarding",
    "cut churn among casual users",
    "speed up CI",
    "reduce support tickets",
    "raise trial conversion",
    "make the docs searchable",
)
AUDIENCES = ("engineering", "product", "support")
TASK_ERRORS = (
    "executor timeout after 3600s",
    "HTTP 502 from task executor",
    "HTTP 429 from model provider: rate limited",
    "invalid payload: inputs.branch does not exist",
    "tests failed after change: 3 failing",
    "context length exceeded: 131072 tokens",
)


def _payloads(rng: np.random.Generator, types: np.ndarray) -> list[str]:
    """Task payloads as JSON text: {"prompt", "repo", "inputs", and for ~30% "ai_model"}, the
    inputs repeating as INPUT_ZIPF_EXPONENT says.

    Built as text from JSON-quoted parts rather than by json.dumps per row: about twice as fast.
    """
    n = len(types)
    quote = encode_basestring_ascii  # a str as a JSON string literal, in C

    def pick(options: Sequence[Any]) -> list[Any]:
        # every draw is made for every row, whatever its type, so rows never shift each other
        return [options[i] for i in rng.integers(0, len(options), n).tolist()]

    repo = pick([quote(r) for r in REPOS])
    branch = pick([quote(b) for b in BRANCHES])
    feature = pick(FEATURES)
    n_files = rng.integers(1, 4, n).tolist()
    quoted_files = [quote(f) for f in FILES]
    file_order = np.argsort(rng.random((n, len(FILES))), axis=1).tolist()
    metric, component = pick(METRICS), pick(COMPONENTS)
    goal, audience = pick(GOALS), pick([quote(a) for a in AUDIENCES])
    number, count = rng.integers(1, 5000, n).tolist(), rng.integers(3, 11, n).tolist()
    max_tokens, temperature = pick((4096, 8192, 16384)), pick((0.0, 0.2, 0.7))
    minutes, hours = pick((15, 30, 60)), pick((1, 2, 4))
    model = pick([f',"ai_model":{quote(m)}' for m in AI_MODELS])
    with_model = (rng.random(n) < AI_MODEL_SHARE).tolist()

    cores = []
    for i, task_type in enumerate(types.tolist()):
        if task_type == "implementation":
            files = sorted(file_order[i][: n_files[i]])
            prompt = f"Implement {feature[i]} in {FILES[files[0]]}"
            inputs = (
                f'{{"branch":{branch[i]},"files":[{",".join(quoted_files[f] for f in files)}],'
                f'"max_tokens":{max_tokens[i]},"temperature":{temperature[i]}}}'
            )
        elif task_type == "self_improvement":
            prompt = f"Reduce the {metric[i]} of {component[i]}"
            inputs = (
                f'{{"branch":{branch[i]},"baseline_run":"run-{number[i]:05d}","budget_minutes":{minutes[i]}}}'
            )
        elif task_type == "idea":
            prompt = f"Suggest {count[i]} ideas to {goal[i]}"
            inputs = f'{{"count":{count[i]},"audience":{audience[i]}}}'
        else:
            prompt = f"Build a prototype of idea #{number[i]}: {goal[i]}"
            inputs = f'{{"idea_id":{number[i]},"branch":{branch[i]},"timebox_hours":{hours[i]}}}'
        cores.append(f'"prompt":{quote(prompt)},"repo":{repo[i]},"inputs":{inputs}')
    cores = _popular(rng, types, np.array(cores, dtype=object)).tolist()
    return [f"{{{core}{model[i] if with_model[i] else ''}}}" for i, core in enumerate(cores)]


def _popular(rng: np.random.Generator, types: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """`inputs` redrawn per task type by Zipf's law (INPUT_ZIPF_EXPONENT): the type's own inputs,
    in their random order, are its catalog from most to least popular."""
    out = inputs.copy()
    for task_type in TASK_TYPES:
        rows = np.flatnonzero(types == task_type)
        if not len(rows):
            continue
        weight = 1.0 / np.arange(1, len(rows) + 1) ** INPUT_ZIPF_EXPONENT
        out[rows] = inputs[rows[rng.choice(len(rows), len(rows), p=weight / weight.sum())]]
    return out


def _execution_tasks(rng: np.random.Generator, n: int, queued_share: float) -> dict[str, Any]:
    type_idx = rng.choice(len(TASK_TYPES), n, p=TASK_TYPE_SHARES)
    types = np.array(TASK_TYPES)[type_idx]
    n_queued = min(n, round(n * queued_share))
    queued = np.zeros(n, dtype=bool)
    queued[rng.permutation(n)[:n_queued]] = True
    historic = ~queued

    # historic rows over the whole window, backlog in the last two days before the anchor
    created = np.where(
        historic,
        rng.integers(0, WINDOW_MS - 2 * DAY_MS, n),
        rng.integers(WINDOW_MS - 2 * DAY_MS, WINDOW_MS, n),
    )
    status = np.where(
        historic,
        np.array(("succeeded", "failed", "dead"))[rng.choice(3, n, p=(0.86, 0.09, 0.05))],
        "queued",
    )
    max_attempts = np.where(types == "idea", 3, 5)
    attempts = np.select(
        [status == "succeeded", status == "failed", status == "dead"],
        [
            rng.choice((1, 2, 3), n, p=(0.90, 0.08, 0.02)),
            rng.integers(1, max_attempts),
            max_attempts,
        ],
        0,
    )
    median = np.array([TASK_DURATIONS[t][0] for t in TASK_TYPES], dtype=float)[type_idx]
    sigma = np.array([TASK_DURATIONS[t][1] for t in TASK_TYPES])[type_idx]
    duration = np.minimum(median * np.exp(sigma * rng.standard_normal(n)), EXECUTOR_TIMEOUT_MS)
    duration = duration.astype(np.int64)
    started = created + rng.exponential(20_000, n).astype(np.int64)
    finished = started + duration
    priority = np.array((0, 1, 2, 5))[rng.choice(4, n, p=(0.70, 0.15, 0.10, 0.05))]
    priority = np.where(types == "idea", 0, priority)
    error_idx = rng.integers(0, len(TASK_ERRORS), n)
    idempotent = rng.random(n) < IDEMPOTENT_SHARE
    tokens_in = rng.integers(500, 60_000, n)
    tokens_out = rng.integers(100, 12_000, n)
    payloads = np.array(_payloads(rng, types), dtype=object)

    results = np.full(n, None, dtype=object)
    ok = np.flatnonzero(status == "succeeded")
    results[ok] = [
        f'{{"summary":"{t} finished","tokens":{{"input":{a},"output":{b}}}}}'
        for t, a, b in zip(types[ok].tolist(), tokens_in[ok].tolist(), tokens_out[ok].tolist(), strict=True)
    ]
    errors = np.full(n, None, dtype=object)
    failed, dead = np.flatnonzero(status == "failed"), np.flatnonzero(status == "dead")
    errors[failed] = [TASK_ERRORS[e] for e in error_idx[failed].tolist()]
    errors[dead] = [
        f"gave up after {a} attempts: {TASK_ERRORS[e]}"
        for a, e in zip(attempts[dead].tolist(), error_idx[dead].tolist(), strict=True)
    ]
    keys = np.full(n, None, dtype=object)
    keyed = np.flatnonzero(idempotent)
    keys[keyed] = [f"seed-{types[i]}-{i:07d}" for i in keyed.tolist()]

    o = np.argsort(created, kind="stable")  # ids then grow with creation time
    h = historic[o]
    return {
        "task_type": types[o],
        "payload": payloads[o],
        "status": status[o],
        "priority": priority[o],
        "attempts": attempts[o],
        "max_attempts": max_attempts[o],
        # the backlog becomes claimable at the anchor, which lies in the past
        "available_at": _timestamps(np.where(h, created[o], WINDOW_MS)),
        "idempotency_key": keys[o],
        "created_at": _timestamps(created[o]),
        "updated_at": _timestamps(np.where(h, finished[o], created[o])),
        "started_at": _timestamps(started[o], h),
        "finished_at": _timestamps(finished[o], h),
        "duration_ms": np.where(h, duration[o], -1),
        "result": results[o],
        "error": errors[o],
    }


def _users(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    segment_idx = rng.choice(len(SEGMENTS), n, p=SEGMENT_SHARES)
    age_bounds = np.array([SEGMENT_AGE_DAYS[s] for s in SEGMENTS], dtype=float)[segment_idx]
    age_days = age_bounds[:, 0] + rng.random(n) * (age_bounds[:, 1] - age_bounds[:, 0])
    created = WINDOW_MS - (age_days * DAY_MS).astype(np.int64)
    channel_idx = rng.choice(len(CHANNELS), n, p=CHANNEL_SHARES)
    country_idx = rng.choice(len(COUNTRIES), n, p=COUNTRY_SHARES)
    order = np.argsort(created, kind="stable")  # ids then grow with signup time
    return {
        "segment_idx": segment_idx[order],
        "channel_idx": channel_idx[order],
        "country_idx": country_idx[order],
        "created": created[order],
    }


def _offers() -> dict[str, list[Any]]:
    products = [p for p in PRODUCT_PRICES_CENTS for _ in DISCOUNT_LEVELS]
    discounts = [d for _ in PRODUCT_PRICES_CENTS for d in DISCOUNT_LEVELS]
    return {
        "code": [f"{p.upper()}_{d:02d}" for p, d in zip(products, discounts, strict=True)],
        "product": products,
        "discount_pct": discounts,
    }


EVENT_TYPES = ("visit", "impression", "click", "redemption", "purchase")


def _events(
    rng: np.random.Generator, users: dict[str, np.ndarray], offers: dict[str, list[Any]]
) -> dict[str, np.ndarray]:
    """Visits, organic purchases, and impressions -> clicks -> redemptions from RESPONSE_MODEL.

    Users and offers are row indexes here; keys pack (user, time) into one sortable int64.
    """
    n_users = len(users["created"])
    segments = np.array(SEGMENTS)[users["segment_idx"]]
    active_from = np.maximum(users["created"], 0)
    active_until = WINDOW_MS - DAY_MS  # follow-up events then still land before the anchor
    active_ms = np.maximum(active_until - active_from, 0)
    rate = np.array([SEGMENT_VISITS_PER_DAY[s] for s in SEGMENTS])[users["segment_idx"]]
    rate = rate * rng.gamma(2.0, 0.5, n_users)  # heterogeneity within a segment, mean 1
    n_visits = rng.poisson(rate * active_ms / DAY_MS)

    shift = 35  # 2**35 ms > 180 days: the time fits below the user index
    v_user = np.repeat(np.arange(n_users, dtype=np.int64), n_visits)
    v_time = active_from[v_user] + (rng.random(len(v_user)) * active_ms[v_user]).astype(np.int64)
    v_key = (v_user << shift) | v_time
    order = np.argsort(v_key, kind="stable")
    v_user, v_time, v_key = v_user[order], v_time[order], v_key[order]
    n_v = len(v_key)
    own_channel = rng.random(n_v) < 0.7
    other_channel = np.array(("web", "ios", "android"))[rng.integers(0, 3, n_v)]
    v_channel = np.where(own_channel, np.array(CHANNELS)[users["channel_idx"][v_user]], other_channel)

    # organic purchases: product by the segment's taste (softmax of affinity), full price
    products = list(PRODUCT_PRICES_CENTS)
    prices = np.array(list(PRODUCT_PRICES_CENTS.values()), dtype=np.int64)
    taste = np.exp([[RESPONSE_MODEL.affinity[s][p] for p in products] for s in SEGMENTS])
    taste_cdf = np.cumsum(taste / taste.sum(axis=1, keepdims=True), axis=1)
    buy_rate = np.array([SEGMENT_PURCHASE_PER_VISIT[s] for s in SEGMENTS])
    buys = rng.random(n_v) < buy_rate[users["segment_idx"][v_user]]
    p_visit = np.flatnonzero(buys)
    cdf_rows = taste_cdf[users["segment_idx"][v_user[p_visit]]]
    p_product = (rng.random(len(p_visit))[:, None] > cdf_rows).sum(axis=1)
    p_product = np.minimum(p_product, len(products) - 1)
    p_user = v_user[p_visit]
    p_time = v_time[p_visit] + rng.integers(60_000, 1_800_000, len(p_visit))
    p_amount = prices[p_product]
    p_key = (p_user << shift) | p_time
    p_order = np.argsort(p_key, kind="stable")
    p_key_sorted = p_key[p_order]
    spend_cum = np.concatenate(([0], np.cumsum(p_amount[p_order])))

    # each visit's features, strictly before its own timestamp (as IMPRESSION_FEATURES_SQL)
    user_floor = v_user << shift
    first_of_user = np.searchsorted(v_key, user_floor, side="left")
    before = np.searchsorted(v_key, v_key, side="left")
    has_prev = before > first_of_user
    prev_time = v_time[np.maximum(before - 1, 0)]
    recency_days = np.where(has_prev, (v_time - prev_time) / DAY_MS, RECENCY_CAP_DAYS)
    month_start = np.searchsorted(v_key, v_key - 30 * DAY_MS, side="left")
    frequency_30d = before - np.maximum(month_start, first_of_user)
    spend_cents = (
        spend_cum[np.searchsorted(p_key_sorted, v_key, side="left")]
        - spend_cum[np.searchsorted(p_key_sorted, user_floor, side="left")]
    )

    shown = np.flatnonzero(rng.random(n_v) < IMPRESSION_PER_VISIT)
    offer_idx = rng.integers(0, len(offers["code"]), len(shown))
    offer_product = np.array(offers["product"])[offer_idx]
    offer_discount = np.array(offers["discount_pct"], dtype=float)[offer_idx]
    probability = RESPONSE_MODEL.probability(
        recency_days=recency_days[shown],
        frequency_30d=frequency_30d[shown],
        spend_cents=spend_cents[shown],
        segment=segments[v_user[shown]],
        channel=v_channel[shown],
        discount_pct=offer_discount,
        product=offer_product,
    )
    redeemed = rng.random(len(shown)) < probability
    clicked = redeemed | (rng.random(len(shown)) < CLICK_WITHOUT_REDEMPTION)
    click_time = v_time[shown] + rng.integers(5_000, 120_000, len(shown))
    redeem_time = click_time + rng.integers(30_000, 600_000, len(shown))
    price = np.array([PRODUCT_PRICES_CENTS[p] for p in offers["product"]], dtype=np.int64)[offer_idx]
    redeem_amount = np.round(price * (100 - offer_discount) / 100).astype(np.int64)

    s_user, s_channel = v_user[shown], v_channel[shown]
    c, r = np.flatnonzero(clicked), np.flatnonzero(redeemed)
    parts = [  # (event type, user, offer, channel, amount, time)
        (0, v_user, np.full(n_v, -1), v_channel, np.full(n_v, -1), v_time),
        (1, s_user, offer_idx, s_channel, np.full(len(shown), -1), v_time[shown]),
        (2, s_user[c], offer_idx[c], s_channel[c], np.full(len(c), -1), click_time[c]),
        (3, s_user[r], offer_idx[r], s_channel[r], redeem_amount[r], redeem_time[r]),
        (4, p_user, np.full(len(p_user), -1), v_channel[p_visit], p_amount, p_time),
    ]
    kind = np.concatenate([np.full(len(part[1]), part[0]) for part in parts])
    user, offer, channel, amount, time = (np.concatenate([part[i] for part in parts]) for i in range(1, 6))
    order = np.lexsort((kind, user, time))  # ids then grow with time
    return {
        "kind": kind[order],
        "user": user[order],
        "offer": offer[order],
        "channel": channel[order],
        "amount": amount[order],
        "time": time[order],
    }


# --- loading -------------------------------------------------------------------------------

NULL = "\\N"
# Tables whose secondary indexes and foreign keys are built after their rows, as pg_restore does:
# maintaining them row by row made the user_events COPY about five times slower.
DEFERRED_TABLES = ("execution_tasks", "user_events", "payments")


def _copy_text(values: Any) -> list[str]:
    """One column as COPY text-format fields."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "i":
            return [NULL if v < 0 else str(v) for v in values.tolist()]
        values = values.tolist()
    else:
        values = [v if v is None or isinstance(v, str) else str(v) for v in values]
    # one scan of the whole column decides whether any field needs escaping at all
    joined = "".join(filter(None, values))
    if any(special in joined for special in ("\\", "\t", "\n", "\r")):
        values = [None if v is None else _escape(v) for v in values]
    return [NULL if v is None else v for v in values]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@dataclass(frozen=True)
class _Rendered:
    """One table's rows as COPY text, ready to send."""

    table: str
    columns: tuple[str, ...]
    text: str
    rows: int


def _render(table: str, columns: dict[str, Any]) -> _Rendered:
    fields = [_copy_text(values) for values in columns.values()]
    text = "".join(line + "\n" for line in map("\t".join, zip(*fields, strict=True)))
    return _Rendered(table, tuple(columns), text, len(fields[0]))


def _send(cur: Any, rendered: _Rendered) -> int:
    """COPY rendered rows into their table; returns the number of rows."""
    from psycopg2 import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(rendered.table), sql.SQL(", ").join(map(sql.Identifier, rendered.columns))
    )
    cur.copy_expert(statement.as_string(cur.connection), io.StringIO(rendered.text), size=1 << 20)
    return rendered.rows


def _defer_indexes_and_foreign_keys(cur: Any, tables: Sequence[str]) -> list[str]:
    """Drop `tables`' non-unique indexes and foreign keys; return the DDL that rebuilds them.

    Definitions come from the catalog, so the rebuilt objects are the ones the migrations made.
    Unique indexes stay: they back constraints and keep checking the rows as they arrive.
    """
    cur.execute(
        """
        SELECT pg_get_indexdef(i.indexrelid), format('DROP INDEX %%s', i.indexrelid::regclass)
        FROM pg_index i
        WHERE i.indrelid = ANY (%(tables)s::regclass[]) AND NOT i.indisunique
        ORDER BY i.indexrelid::regclass::text
        """,
        {"tables": list(tables)},
    )
    indexes = cur.fetchall()
    cur.execute(
        """
        SELECT format('ALTER TABLE %%s ADD CONSTRAINT %%I %%s',
                      conrelid::regclass, conname, pg_get_constraintdef(oid)),
               format('ALTER TABLE %%s DROP CONSTRAINT %%I', conrelid::regclass, conname)
        FROM pg_constraint
        WHERE contype = 'f' AND conrelid = ANY (%(tables)s::regclass[])
        ORDER BY conrelid::regclass::text, conname
        """,
        {"tables": list(tables)},
    )
    foreign_keys = cur.fetchall()
    for _, drop in foreign_keys + indexes:
        cur.execute(drop)
    return [create for create, _ in indexes + foreign_keys]


def _load(cur: Any, *, scale: float, seed: int, queued_share: float) -> dict[str, int]:
    import psycopg2

    rng = np.random.default_rng(seed)
    cur.execute("SAVEPOINT defer_indexes")
    try:
        rebuild = _defer_indexes_and_foreign_keys(cur, DEFERRED_TABLES)
    except psycopg2.errors.InsufficientPrivilege:
        # a role that does not own the tables loads through the indexes: slower, same rows
        cur.execute("ROLLBACK TO SAVEPOINT defer_indexes")
        rebuild = []

    users = _users(rng, _count(BASE_USERS, scale))
    n_users = len(users["created"])
    emails = [f"user{i:06d}@example.com" for i in range(1, n_users + 1)]
    user_rows = {
        "email": emails,
        "segment": np.array(SEGMENTS)[users["segment_idx"]],
        "signup_channel": np.array(CHANNELS)[users["channel_idx"]],
        "country": np.array(COUNTRIES)[users["country_idx"]],
        "created_at": _timestamps(users["created"]),
    }
    offers = _offers()
    n_offers = len(offers["code"])
    offer_rows = {
        **offers,
        "status": ["active"] * n_offers,
        "valid_from": _timestamps(np.zeros(n_offers, dtype=np.int64)),
        "created_at": _timestamps(np.zeros(n_offers, dtype=np.int64)),
    }
    counts = {
        "users": _send(cur, _render("users", user_rows)),
        "offers": _send(cur, _render("offers", offer_rows)),
    }
    # identity columns are GENERATED ALWAYS: read back the ids the rows got, by natural key
    cur.execute("SELECT email, id FROM users")
    user_ids = dict(cur.fetchall())
    cur.execute("SELECT code, id FROM offers")
    offer_ids = dict(cur.fetchall())
    user_id = np.array([user_ids[e] for e in emails], dtype=np.int64)
    offer_id = np.array([offer_ids[c] for c in offers["code"]], dtype=np.int64)

    # The server ingests one table while this thread draws and renders the next; on two cores
    # that overlap saves about a fifth of the load. Only the sender uses `cur` from here on.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed-copy") as sender:
        events = _events(rng, users, offers)
        event_offer_id = np.where(events["offer"] >= 0, offer_id[np.maximum(events["offer"], 0)], -1)
        event_rows = {
            "user_id": user_id[events["user"]],
            "offer_id": event_offer_id,
            "event_type": np.array(EVENT_TYPES)[events["kind"]],
            "channel": events["channel"],
            "amount_cents": events["amount"],
            "occurred_at": _timestamps(events["time"]),
        }
        sent = {"user_events": sender.submit(_send, cur, _render("user_events", event_rows))}

        paid = np.flatnonzero(np.isin(events["kind"], (3, 4)))  # redemptions and purchases
        payment_rows = {
            "stripe_payment_id": [f"pi_seed_{i:06d}" for i in range(1, len(paid) + 1)],
            "user_id": user_id[events["user"][paid]],
            "offer_id": event_offer_id[paid],
            "amount_cents": events["amount"][paid],
            "currency": ["usd"] * len(paid),
            "status": ["succeeded"] * len(paid),
            "created_at": _timestamps(events["time"][paid]),
        }
        sent["payments"] = sender.submit(_send, cur, _render("payments", payment_rows))

        tasks = _execution_tasks(rng, _count(BASE_EXECUTION_TASKS, scale), queued_share)
        sent["execution_tasks"] = sender.submit(_send, cur, _render("execution_tasks", tasks))
        counts.update({table: future.result() for table, future in sent.items()})

    for statement in rebuild:
        cur.execute(statement)
    order = ("execution_tasks", "users", "offers", "user_events", "payments")
    return {table: counts[table] for table in order}


def _lock_and_count(cur: Any) -> dict[str, int]:
    # self-conflicting lock: a second seeder waits, then sees the first one's rows
    cur.execute("LOCK TABLE execution_tasks, users IN SHARE ROW EXCLUSIVE MODE")
    cur.execute(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM execution_tasks LIMIT 1) t),"
        " (SELECT count(*) FROM (SELECT 1 FROM users LIMIT 1) u)"
    )
    tasks, users = cur.fetchone()
    return {"execution_tasks": tasks, "users": users}


def _run(
    dsn: str, *, scale: float, seed: int, queued_share: float, only_if_empty: bool
) -> dict[str, int] | None:
    import psycopg2

    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"seed scale must be a positive number, got {scale!r}")
    if not 0 <= queued_share <= 1:
        raise ValueError(f"queued_share must be within [0, 1], got {queued_share!r}")
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:  # one transaction: all tables or none
            existing = {table: n for table, n in _lock_and_count(cur).items() if n}
            if existing:
                if only_if_empty:
                    return None
                raise ValueError(
                    f"seed needs empty tables, but {', '.join(sorted(existing))} already hold rows;"
                    " use seed_if_empty to skip a seeded database"
                )
            return _load(cur, scale=scale, seed=seed, queued_share=queued_share)
    finally:
        conn.close()


def seed(
    dsn: str, *, scale: float = 1.0, seed: int = 7, queued_share: float = QUEUED_SHARE
) -> dict[str, int]:
    """Fill an empty app database with demo data; the same seed and scale give the same rows.

    Returns the rows written per table. Raises ValueError when execution_tasks or users has rows.
    """
    counts = _run(dsn, scale=scale, seed=seed, queued_share=queued_share, only_if_empty=False)
    assert counts is not None
    return counts


def seed_if_empty(dsn: str) -> dict[str, int] | None:
    """Seed at scale SEED_SCALE (default 1.0) when execution_tasks and users are empty, else None."""
    raw = os.environ.get("SEED_SCALE", "1.0")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"SEED_SCALE must be a number, got {raw!r}") from None
    return _run(dsn, scale=scale, seed=7, queued_share=QUEUED_SHARE, only_if_empty=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo_data", description=__doc__)
    parser.add_argument("--dsn", required=True, help="libpq DSN or URI of the app database")
    parser.add_argument("--scale", type=float, default=os.environ.get("SEED_SCALE", "1.0"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--if-empty", action="store_true", help="do nothing when data exists")
    args = parser.parse_args(argv)
    if args.if_empty:
        counts = _run(
            args.dsn,
            scale=args.scale,
            seed=args.seed,
            queued_share=QUEUED_SHARE,
            only_if_empty=True,
        )
    else:
        counts = seed(args.dsn, scale=args.scale, seed=args.seed)
    if counts is None:
        sys.stdout.write("app database already holds data; nothing seeded\n")
        return 0
    for table, n in counts.items():
        sys.stdout.write(f"{table}: {n}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
