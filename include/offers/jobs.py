"""The steps of offer_model_retrain, offer_feedback and roi_sync, on a DB cursor and an S3 client.

Each step is idempotent: a retry or re-run converges to the same rows (UPSERTs on natural keys,
deterministic version numbers, holdouts and coupon ids, cursors moved in the same transaction
as the rows they cover).
"""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from include.offers import model as m
from include.offers import registry
from include.offers.plots import evaluation_plots, report_markdown
from include.offers.policy import (
    LOSING_WIN_SHARE,
    USER_FEATURES_SQL,
    discount_cost_cents,
    in_holdout,
    model_prior,
    offer_grid,
    propose_offers,
    score_offers,
    thompson_shares,
    win_shares,
)
from include.offers.roi import (
    DISPUTE_FINAL,
    DISPUTE_WITHHELD,
    SegmentRoi,
    dispute_row,
    is_final,
    payment_row,
    segment_roi,
)
from include.offers.serving import latest_policy

FEEDBACK_CURSOR = "offer_feedback_event_id"
FEEDBACK_MARK = "offer_feedback_redemptions_at_retrain"
CHARGES_CURSOR = "stripe_charges_created"
REFUNDS_CURSOR = "stripe_refunds_created"
DISPUTES_CURSOR = "stripe_disputes_created"
# Charges, refunds and disputes are listed from a little before their cursor: Stripe's `created`
# has one-second resolution, so one made in the cursor's own second could otherwise be missed.
# Upserts make the overlap harmless.
STRIPE_OVERLAP_SECONDS = 60
# offer_feedback's defaults (its params), also used when a new champion's priors are allocated
DEFAULT_MIN_EXPLORATION = 0.1
DEFAULT_BUDGET_PER_IMPRESSION_CENTS = 300.0
RETIRE_AFTER_DAYS = 3.0


def _rows(cur, sql: str, params: Any = None) -> pd.DataFrame:
    cur.execute(sql, params)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def quarantine(cur, source: str, items: Iterable[tuple[str, str, dict]]) -> int:
    """Keep refused rows with their reason; the same row refused again is stored once."""
    added = 0
    for key, reason, row in items:
        cur.execute(
            "INSERT INTO offer_quarantine (source, source_key, reason, row_data) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (source, source_key) DO NOTHING",
            (source, key, reason, json.dumps(row, default=str)),
        )
        added += cur.rowcount
    return added


def get_cursor(cur, name: str, default: int = 0) -> int:
    cur.execute("SELECT position FROM sync_cursors WHERE name = %s", (name,))
    row = cur.fetchone()
    return row[0] if row else default


def set_cursor(cur, name: str, position: int) -> None:
    cur.execute(
        "INSERT INTO sync_cursors (name, position) VALUES (%s, %s)"
        " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        (name, position),
    )


def all_offers(cur) -> pd.DataFrame:
    """Every catalog offer, which the seeded impressions drew from (uniformly): what policy
    evaluation weighs by. Generated offers (with a segment) are served by the bandit instead."""
    return _rows(
        cur,
        "SELECT id, code, product, discount_pct::float8 AS discount_pct FROM offers"
        " WHERE segment IS NULL ORDER BY id",
    )


# --- offer_model_retrain ---------------------------------------------------------------------------


def extract(cur, s3, snapshot_uri: str, now: datetime) -> dict[str, Any]:
    """Training rows into a CSV snapshot in S3; impossible rows quarantined and counted."""
    frame = _rows(cur, m.TRAINING_ROWS_SQL)
    reasons = m.quarantine_reasons(frame, now)
    bad = frame[reasons.notna()]
    quarantine(
        cur,
        "training_rows",
        (
            (str(r.impression_id), reasons[i], r._asdict())
            for i, r in zip(bad.index, bad.itertuples(index=False), strict=True)
        ),
    )
    good = frame[reasons.isna()].reset_index(drop=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
        gz.write(good.to_csv(index=False).encode())
    registry.put_object(s3, snapshot_uri, buffer.getvalue(), "application/gzip")
    return {
        "snapshot_uri": snapshot_uri,
        "rows": len(good),
        "quarantined": len(bad),
        "quarantine_reasons": dict(Counter(reasons.dropna())),
        "data_fingerprint": m.data_fingerprint(good),
    }


def read_snapshot(s3, snapshot_uri: str) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(gzip.decompress(registry.get_object(s3, snapshot_uri))))
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True, format="ISO8601")
    frame["redeemed"] = frame["redeemed"].astype(bool)
    return frame


