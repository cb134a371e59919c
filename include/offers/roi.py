"""Stripe payments into rows, their attribution to offers, and ROI two ways.

Attributed ROI counts every redeemed offer's revenue; it overstates the effect, because some of
those users would have bought anyway. Incremental ROI compares revenue per treated user with
revenue per holdout user (who got no offer) of the same segment; the gap between the two is a
trust-inflation indicator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

STRIPE_STATUS = {"succeeded": "succeeded", "failed": "failed", "pending": None}
Z_95 = 1.959963984540054

# What a redeemed offer cost, from what its redeemer paid: the list price is paid / (1 - pct/100),
# the discount the difference, paid * pct / (100 - pct). A free offer (100%) leaves nothing paid
# to derive its price from (and divides by zero): the offers table keeps discount_pct below 100
# (revision 0009), and `compute_roi` refuses an assignment of one before it runs (FREE_OFFERS_SQL).
# The model version whose offers are live: the champion when it has assignments (after a rollback
# a newer version's assignments are no longer live), else the newest version with some.
LIVE_ASSIGNMENT_SQL = """(SELECT coalesce(
    (SELECT v.id FROM model_versions v WHERE v.status = 'champion'
        AND EXISTS (SELECT 1 FROM offer_assignments a WHERE a.model_version_id = v.id)
        ORDER BY v.id DESC LIMIT 1),
    (SELECT max(model_version_id) FROM offer_assignments)))"""
# Revenue is net: what was paid minus what was refunded and what disputes withhold (a refunded or
# disputed sale also cost no discount).
NET_CENTS_SQL = "(p.amount_cents - p.refunded_cents - p.disputed_cents)"
DISCOUNT_COST_SQL = f"{NET_CENTS_SQL} * o.discount_pct / (100 - o.discount_pct)"
FREE_OFFERS_SQL = """
SELECT DISTINCT o.code, o.discount_pct FROM offer_assignments a JOIN offers o ON o.id = a.offer_id
WHERE a.model_version_id = %s AND o.discount_pct >= 100 ORDER BY o.code
"""


def discount_cost_cents(paid_cents: float, discount_pct: float) -> float:
    """What an offer of `discount_pct` cost when its redeemer paid `paid_cents` (as
    DISCOUNT_COST_SQL); ValueError for a discount outside [0, 100)."""
    if not 0 <= discount_pct < 100:
        raise ValueError(f"a discount of {discount_pct}% has no price to derive its cost from")
    return paid_cents * discount_pct / (100 - discount_pct)


@dataclass(frozen=True)
class PaymentRow:
    stripe_payment_id: str
    user_id: int
    offer_id: int | None
    amount_cents: int
    currency: str
    status: str
    created_at: datetime
    refunded_cents: int = 0


def is_final(charge: dict[str, Any]) -> bool:
    """Whether a charge's money can no longer change but by a refund: failed, or succeeded and
    captured (an authorised charge not captured yet may still be captured, in part, or released)
    or released in full. A charge that is not final holds the sync's cursor."""
    status = charge.get("status")
    if status == "failed":
        return True
    if status != "succeeded":
        return False
    amount, refunded = charge.get("amount"), charge.get("amount_refunded") or 0
    released = isinstance(amount, int) and isinstance(refunded, int) and refunded >= amount
    return charge.get("captured") is not False or released


def payment_row(
    charge: dict[str, Any], *, known_users: set[int], coupon_offers: dict[str, int], now: datetime
) -> tuple[PaymentRow | None, str | None]:
    """A Stripe charge as a `payments` row, or the reason it is quarantined.

    Charges carry `metadata.user_id` (the app user) and, when an offer was redeemed,
    `metadata.coupon` (the Stripe coupon id of the offer). `refunded_cents` is what Stripe has
    refunded of it (`amount_refunded`); a charge refunded in full is `refunded`.
    """
    metadata = charge.get("metadata") or {}
    amount = charge.get("amount")
    created = datetime.fromtimestamp(int(charge["created"]), UTC)
    amount_refunded = charge.get("amount_refunded") or 0
    if not isinstance(amount, int) or amount < 0:
        return None, f"negative or missing amount {amount!r}"
    if not isinstance(amount_refunded, int) or not 0 <= amount_refunded <= amount:
        return None, f"amount_refunded {amount_refunded!r} outside 0-{amount}"
    if created > now:
        return None, f"future timestamp {created.isoformat()}"
    try:
        user_id = int(metadata["user_id"])
    except (KeyError, TypeError, ValueError):
        return None, f"no app user in metadata.user_id ({metadata.get('user_id')!r})"
    if user_id not in known_users:
        return None, f"unknown user id {user_id}"
    coupon = metadata.get("coupon")
    offer_id = None
    if coupon:
        if coupon not in coupon_offers:
            return None, f"unknown offer coupon {coupon!r}"
        offer_id = coupon_offers[coupon]
    status = (
        "refunded"
        if amount_refunded and amount_refunded >= amount
        else STRIPE_STATUS.get(charge.get("status"))
    )
    if status is None or not is_final(charge):
        return None, f"status {charge.get('status')!r} (captured {charge.get('captured')!r}) is not final"
    return (
        PaymentRow(
            charge["id"],
            user_id,
            offer_id,
            amount,
            (charge.get("currency") or "usd")[:3],
            status,
            created,
            amount_refunded,
        ),
        None,
    )


