"""The product catalog offers are made of, and the features of an offer impression as SQL.

Both are the platform's own: the model trains on `IMPRESSION_FEATURES_SQL` and prices offers
from `PRODUCT_PRICES_CENTS`; the demo data is generated to match them.
"""

PRODUCT_PRICES_CENTS = {
    "pro_monthly": 2_000,
    "pro_annual": 20_000,
    "team_seat": 3_000,
    "credits_1k": 1_000,
    "credits_10k": 8_000,
    "gpu_hours_10": 2_500,
    "priority_queue": 1_500,
    "api_addon": 4_000,
}

# One row per impression with the response model's features as of that impression, and whether
# the same user redeemed the same offer within a day after it. Frames end 1 microsecond (the
# resolution of timestamptz) before each row, so the impression's own visit, which shares its
# timestamp, is left out; such frames let Postgres aggregate incrementally.
IMPRESSION_FEATURES_SQL = """
WITH history AS (
    SELECT e.id, e.user_id, e.offer_id, e.event_type, e.channel, e.occurred_at,
           max(e.occurred_at) FILTER (WHERE e.event_type = 'visit') OVER before_t AS last_visit_at,
           count(*) FILTER (WHERE e.event_type = 'visit') OVER last_30_days AS frequency_30d,
           coalesce(sum(e.amount_cents) FILTER (WHERE e.event_type = 'purchase') OVER before_t, 0)
               AS spend_cents
    FROM user_events e
    WINDOW before_t AS (PARTITION BY e.user_id ORDER BY e.occurred_at
                        RANGE BETWEEN UNBOUNDED PRECEDING AND INTERVAL '1 microsecond' PRECEDING),
           last_30_days AS (PARTITION BY e.user_id ORDER BY e.occurred_at
                            RANGE BETWEEN INTERVAL '30 days' PRECEDING
                                      AND INTERVAL '1 microsecond' PRECEDING)
)
SELECT h.id AS impression_id, h.user_id, h.offer_id, h.occurred_at,
       least(coalesce(extract(epoch FROM h.occurred_at - h.last_visit_at) / 86400, 180), 180)::float8
           AS recency_days,
       h.frequency_30d, h.spend_cents::bigint AS spend_cents, u.segment, h.channel,
       o.discount_pct::float8 AS discount_pct, o.product,
       EXISTS (SELECT 1 FROM user_events r
               WHERE r.user_id = h.user_id AND r.offer_id = h.offer_id
                 AND r.event_type = 'redemption'
                 AND r.occurred_at > h.occurred_at
                 AND r.occurred_at <= h.occurred_at + INTERVAL '1 day') AS redeemed
FROM history h
JOIN users u ON u.id = h.user_id
JOIN offers o ON o.id = h.offer_id
WHERE h.event_type = 'impression'
ORDER BY h.id
"""