def train(cur, s3, *, snapshot_uri: str, bucket: str, valid_days: float) -> dict[str, Any]:
    """Fit the pipeline on the past of the snapshot; upload it; register it as a candidate.

    Same data and same code give the same version number: a retry updates its own candidate
    row. A version already decided (champion, retired, rejected: rolled back, say) is left as
    it is, artifact and row, and returned as `unchanged` (its status): refitting it would
    overwrite the artifact the champion serves from, and deciding it again could promote a
    version a person rolled back.
    """
    frame = read_snapshot(s3, snapshot_uri)
    fingerprint, code = m.data_fingerprint(frame), m.code_version()
    cur.execute(
        "SELECT id, version, status, metrics->>'valid_from' FROM model_versions WHERE model_name = %s"
        " AND data_fingerprint = %s AND code_version = %s ORDER BY version DESC LIMIT 1",
        (m.MODEL_NAME, fingerprint, code),
    )
    row = cur.fetchone()
    if row and row[2] != "candidate":
        return {"version_id": row[0], "version": row[1], "valid_from": row[3], "unchanged": row[2]}
    split = m.time_split(frame, valid_days)
    pipeline = m.fit(m.build_pipeline(), split.train)
    version = row[1] if row else registry.next_version(cur, m.MODEL_NAME)
    data = registry.dump_model(pipeline)
    uri = registry.version_prefix(bucket, m.MODEL_NAME, version) + "model.skops"
    registry.put_object(s3, uri, data)
    registered = registry.register(
        cur,
        m.MODEL_NAME,
        version=version,
        artifact_uri=uri,
        artifact_sha256=registry.sha256_bytes(data),
        metrics={"train_rows": len(split.train), "valid_from": split.valid_from.isoformat()},
        trained_from=split.train_from,
        trained_to=split.valid_from,
        data_fingerprint=fingerprint,
        code_version=code,
    )
    return {
        "version_id": registered.id,
        "version": version,
        "valid_from": split.valid_from.isoformat(),
    }


def evaluate(cur, s3, *, snapshot_uri: str, version_id: int, valid_from: str) -> dict[str, Any]:
    """Challenger and champion scored on the same holdout (the snapshot's recent window). The
    challenger's evaluation (`registry.EVALUATION`) and its ROC and calibration plots are
    recorded with it: what `registry.promote` requires.

    A challenger whose artifact does not verify raises ArtifactRefused. A champion whose
    artifact does not verify is reported in `champion_refused`: it stays champion (only a
    person should replace it), and no challenger is promoted over a model we cannot read.
    A version already decided (`train`'s `unchanged`) is not scored again: its recorded
    evaluation is returned, `unchanged`, and `promote_or_keep` leaves it as it is.
    """
    challenger = registry.get(cur, version_id)
    if challenger.status != "candidate":  # trained on the same data and code before: decided
        return {
            "version_id": version_id,
            "challenger": _summary(challenger.metrics),
            "champion": None,
            "unchanged": challenger.status,
        }
    frame = read_snapshot(s3, snapshot_uri)
    valid = frame[frame["occurred_at"] >= pd.Timestamp(valid_from)]
    offers = all_offers(cur)
    metrics = m.evaluate(registry.fetch_model(s3, challenger), valid, offers)
    cur.execute(
        "UPDATE model_versions SET metrics = metrics || %s::jsonb WHERE id = %s",
        (json.dumps(metrics), version_id),
    )
    registry.store_plots(cur, version_id, evaluation_plots(challenger.version, metrics))
    result: dict[str, Any] = {
        "version_id": version_id,
        "challenger": _summary(metrics),
        "champion": None,
    }
    current = registry.champion(cur, m.MODEL_NAME)
    if current is not None and current.id != version_id:
        try:
            champion_metrics = m.evaluate(registry.fetch_model(s3, current), valid, offers)
            result["champion"] = {"version_id": current.id, **_summary(champion_metrics)}
        except registry.ArtifactRefused as refused:
            result["champion_refused"] = {"version_id": current.id, "reason": str(refused)}
    return result


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = (*registry.EVALUATION, "prediction_std", "rows")
    return {k: metrics[k] for k in keys if k in metrics}


def promote_or_keep(
    cur,
    evaluation: dict[str, Any],
    gates: registry.Gates,
    before_promotion: Callable[[Any, int], list[str]] | None = None,
) -> dict[str, Any]:
    """Promote the challenger when it beats the champion, else reject it. `before_promotion`
    (cursor, version id) -> the gates it fails: called before a promotion, a failed gate refuses
    the challenger there (it is rejected, never champion, so nothing needs rolling back)."""
    version_id = evaluation["version_id"]
    if status := evaluation.get("unchanged"):
        champion = registry.champion(cur, m.MODEL_NAME)
        return {
            "promoted": False,
            "reason": f"version id {version_id} was trained on the same data and code and is {status}",
            "champion_id": champion.id if champion else None,
        }
    if evaluation.get("champion_refused"):
        promoted, reason = (
            False,
            "champion artifact refused: " + evaluation["champion_refused"]["reason"],
        )
    else:
        promoted, reason = registry.decide(evaluation["challenger"], evaluation["champion"], gates)
    if promoted and before_promotion is not None and (failed := before_promotion(cur, version_id)):
        promoted, reason = False, "refused before promotion by the model gates: " + "; ".join(failed)
    if promoted:
        registry.promote(cur, m.MODEL_NAME, version_id)
    else:
        registry.reject(cur, version_id)
    cur.execute(
        "UPDATE model_versions SET metrics = metrics || %s::jsonb WHERE id = %s",
        (json.dumps({"decision": reason, "promoted": promoted}), version_id),
    )
    champion = registry.champion(cur, m.MODEL_NAME)
    return {
        "promoted": promoted,
        "reason": reason,
        "champion_id": champion.id if champion else None,
    }