# A dispute's statuses: an inquiry (warning_*) withholds nothing; a dispute withholds its amount
# while open and when lost, and gives it back when won. A final status no longer changes.
DISPUTE_WITHHELD = ("needs_response", "under_review", "lost")
DISPUTE_FINAL = ("won", "lost", "warning_closed")
DISPUTE_STATUSES = (
    "warning_needs_response",
    "warning_under_review",
    "warning_closed",
    "needs_response",
    "under_review",
    "won",
    "lost",
)


@dataclass(frozen=True)
class DisputeRow:
    stripe_dispute_id: str
    stripe_charge_id: str
    amount_cents: int
    currency: str
    status: str
    reason: str
    created_at: datetime

    @property
    def withheld_cents(self) -> int:
        return self.amount_cents if self.status in DISPUTE_WITHHELD else 0


def dispute_row(
    dispute: dict[str, Any], *, payment: tuple[int, int, int] | None, now: datetime
) -> tuple[DisputeRow | None, str | None]:
    """A Stripe dispute as a `payment_disputes` row, or the reason it is quarantined.

    `payment` is its charge's (amount, refunded, withheld by the charge's other disputes) in
    `payments`, None when the charge is not there. A dispute that withholds money may withhold
    at most what is left of the charge, so net revenue never goes below zero.
    """
    amount, status, charge = dispute.get("amount"), dispute.get("status"), dispute.get("charge")
    created = datetime.fromtimestamp(int(dispute["created"]), UTC)
    if not isinstance(amount, int) or amount <= 0:
        return None, f"amount {amount!r} is not a positive integer"
    if status not in DISPUTE_STATUSES:
        return None, f"unknown status {status!r}"
    if created > now:
        return None, f"future timestamp {created.isoformat()}"
    if payment is None:
        return None, f"charge {charge!r} is not in payments"
    paid, refunded, other = payment
    row = DisputeRow(
        dispute["id"],
        charge,
        amount,
        (dispute.get("currency") or "usd")[:3],
        status,
        dispute.get("reason") or "general",
        created,
    )
    if amount > paid:
        return None, f"amount {amount} above charge {charge}'s {paid}"
    if row.withheld_cents > paid - refunded - other:
        return None, (
            f"amount {amount} above the {paid - refunded - other} left of charge {charge}"
            f" ({paid} paid, {refunded} refunded, {other} withheld by other disputes)"
        )
    return row, None


@dataclass(frozen=True)
class SegmentRoi:
    segment: str
    treated_users: int
    holdout_users: int
    attributed_revenue_cents: int
    discount_cost_cents: int
    attributed_roi_cents: float
    incremental_roi_cents: float | None
    incremental_ci_low_cents: float | None
    incremental_ci_high_cents: float | None

    @property
    def gap_cents(self) -> float | None:
        """How much attribution overstates the incremental ROI."""
        if self.incremental_roi_cents is None:
            return None
        return self.attributed_roi_cents - self.incremental_roi_cents


def _mean_var(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, var


def segment_roi(
    segment: str,
    treated_revenue: list[float],
    holdout_revenue: list[float],
    attributed_revenue_cents: int,
    discount_cost_cents: int,
) -> SegmentRoi:
    """ROI of one segment; revenue lists hold one total per user (zeros included).

    Incremental revenue = (mean treated - mean holdout) x treated users, with a 95% normal
    (Welch) interval; the discount cost is subtracted from both bounds.
    """
    attributed = attributed_revenue_cents - discount_cost_cents
    n_t, n_h = len(treated_revenue), len(holdout_revenue)
    if n_t < 2 or n_h < 2:
        return SegmentRoi(
            segment,
            n_t,
            n_h,
            attributed_revenue_cents,
            discount_cost_cents,
            attributed,
            None,
            None,
            None,
        )
    mean_t, var_t = _mean_var(treated_revenue)
    mean_h, var_h = _mean_var(holdout_revenue)
    lift = (mean_t - mean_h) * n_t
    half = Z_95 * math.sqrt(var_t / n_t + var_h / n_h) * n_t
    incremental = lift - discount_cost_cents
    return SegmentRoi(
        segment,
        n_t,
        n_h,
        attributed_revenue_cents,
        discount_cost_cents,
        attributed,
        incremental,
        incremental - half,
        incremental + half,
    )
