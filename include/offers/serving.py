"""Offer decisions: which offer a user is shown, drawn from the bandit's current shares.

The shares (`offer_bandit_arms.share`, published as a policy version by `offer_feedback` or by a
new champion's priors) already keep every arm's exploration floor and the discount budget;
serving draws from them over the segment's live arms (published, not retired). Each decision
is recorded twice in one transaction: as an `impression` in `user_events` (what the bandit
learns from) and in `offer_decisions` with the share and the policy version that produced it.

The draw is a hash of (policy version, user): asking again under the same policy returns the
recorded decision and records nothing new, so a retried call never counts an impression twice.
A user of the live assignment's holdout gets no offer (the control group of incremental ROI).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

LIVE_ARMS_SQL = """
SELECT a.segment, a.offer_id, a.share, o.code, p.stripe_coupon_id
FROM offer_bandit_arms a
JOIN offers o ON o.id = a.offer_id
JOIN offer_publications p
  ON p.segment = a.segment AND p.offer_id = a.offer_id AND p.model_version_id = %(model_version_id)s
WHERE a.segment = ANY(%(segments)s) AND a.retired_at IS NULL
  AND p.published_at IS NOT NULL AND p.retired_at IS NULL
ORDER BY a.segment, a.offer_id
"""


@dataclass(frozen=True)
class Decision:
    user_id: int
    segment: str
    policy_version: int
    offer_id: int | None  # None: the user is in the holdout
    offer_code: str | None = None
    stripe_coupon_id: str | None = None
    share: float | None = None
    decided_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    version: int
    model_version_id: int | None
    created_at: datetime


def latest_policy(cur) -> Policy | None:
    """The newest published shares' policy, or None before the first."""
    cur.execute("SELECT id, model_version_id, created_at FROM offer_policy_versions ORDER BY id DESC LIMIT 1")
    row = cur.fetchone()
    return Policy(*row) if row else None


def current_policy(cur) -> Policy:
    """The newest published shares; LookupError before the first (no champion has priors yet)."""
    policy = latest_policy(cur)
    if policy is None:
        raise LookupError("no offer policy yet: offer_model_retrain publishes the first with its offers")
    return policy


def current_shares(cur) -> dict:
    """The live arms' shares per segment under the current policy (what decisions draw from)."""
    policy = current_policy(cur)
    cur.execute("SELECT DISTINCT segment FROM offer_bandit_arms WHERE retired_at IS NULL")
    segments = [r[0] for r in cur.fetchall()]
    cur.execute(LIVE_ARMS_SQL, {"model_version_id": policy.model_version_id, "segments": segments})
    shares: dict[str, dict[str, float]] = {}
    for segment, _, share, code, _ in cur.fetchall():
        shares.setdefault(segment, {})[code] = share
    return {
        "policy_version": policy.version,
        "model_version_id": policy.model_version_id,
        "published_at": policy.created_at.isoformat(),
        "shares": shares,
    }


def draw(policy_version: int, user_id: int, shares: list[float]) -> int:
    """The index of the arm a user gets: a uniform number from a hash of (policy, user), mapped
    through the cumulative shares (normalised, so shares of retired arms drop out)."""
    digest = hashlib.sha256(f"{policy_version}:{user_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(shares)
    total = 0.0
    for index, share in enumerate(shares):
        total += share
        if point < total:
            return index
    return len(shares) - 1


def decide(
    cur, user_ids: list[int], *, at: datetime | None = None, channel: str | None = None
) -> list[Decision]:
    """An offer decision per user, recorded as an impression (at `at`, default now, on `channel`,
    default the user's signup channel). LookupError naming what is missing: no policy, an
    unknown user, a segment without live offers."""
    from psycopg2.extras import execute_values

    at = at or datetime.now(UTC)
    policy = current_policy(cur)
    wanted = sorted({int(u) for u in user_ids})
    cur.execute(
        """
        SELECT u.id, u.segment, u.signup_channel, coalesce(a.holdout, false)
        FROM users u LEFT JOIN offer_assignments a
          ON a.user_id = u.id AND a.model_version_id = %s
        WHERE u.id = ANY(%s) ORDER BY u.id
        """,
        (policy.model_version_id, wanted),
    )
    users = {r[0]: r[1:] for r in cur.fetchall()}
    if unknown := [u for u in wanted if u not in users]:
        raise LookupError(f"unknown user id(s) {unknown[:10]}")
    # one decider per (user, policy) at a time: a concurrent call waits and reads the first's
    cur.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('offer_decision:' || %s || ':' || u, 0))"
        " FROM unnest(%s::bigint[]) AS u ORDER BY u",
        (policy.version, wanted),
    )
    cur.execute(
        "SELECT d.user_id, d.segment, d.offer_id, o.code, d.stripe_coupon_id, d.share, d.decided_at"
        " FROM offer_decisions d JOIN offers o ON o.id = d.offer_id"
        " WHERE d.policy_version = %s AND d.user_id = ANY(%s)",
        (policy.version, wanted),
    )
    recorded = {r[0]: Decision(r[0], r[1], policy.version, *r[2:]) for r in cur.fetchall()}
    segments = sorted({users[u][0] for u in wanted if u not in recorded and not users[u][2]})
    cur.execute(LIVE_ARMS_SQL, {"model_version_id": policy.model_version_id, "segments": segments})
    arms: dict[str, list[tuple]] = {}
    for segment, *arm in cur.fetchall():
        arms.setdefault(segment, []).append(tuple(arm))
    if empty := [s for s in segments if not arms.get(s)]:
        raise LookupError(f"no live offers in segment(s) {empty} under policy {policy.version}")
    decisions, events = [], []
    for user_id in wanted:
        segment, signup_channel, holdout = users[user_id]
        if user_id in recorded:
            decisions.append(recorded[user_id])
            continue
        if holdout:
            decisions.append(Decision(user_id, segment, policy.version, None))
            continue
        live = arms[segment]
        total = sum(a[1] for a in live)
        shares = [a[1] / total for a in live] if total > 0 else [1 / len(live)] * len(live)
        offer_id, _, code, coupon = live[draw(policy.version, user_id, shares)]
        share = shares[[a[0] for a in live].index(offer_id)]
        decisions.append(Decision(user_id, segment, policy.version, offer_id, code, coupon, share, at))
        events.append((user_id, offer_id, "impression", channel or signup_channel, None, at))
    new = [d for d in decisions if d.offer_id is not None and d.user_id not in recorded]
    if new:
        ids = execute_values(
            cur,
            "INSERT INTO user_events (user_id, offer_id, event_type, channel, amount_cents, occurred_at)"
            " VALUES %s RETURNING id",
            events,
            page_size=5000,
            fetch=True,
        )
        execute_values(
            cur,
            "INSERT INTO offer_decisions (policy_version, user_id, segment, offer_id, share,"
            " stripe_coupon_id, impression_event_id, decided_at) VALUES %s",
            [
                (d.policy_version, d.user_id, d.segment, d.offer_id, d.share, d.stripe_coupon_id, i[0], at)
                for d, i in zip(new, ids, strict=True)
            ],
            page_size=5000,
        )
    return decisions