def user_features(cur, as_of: datetime | None = None) -> tuple[pd.DataFrame, datetime]:
    """Every user's current features; `as_of` defaults to the newest event (demo data is old)."""
    if as_of is None:
        cur.execute("SELECT coalesce(max(occurred_at), now()) FROM user_events WHERE occurred_at <= now()")
        as_of = cur.fetchone()[0]
    return _rows(cur, USER_FEATURES_SQL, {"as_of": as_of}), as_of


def assign_offers(cur, s3, *, holdout_share: float, budget_cents: float) -> dict[str, Any]:
    """The champion's offers per segment within the budget, a holdout per segment, recorded.

    A version's first assignment generates its offers (`policy.propose_offers`: products and
    discounts per segment from the model's predicted response, within the budget and the
    catalog's prices), stores them as `offers` rows (`GEN_<segment>_<product>_<pct>`) and as
    publications (one per segment and offer, each a bandit arm); each user of a segment is
    assigned the segment's budgeted pick. A re-run, or the version's return after a rollback,
    reuses its publications. When the policy was not drawn from this version yet, the arms'
    priors are reset from its predictions (`reset_arms`).

    Rows are keyed by (model version, user) and the holdout is a hash salted with the version,
    so a re-run writes nothing new.
    """
    from psycopg2.extras import execute_values

    current = registry.champion(cur, m.MODEL_NAME)
    if current is None:
        raise LookupError(f"{m.MODEL_NAME!r} has no champion: train and promote one first")
    pipeline = registry.fetch_model(s3, current)
    users, as_of = user_features(cur)
    holdout = in_holdout(users["user_id"], holdout_share, salt=f"mv{current.id}")
    treated = users[~holdout]
    arms = _version_arms(
        cur, lambda u, o: m.predict_each_offer(pipeline, u, o), treated, current.id, budget_cents
    )
    picks = arms[arms["pick"]].set_index("segment")
    treated_per_segment = treated["segment"].value_counts()
    rows = [
        (
            current.id,
            int(user_id),
            segment,
            None if held else int(picks.at[segment, "offer_id"]),
            bool(held),
            None if held else float(picks.at[segment, "roi"] / treated_per_segment[segment]),
            as_of,
        )
        for user_id, segment, held in zip(users["user_id"], users["segment"], holdout, strict=True)
    ]
    inserted = execute_values(
        cur,
        "INSERT INTO offer_assignments (model_version_id, user_id, segment, offer_id, holdout,"
        " expected_roi_cents, assigned_at) VALUES %s ON CONFLICT (model_version_id, user_id) DO NOTHING"
        " RETURNING 1",
        rows,
        page_size=5000,
        fetch=True,
    )
    policy = reset_arms(cur, current.id, arms)
    return {
        "model_version_id": current.id,
        "as_of": as_of.isoformat(),
        "users": len(users),
        "holdout_users": int(holdout.sum()),
        "assignments_inserted": len(inserted),
        "offers": dict(zip(picks.index, picks["code"], strict=True)),
        "arms": {s: part["code"].tolist() for s, part in arms.groupby("segment")},
        "expected_discount_cents": float(picks["cost"].sum()),
        "policy_version": policy,
    }


def _version_arms(cur, predict, treated: pd.DataFrame, version_id: int, budget_cents: float) -> pd.DataFrame:
    """The version's offers per segment (segment, offer_id, code, rate, roi, cost, pick): its
    publications when it has them, else generated and published now."""
    published = _rows(
        cur,
        "SELECT p.segment, o.id, o.code, o.product, o.discount_pct::float8 AS discount_pct"
        " FROM offer_publications p JOIN offers o ON o.id = p.offer_id WHERE p.model_version_id = %s",
        (version_id,),
    )
    if len(published):
        offers = published.drop_duplicates("id")
        scores = score_offers(predict, treated, offers)
        arms = published.rename(columns={"id": "offer_id"}).merge(scores, on=["segment", "offer_id"])
        cur.execute(
            "SELECT DISTINCT segment, offer_id FROM offer_assignments WHERE model_version_id = %s"
            " AND offer_id IS NOT NULL",
            (version_id,),
        )
        assigned = set(cur.fetchall())
        arms["pick"] = [(s, o) in assigned for s, o in zip(arms["segment"], arms["offer_id"], strict=True)]
        return arms
    grid = offer_grid()
    proposed = propose_offers(score_offers(predict, treated, grid), grid, budget_cents)
    for o in proposed:
        cur.execute(
            "INSERT INTO offers (code, product, discount_pct, segment, status, model_version_id, valid_from)"
            " VALUES (%s, %s, %s, %s, 'active', %s, now()) ON CONFLICT (code) DO NOTHING",
            (o.code, o.product, o.discount_pct, o.segment, version_id),
        )
    cur.execute("SELECT code, id FROM offers WHERE code = ANY(%s)", ([o.code for o in proposed],))
    ids = dict(cur.fetchall())
    for o in proposed:
        coupon = coupon_id(version_id, o.segment, o.code)
        cur.execute(
            "INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id,"
            " stripe_coupon_id) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (version_id, o.segment, ids[o.code], f"prod_{coupon}", coupon),
        )
    return pd.DataFrame(
        [
            (o.segment, ids[o.code], o.code, o.rate, o.expected_roi_cents, o.expected_discount_cents, o.pick)
            for o in proposed
        ],
        columns=["segment", "offer_id", "code", "rate", "roi", "cost", "pick"],
    )


def reset_arms(cur, model_version_id: int, arms: pd.DataFrame) -> int:
    """Make `arms` the live bandit arms, with priors from the model's predicted rates (worth
    PRIOR_IMPRESSIONS impressions), and publish their shares as a new policy version. Counts
    restart: the new model was trained on the feedback so far. Arms not in `arms` are retired
    (not served). Done once per model version: a re-run keeps the feedback gathered since.
    Returns the current policy version."""
    latest = latest_policy(cur)
    if latest is not None and latest.model_version_id == model_version_id:
        return latest.version
    cur.execute(
        "UPDATE offer_bandit_arms SET retired_at = now(), losing_since = NULL, share = 0"
        " WHERE retired_at IS NULL AND (segment, offer_id) NOT IN"
        " (SELECT * FROM unnest(%s::text[], %s::bigint[]))",
        (arms["segment"].tolist(), arms["offer_id"].astype(int).tolist()),
    )
    for arm in arms.itertuples(index=False):
        alpha, beta = model_prior(arm.rate)
        cur.execute(
            """
            INSERT INTO offer_bandit_arms (segment, offer_id, alpha, beta, prior_alpha, prior_beta)
            VALUES (%(s)s, %(o)s, %(a)s, %(b)s, %(a)s, %(b)s)
            ON CONFLICT (segment, offer_id) DO UPDATE SET
                alpha = EXCLUDED.alpha, beta = EXCLUDED.beta, prior_alpha = EXCLUDED.prior_alpha,
                prior_beta = EXCLUDED.prior_beta, impressions = 0, redemptions = 0,
                losing_since = NULL, retired_at = NULL, updated_at = now()
            """,
            {"s": arm.segment, "o": int(arm.offer_id), "a": alpha, "b": beta},
        )
    cur.execute("SELECT coalesce(sum(redemptions), 0) FROM offer_bandit_arms")
    set_cursor(cur, FEEDBACK_MARK, int(cur.fetchone()[0]))  # the feedback so far is in this model
    cursor = get_cursor(cur, FEEDBACK_CURSOR)
    allocate(
        cur,
        min_exploration=DEFAULT_MIN_EXPLORATION,
        budget_per_impression_cents=DEFAULT_BUDGET_PER_IMPRESSION_CENTS,
        seed=cursor,
    )
    return publish_policy(cur, model_version_id, cursor, f"priors of model version {model_version_id}")


def publish_policy(cur, model_version_id: int | None, cursor: int, reason: str) -> int:
    """A new policy version: what decisions drawn from the current shares will name."""
    cur.execute(
        "INSERT INTO offer_policy_versions (model_version_id, feedback_cursor, reason) VALUES (%s, %s, %s)"
        " RETURNING id",
        (model_version_id, cursor, reason),
    )
    return cur.fetchone()[0]


def coupon_id(model_version_id: int, segment: str, offer_code: str) -> str:
    """The deterministic Stripe id of an offer: the same offer set always maps to the same ids."""
    return f"mv{model_version_id}-{segment}-{offer_code}".lower()


# an arm the bandit retired for losing (as opposed to one a new champion or a rollback set aside)
RETIRED_FOR_LOSING = "a.retired_at IS NOT NULL AND a.losing_since IS NOT NULL"


def publications(cur, model_version_id: int) -> list[dict[str, Any]]:
    """A version's offers to publish: all but those whose arm was retired for losing. A
    publication retired with its version (a rollback away from it) is published again when the
    version is rolled back to."""
    frame = _rows(
        cur,
        f"""
        SELECT p.segment, p.stripe_product_id, p.stripe_coupon_id, o.id AS offer_id, o.code,
               o.product, o.discount_pct::float8 AS discount_pct
        FROM offer_publications p JOIN offers o ON o.id = p.offer_id
        WHERE p.model_version_id = %s AND NOT EXISTS (
            SELECT 1 FROM offer_bandit_arms a
            WHERE a.segment = p.segment AND a.offer_id = p.offer_id AND {RETIRED_FOR_LOSING})
        ORDER BY p.segment, o.code
        """,  # noqa: S608 (a module constant)
        (model_version_id,),
    )
    return frame.to_dict("records")


def mark_published(cur, model_version_id: int, segment: str, offer_id: int) -> None:
    """Published (again: a version rolled back to has its retired coupons made anew)."""
    cur.execute(
        "UPDATE offer_publications SET published_at = coalesce(published_at, now()), retired_at = NULL"
        " WHERE model_version_id = %s AND segment = %s AND offer_id = %s",
        (model_version_id, segment, offer_id),
    )


def live_coupons(cur, model_version_id: int) -> list[str]:
    """The Stripe coupons of a version's publications that are not retired."""
    cur.execute(
        "SELECT stripe_coupon_id FROM offer_publications WHERE model_version_id = %s"
        " AND retired_at IS NULL ORDER BY segment",
        (model_version_id,),
    )
    return [r[0] for r in cur.fetchall()]


def write_report(cur, s3, *, version_id: int) -> dict[str, str]:
    """The version's stored ROC and calibration PNGs and a metrics table, next to its artifact."""
    version = registry.get(cur, version_id)
    prefix = version.artifact_uri.rsplit("/", 1)[0] + "/"
    files = {
        f"{name}.png": (png, "image/png") for name, png in registry.stored_plots(cur, version_id).items()
    }
    files["report.md"] = (
        report_markdown(version.version, version.metrics, version.metrics.get("decision", "")).encode(),
        "text/markdown",
    )
    for name, (data, content_type) in files.items():
        registry.put_object(s3, prefix + name, data, content_type)
    # the feedback that triggered this retrain is now used: count afresh from here
    cur.execute("SELECT coalesce(sum(redemptions), 0) FROM offer_bandit_arms")
    set_cursor(cur, FEEDBACK_MARK, int(cur.fetchone()[0]))
    return {name: prefix + name for name in files}


# --- offer_feedback -----------------------------------------------------------------------------------


def update_bandit(
    cur,
    *,
    min_exploration: float,
    budget_per_impression_cents: float | None,
    retire_after_days: float = RETIRE_AFTER_DAYS,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Fold new impressions and redemptions into the live arms' Beta posteriors, re-allocate,
    retire the arms that have lost for `retire_after_days`, and publish the shares as a new
    policy version when they changed.

    Reads user_events after the cursor (by id), quarantines future-dated ones, and moves the
    cursor in the same transaction, so a re-run adds nothing twice. Events of offers that are
    no live arm of their segment (the seeded catalog's, a retired arm's) are counted, not folded.
    """
    now = now or datetime.now(UTC)
    start = get_cursor(cur, FEEDBACK_CURSOR)
    events = _rows(
        cur,
        """
        SELECT e.id, e.offer_id, e.event_type, e.occurred_at, u.segment
        FROM user_events e JOIN users u ON u.id = e.user_id
        WHERE e.id > %s AND e.offer_id IS NOT NULL AND e.event_type IN ('impression', 'redemption')
        ORDER BY e.id
        """,
        (start,),
    )
    future = events[events["occurred_at"] > pd.Timestamp(now)] if len(events) else events
    quarantined = quarantine(
        cur,
        "feedback_events",
        ((str(r.id), "future timestamp", r._asdict()) for r in future.itertuples(index=False)),
    )
    events = events.drop(future.index)
    counts = (
        events.assign(imp=events["event_type"] == "impression", red=events["event_type"] == "redemption")
        .groupby(["segment", "offer_id"])[["imp", "red"]]
        .sum()
        if len(events)
        else pd.DataFrame(columns=["imp", "red"])
    )
    folded = Counter()
    for (segment, offer_id), (imp, red) in counts.iterrows():
        cur.execute(
            """
            UPDATE offer_bandit_arms SET
                impressions = impressions + %(i)s, redemptions = redemptions + %(r)s,
                alpha = prior_alpha + redemptions + %(r)s,
                beta = prior_beta + greatest(impressions + %(i)s - redemptions - %(r)s, 0),
                updated_at = now()
            WHERE segment = %(s)s AND offer_id = %(o)s AND retired_at IS NULL
            """,
            {"s": segment, "o": int(offer_id), "i": int(imp), "r": int(red)},
        )
        if cur.rowcount:
            folded.update(impressions=int(imp), redemptions=int(red))
    end = int(events["id"].max()) if len(events) else start
    if len(future):
        end = max(end, int(future["id"].max()))
    allocation = allocate(
        cur,
        min_exploration=min_exploration,
        budget_per_impression_cents=budget_per_impression_cents,
        seed=end,
        retire_after_days=retire_after_days,
        now=now,
    )
    set_cursor(cur, FEEDBACK_CURSOR, end)
    policy = None
    if allocation["changed"]:
        latest = latest_policy(cur)
        policy = publish_policy(cur, latest.model_version_id if latest else None, end, "offer_feedback")
    cur.execute("SELECT coalesce(sum(redemptions), 0) FROM offer_bandit_arms")
    total = int(cur.fetchone()[0])
    return {
        "events": len(events),
        "impressions": folded["impressions"],
        "redemptions": folded["redemptions"],
        "not_live_arm_events": int(counts.to_numpy().sum()) - sum(folded.values()) if len(counts) else 0,
        "quarantined": quarantined,
        "cursor": end,
        "redemptions_since_retrain": total - get_cursor(cur, FEEDBACK_MARK),
        "top_offer_share": allocation["top"],
        "retired": allocation["retired"],
        "policy_version": policy,
    }


def allocate(
    cur,
    *,
    min_exploration: float,
    budget_per_impression_cents: float | None,
    seed: int,
    retire_after_days: float | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Thompson-sampling shares of each segment's live arms, stored on the arms.

    An arm whose win probability is below LOSING_WIN_SHARE is losing (`losing_since` set);
    with `retire_after_days`, one that has lost that long is retired (never the segment's last
    live arm) and the shares are drawn over the rest. Returns each segment's top share, the
    retired arms and whether any share changed.
    """
    now = now or datetime.now(UTC)
    arms = _rows(
        cur,
        "SELECT a.segment, a.offer_id, a.alpha, a.beta, a.share, a.losing_since, o.code, o.product,"
        " o.discount_pct::float8 AS discount_pct FROM offer_bandit_arms a JOIN offers o ON o.id = a.offer_id"
        " WHERE a.retired_at IS NULL ORDER BY a.segment, a.offer_id",
    )
    arms["value_cents"] = m.offer_value_cents(arms["product"], arms["discount_pct"])
    arms["cost_cents"] = discount_cost_cents(arms["product"], arms["discount_pct"])
    top, retired, changed = {}, [], False
    for i, (segment, part) in enumerate(arms.groupby("segment")):
        losing = (win_shares(part, seed=seed + i) < LOSING_WIN_SHARE).tolist()
        since = [
            (s if pd.notna(s) else now) if lose else None
            for s, lose in zip(part["losing_since"], losing, strict=True)
        ]
        old = [
            bool(
                lose
                and retire_after_days is not None
                and (now - s).total_seconds() >= retire_after_days * 86400
            )
            for s, lose in zip(since, losing, strict=True)
        ]
        if all(old):  # the segment keeps at least one arm: its leader
            old[int(part["alpha"].div(part["alpha"] + part["beta"]).mul(part["value_cents"]).argmax())] = (
                False
            )
        live = part[[not o for o in old]]
        shares = thompson_shares(
            live,
            min_exploration=min_exploration,
            budget_per_impression_cents=budget_per_impression_cents,
            seed=seed + i,
        )
        share_of = dict(zip(live["offer_id"], shares, strict=True))
        for offer_id, code, previous, losing_from, retire in zip(
            part["offer_id"], part["code"], part["share"], since, old, strict=True
        ):
            share = float(share_of.get(offer_id, 0.0))
            changed |= retire or abs(share - previous) > 1e-12
            cur.execute(
                "UPDATE offer_bandit_arms SET share = %s, losing_since = %s,"
                " retired_at = CASE WHEN %s THEN now() END WHERE segment = %s AND offer_id = %s",
                (share, losing_from, retire, segment, int(offer_id)),
            )
            if retire:
                retired.append({"segment": segment, "offer_id": int(offer_id), "code": code})
        top[segment] = float(shares.max())
    return {"top": top, "retired": retired, "changed": changed}


def retired_publications(cur) -> list[dict[str, Any]]:
    """Published offers whose arm was retired for losing, and whose Stripe coupon is still live."""
    return _rows(
        cur,
        f"""
        SELECT p.model_version_id, p.segment, p.offer_id, p.stripe_coupon_id
        FROM offer_publications p
        JOIN offer_bandit_arms a ON a.segment = p.segment AND a.offer_id = p.offer_id
        WHERE {RETIRED_FOR_LOSING} AND p.published_at IS NOT NULL AND p.retired_at IS NULL
        ORDER BY p.stripe_coupon_id
        """,  # noqa: S608 (a module constant)
    ).to_dict("records")


def mark_unpublished(cur, stripe_coupon_id: str) -> None:
    """The publication whose Stripe coupon was deleted is retired."""
    cur.execute(
        "UPDATE offer_publications SET retired_at = coalesce(retired_at, now()) WHERE stripe_coupon_id = %s",
        (stripe_coupon_id,),
    )


# --- roi_sync ---------------------------------------------------------------------------------------


def sync_payments(
    cur,
    charges: Iterable[dict[str, Any]],
    *,
    refunds: Iterable[dict[str, Any]] = (),
    disputes: Iterable[dict[str, Any]] = (),
    now: datetime | None = None,
) -> dict[str, int]:
    """Upsert Stripe charges into `payments` (with what was refunded of each) and their disputes
    into `payment_disputes` (with what they withhold in `payments.disputed_cents`); quarantine the
    impossible ones; hold the charges that are not final.

    `charges` are those listed after `charges_since(cur)` and those of the `refunds` listed after
    `refunds_since(cur)` and of the new `disputes` (a refund's or a dispute's charge may be older
    than any listing window). `disputes` are those listed after `disputes_since(cur)` and every
    one of `open_disputes(cur)`, read again by id: a dispute's status changes long after it was
    made, so until it is final it is re-read on every run, whatever the cursor.

    Returns reconciliation counts: listed = inserted + updated + unchanged + quarantined + pending
    for charges, disputes_listed = disputes_inserted + disputes_updated + disputes_unchanged +
    disputes_quarantined for disputes. The charge cursor moves to the newest charge seen but never
    past one that is not final (pending, or authorised and not captured yet): it stops a second
    before the oldest, which the next run lists again. The refund and dispute cursors move to the
    newest refund and dispute seen. All move in this transaction, with the rows.
    """
    now = now or datetime.now(UTC)
    cur.execute("SELECT id FROM users")
    known_users = {r[0] for r in cur.fetchall()}
    cur.execute("SELECT stripe_coupon_id, offer_id FROM offer_publications")
    coupon_offers = dict(cur.fetchall())
    counts = Counter(listed=0, inserted=0, updated=0, unchanged=0, quarantined=0, pending=0)
    newest = get_cursor(cur, CHARGES_CURSOR)
    oldest_pending = None
    for charge in charges:
        counts["listed"] += 1
        created = int(charge["created"])
        if not is_final(charge):
            counts["pending"] += 1
            oldest_pending = created if oldest_pending is None else min(oldest_pending, created)
            continue
        newest = max(newest, created)
        row, reason = payment_row(charge, known_users=known_users, coupon_offers=coupon_offers, now=now)
        if row is None:
            quarantine(cur, "stripe_charges", [(charge["id"], reason, charge)])
            counts["quarantined"] += 1
            continue
        counts[_upsert(cur, "payments", row)] += 1
    set_cursor(cur, CHARGES_CURSOR, newest if oldest_pending is None else min(newest, oldest_pending - 1))
    refund_times = [int(r["created"]) for r in refunds]
    if refund_times:
        set_cursor(cur, REFUNDS_CURSOR, max(get_cursor(cur, REFUNDS_CURSOR), *refund_times))
    counts.update(_sync_disputes(cur, list(disputes), now))
    return dict(counts)


def _upsert(cur, table: str, row: Any, *, touch: str | None = None) -> str:
    """`row` (a dataclass whose fields are `table`'s columns, its key first) inserted, or its row
    updated where a column differs (`touch`, a timestamp column, set to now then); returns
    "inserted", "updated" or "unchanged"."""
    values = asdict(row)
    key, *columns = values
    updates = [f"{c} = EXCLUDED.{c}" for c in columns] + ([f"{touch} = now()"] if touch else [])
    stored, excluded = (", ".join(f"{prefix}{c}" for c in columns) for prefix in (f"{table}.", "EXCLUDED."))
    # the names are the row's dataclass fields, never input
    sql = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})"  # noqa: S608
    sql += f" ON CONFLICT ({key}) DO UPDATE SET {', '.join(updates)}"
    sql += f" WHERE ({stored}) IS DISTINCT FROM ({excluded}) RETURNING (xmax = 0)"
    cur.execute(sql, list(values.values()))
    result = cur.fetchone()
    return "unchanged" if result is None else "inserted" if result[0] else "updated"


def _sync_disputes(cur, disputes: list[dict[str, Any]], now: datetime) -> Counter:
    """`payment_disputes` upserted (after the charges, so a dispute's new charge is there) and
    the `disputed_cents` of their charges recomputed; see `sync_payments`."""
    counts = Counter(
        disputes_listed=0,
        disputes_inserted=0,
        disputes_updated=0,
        disputes_unchanged=0,
        disputes_quarantined=0,
    )
    withheld = list(DISPUTE_WITHHELD)
    for dispute in disputes:
        counts["disputes_listed"] += 1
        cur.execute(
            "SELECT p.amount_cents, p.refunded_cents, (SELECT coalesce(sum(d.amount_cents), 0)"
            " FROM payment_disputes d WHERE d.stripe_charge_id = p.stripe_payment_id"
            " AND d.stripe_dispute_id <> %s AND d.status = ANY(%s))::bigint"
            " FROM payments p WHERE p.stripe_payment_id = %s",
            (dispute["id"], withheld, dispute.get("charge")),
        )
        row, reason = dispute_row(dispute, payment=cur.fetchone(), now=now)
        if row is None:
            quarantine(cur, "stripe_disputes", [(dispute["id"], reason, dispute)])
            counts["disputes_quarantined"] += 1
            continue
        counts["disputes_" + _upsert(cur, "payment_disputes", row, touch="updated_at")] += 1
        cur.execute(
            "UPDATE payments p SET disputed_cents = w.cents FROM (SELECT coalesce(sum(amount_cents), 0)"
            " AS cents FROM payment_disputes WHERE stripe_charge_id = %s AND status = ANY(%s)) w"
            " WHERE p.stripe_payment_id = %s AND p.disputed_cents <> w.cents",
            (row.stripe_charge_id, withheld, row.stripe_charge_id),
        )
    if disputes:
        newest = max(int(d["created"]) for d in disputes)
        set_cursor(cur, DISPUTES_CURSOR, max(get_cursor(cur, DISPUTES_CURSOR), newest))
    return counts


def open_disputes(cur) -> list[str]:
    """The synced disputes that are not final yet: each sync reads them again by id."""
    cur.execute(
        "SELECT stripe_dispute_id FROM payment_disputes WHERE status <> ALL(%s) ORDER BY created_at",
        (list(DISPUTE_FINAL),),
    )
    return [r[0] for r in cur.fetchall()]


def charges_since(cur) -> int:
    """Where the next Stripe charge listing starts (unix seconds, exclusive)."""
    return _listing_start(cur, CHARGES_CURSOR)


def refunds_since(cur) -> int:
    """Where the next Stripe refund listing starts (unix seconds, exclusive)."""
    return _listing_start(cur, REFUNDS_CURSOR)


def disputes_since(cur) -> int:
    """Where the next Stripe dispute listing starts (unix seconds, exclusive)."""
    return _listing_start(cur, DISPUTES_CURSOR)


def _listing_start(cur, name: str) -> int:
    # localstripe (and sane data) has nothing before 2017; its list refuses earlier bounds
    return max(get_cursor(cur, name) - STRIPE_OVERLAP_SECONDS, 1_500_000_001)


def compute_roi(cur, model_version_id: int) -> list[SegmentRoi]:
    """Attributed and incremental ROI per segment of one assignment, stored in `offer_roi`, on
    net revenue (what was paid minus what was refunded and what disputes withhold, integer
    cents). An assignment of a free offer (100%, before revision 0009 forbade it) is refused,
    naming the offers: its cost cannot be derived from what was paid."""
    from include.offers.roi import DISCOUNT_COST_SQL, FREE_OFFERS_SQL, NET_CENTS_SQL

    cur.execute(FREE_OFFERS_SQL, (model_version_id,))
    if free := cur.fetchall():
        named = ", ".join(f"{code} ({float(pct):g}%)" for code, pct in free)
        raise ValueError(
            f"model version {model_version_id} assigned offers of 100% or more, whose cost ROI cannot "
            f"derive from what was paid: {named}; retire them (revision 0009 keeps offers below 100%)"
        )
    frame = _rows(
        cur,
        f"""
        SELECT a.user_id, a.segment, a.holdout,
               coalesce(sum({NET_CENTS_SQL}), 0)::bigint AS revenue,
               coalesce(sum({NET_CENTS_SQL}) FILTER (WHERE o.id IS NOT NULL), 0)::bigint AS attributed,
               coalesce(sum({DISCOUNT_COST_SQL}) FILTER (WHERE o.id IS NOT NULL), 0)::float8
                   AS discount_cost
        FROM offer_assignments a
        LEFT JOIN payments p ON p.user_id = a.user_id AND p.created_at > a.assigned_at
                            AND p.status <> 'failed'
        -- the offer redeemed: any of the version's published offers of the user's segment (the
        -- bandit serves them all), not only the assignment's pick
        LEFT JOIN offer_publications pub ON pub.model_version_id = a.model_version_id
                                        AND pub.segment = a.segment AND pub.offer_id = p.offer_id
        LEFT JOIN offers o ON o.id = pub.offer_id
        WHERE a.model_version_id = %s
        GROUP BY a.user_id, a.segment, a.holdout
        """,  # noqa: S608 (a module constant)
        (model_version_id,),
    )
    results = []
    for segment, part in frame.groupby("segment"):
        treated, held = part[~part["holdout"]], part[part["holdout"]]
        roi = segment_roi(
            segment,
            treated["revenue"].tolist(),
            held["revenue"].tolist(),
            int(treated["attributed"].sum()),
            int(round(treated["discount_cost"].sum())),
        )
        results.append(roi)
        cur.execute(
            """
            INSERT INTO offer_roi (model_version_id, segment, treated_users, holdout_users,
                attributed_revenue_cents, discount_cost_cents, attributed_roi_cents,
                incremental_roi_cents, incremental_ci_low_cents, incremental_ci_high_cents,
                roi_gap_cents)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (model_version_id, segment) DO UPDATE SET
                treated_users = EXCLUDED.treated_users, holdout_users = EXCLUDED.holdout_users,
                attributed_revenue_cents = EXCLUDED.attributed_revenue_cents,
                discount_cost_cents = EXCLUDED.discount_cost_cents,
                attributed_roi_cents = EXCLUDED.attributed_roi_cents,
                incremental_roi_cents = EXCLUDED.incremental_roi_cents,
                incremental_ci_low_cents = EXCLUDED.incremental_ci_low_cents,
                incremental_ci_high_cents = EXCLUDED.incremental_ci_high_cents,
                roi_gap_cents = EXCLUDED.roi_gap_cents, computed_at = now()
            """,
            (
                model_version_id,
                segment,
                roi.treated_users,
                roi.holdout_users,
                roi.attributed_revenue_cents,
                roi.discount_cost_cents,
                roi.attributed_roi_cents,
                roi.incremental_roi_cents,
                roi.incremental_ci_low_cents,
                roi.incremental_ci_high_cents,
                roi.gap_cents,
            ),
        )
    return results


def latest_assignment(cur) -> int | None:
    """The model version whose offers are live (`roi.LIVE_ASSIGNMENT_SQL`)."""
    from include.offers.roi import LIVE_ASSIGNMENT_SQL

    cur.execute(f"SELECT {LIVE_ASSIGNMENT_SQL}")  # noqa: S608 (a module constant)
    return cur.fetchone()[0]
