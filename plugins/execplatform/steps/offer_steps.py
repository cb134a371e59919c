"""The task bodies of offer_model_retrain, offer_feedback and roi_sync: each opens the app
database and S3 through their hooks and calls `include.offers`."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import APP_DB, AWS


def model_bucket() -> str:
    return os.environ.get("MODEL_BUCKET", "execplatform-models")


def s3_client(aws_conn_id: str = AWS):
    """boto3's S3 client of the connection; every object it reads or writes is reported as
    lineage of the running task."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from execplatform.lineage import report_s3_objects

    hook = S3Hook(aws_conn_id=aws_conn_id)
    return report_s3_objects(hook.get_conn(), context=hook)


def report_refused_artifact(version_id: int, reason: str) -> None:
    """A model artifact failed verification: a critical alert and a security event."""
    from execplatform.notifiers.alert_notifier import send_alert
    from include.observability.security_events import log_security_event

    with AppDatabaseHook(APP_DB).cursor() as cur:
        log_security_event(
            cur,
            "input_refused",
            "critical",
            object="model_version",
            version_id=version_id,
            reason=reason,
        )
    send_alert("critical", f"offer model version {version_id} artifact refused: {reason}")


# --- offer_model_retrain ----------------------------------------------------------------------


def roll_back_champion(champion_id: int = 0, requested_at: datetime | None = None) -> dict[str, int]:
    """The champion is rejected and the previous one returns (a security event says so).

    `champion_id` names the champion to roll back; 0 means the one that was champion when the
    rollback was requested (`requested_at`, the run's `run_after`; now when not given). When
    another is champion the run fails without retries, naming both; when it was rolled back
    already (a double-submitted request, with or without `champion_id`), nothing changes and
    the run goes on idempotently."""
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps import checked_number
    from include.observability.security_events import log_security_event
    from include.offers import registry
    from include.offers.model import MODEL_NAME

    champion_id = int(checked_number("champion_id", champion_id, low=0, high=2**31 - 1))
    with AppDatabaseHook(APP_DB).cursor() as cur:
        current = registry.champion(cur, MODEL_NAME)
        if not champion_id and requested_at is not None:
            then = registry.champion_at(cur, MODEL_NAME, requested_at)
            if then is None:
                raise AirflowFailException(
                    f"{MODEL_NAME!r} had no champion when the rollback was requested"
                    f" ({requested_at.isoformat()}): refused"
                )
            champion_id = then.id
        try:
            retired, restored = registry.rollback(cur, MODEL_NAME, champion_id or None)
        except registry.ChampionChanged as changed:
            raise AirflowFailException(str(changed)) from None
        if current is not None and current.id == retired.id:
            log_security_event(
                cur,
                "rollback",
                "warning",
                object="model_version",
                retired=retired.id,
                restored=restored.id,
            )
    return {"retired": retired.id, "restored": restored.id, "already": current.id != retired.id}


def retire_offers(version_id: int) -> dict[str, int]:
    """Delete the Stripe coupons of a version's publications, so nobody can redeem them any
    more, and mark them retired; a coupon already gone counts as deleted (a re-run is a no-op)."""
    from include.offers import jobs

    with AppDatabaseHook(APP_DB).cursor() as cur:
        live = jobs.live_coupons(cur, version_id)
    return {"model_version_id": version_id, "retired": len(live), "deleted": _delete_coupons(live)}


def _delete_coupons(coupons: list[str]) -> int:
    """Delete each Stripe coupon, marking its publication retired as soon as it is gone (its own
    transaction, so a failure later leaves the database as Stripe is); returns how many were
    deleted now (one already gone is not)."""
    from execplatform.hooks.stripe_hook import StripeHook
    from include.offers import jobs

    hook = StripeHook()
    deleted = 0
    for coupon in coupons:
        deleted += hook.delete_coupon(coupon)
        with AppDatabaseHook(APP_DB).cursor() as cur:
            jobs.mark_unpublished(cur, coupon)
    return deleted


def extract_training_data(run_id: str) -> dict[str, Any]:
    """Every impression with its features into a CSV snapshot in S3, keyed by the run."""
    from include.offers import jobs
    from include.offers.model import MODEL_NAME

    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    uri = f"s3://{model_bucket()}/{MODEL_NAME}/runs/{safe_run}/training.csv.gz"
    with AppDatabaseHook(APP_DB).cursor() as cur:
        return jobs.extract(cur, s3_client(), uri, datetime.now(UTC))


def train_challenger(snapshot_uri: str, valid_days: float) -> dict[str, Any]:
    from execplatform.steps import checked_number
    from include.offers import jobs

    valid_days = checked_number("valid_days", valid_days, low=1, high=3650)
    with AppDatabaseHook(APP_DB).cursor() as cur:
        return jobs.train(
            cur,
            s3_client(),
            snapshot_uri=snapshot_uri,
            bucket=model_bucket(),
            valid_days=valid_days,
        )


def evaluate_challenger(snapshot_uri: str, trained: dict[str, Any]) -> dict[str, Any]:
    """Challenger and champion on the same holdout; a refused artifact fails hard (and alerts)."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.offers import jobs, registry

    try:
        with AppDatabaseHook(APP_DB).cursor() as cur:
            result = jobs.evaluate(
                cur,
                s3_client(),
                snapshot_uri=snapshot_uri,
                version_id=trained["version_id"],
                valid_from=trained["valid_from"],
            )
    except registry.ArtifactRefused as refused:
        report_refused_artifact(trained["version_id"], str(refused))
        raise AirflowFailException(f"challenger {trained['version_id']}: {refused}") from None
    if result.get("champion_refused"):
        report_refused_artifact(**result["champion_refused"])
    return result


def promote_or_keep(evaluation: dict[str, Any], margin_auc: float) -> dict[str, Any]:
    """Promote the challenger or keep the champion. Refused while an open FSAR report blocks
    execution; before a promotion, the audit's model gates run on the challenger
    (`include.audit.gates.model_candidate_gates`), and one it fails refuses it (a `gate_failed`
    security event each)."""
    from execplatform.steps import checked_number
    from execplatform.steps.audit_steps import AirflowServices
    from execplatform.steps.fsar_steps import refuse_while_blocked
    from include.audit.gates import DEFAULT_LIMITS, model_candidate_gates
    from include.observability.security_events import log_security_event
    from include.offers import jobs, registry

    margin_auc = checked_number("margin_auc", margin_auc, low=-1, high=1)
    refuse_while_blocked(f"promoting offer model version {evaluation['version_id']}")
    services = AirflowServices()

    def candidate_gates(cur, version_id: int) -> list[str]:
        evidence = model_candidate_gates(cur, DEFAULT_LIMITS, services, version_id, margin_auc)
        failed = [e for e in evidence if not e.passed]
        for e in failed:
            log_security_event(
                cur,
                "gate_failed",
                "warning",
                actor="offer_model_retrain",
                gate=e.gate,
                version_id=version_id,
                observed=e.observed,
                limit=e.limit,
            )
        return [str(e) for e in failed]

    with AppDatabaseHook(APP_DB).cursor() as cur:
        return jobs.promote_or_keep(
            cur, evaluation, registry.Gates(margin_auc=margin_auc), before_promotion=candidate_gates
        )


def assign_offers(holdout_share: float, budget_cents: float) -> dict[str, Any]:
    """The champion's offer per segment; skipped before the first champion exists."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from execplatform.steps import checked_number
    from include.offers import jobs, registry
    from include.offers.model import MODEL_NAME

    holdout_share = checked_number("holdout_share", holdout_share, low=0, high=1)
    budget_cents = checked_number("discount_budget_cents", budget_cents, low=0, high=1e11)
    try:
        with AppDatabaseHook(APP_DB).cursor() as cur:
            return jobs.assign_offers(
                cur, s3_client(), holdout_share=holdout_share, budget_cents=budget_cents
            )
    except LookupError as missing:  # no champion yet: nothing to offer, nothing to publish
        raise AirflowSkipException(str(missing)) from None
    except registry.ArtifactRefused as refused:
        with AppDatabaseHook(APP_DB).cursor() as cur:
            report_refused_artifact(registry.champion(cur, MODEL_NAME).id, str(refused))
        raise AirflowFailException(f"champion artifact refused: {refused}") from None


def write_model_report(evaluation: dict[str, Any] | None, decision: dict[str, Any] | None) -> dict:
    """The ROC and calibration plots and the metrics table next to the version in S3, and the
    challenger's figures to CloudWatch; skipped when the run trained nothing (a rollback)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from execplatform.hooks.cloudwatch_hook import publish_metrics
    from include.observability.metrics import Metric
    from include.offers import jobs

    if not evaluation:
        raise AirflowSkipException("no model was trained in this run (rollback)")
    with AppDatabaseHook(APP_DB).cursor() as cur:
        files = jobs.write_report(cur, s3_client(), version_id=evaluation["version_id"])
    challenger = evaluation["challenger"]
    publish_metrics(
        [
            Metric("OfferModelAuc", challenger["auc"]),
            Metric("OfferModelLogLoss", challenger["log_loss"]),
            Metric("OfferModelPromoted", float(bool((decision or {}).get("promoted")))),
        ]
    )
    return files


# --- offer_feedback ---------------------------------------------------------------------------


def update_bandit(
    min_exploration: float, budget_per_impression_cents: float, retire_after_days: float
) -> dict[str, Any]:
    from execplatform.steps import checked_number
    from include.offers import jobs

    min_exploration = checked_number("min_exploration", min_exploration, low=0, high=1)
    budget_per_impression_cents = checked_number(
        "budget_per_impression_cents", budget_per_impression_cents, low=0, high=1e9
    )
    retire_after_days = checked_number("retire_after_days", retire_after_days, low=0, high=3650)
    with AppDatabaseHook(APP_DB).cursor() as cur:
        return jobs.update_bandit(
            cur,
            min_exploration=min_exploration,
            budget_per_impression_cents=budget_per_impression_cents,
            retire_after_days=retire_after_days,
        )


def unpublish_retired_offers() -> dict[str, int]:
    """Delete the Stripe coupons of offers retired for losing, so they can no longer be redeemed;
    each is marked in the same step (a coupon already gone counts as deleted)."""
    from include.offers import jobs

    with AppDatabaseHook(APP_DB).cursor() as cur:
        retired = [p["stripe_coupon_id"] for p in jobs.retired_publications(cur)]
    return {"retired_coupons": len(retired), "deleted_now": _delete_coupons(retired)}


# --- roi_sync ---------------------------------------------------------------------------------


def compute_roi() -> list[dict[str, Any]]:
    """Attributed and incremental ROI per segment of the live offer set, into `offer_roi`."""
    from dataclasses import asdict

    from include.offers import jobs

    with AppDatabaseHook(APP_DB).cursor() as cur:
        version_id = jobs.latest_assignment(cur)
        if version_id is None:
            return []
        return [
            {**asdict(r), "gap_cents": r.gap_cents, "model_version_id": version_id}
            for r in jobs.compute_roi(cur, version_id)
        ]


def publish_roi_metrics(counts: dict[str, int] | None, rois: list[dict[str, Any]]) -> int:
    """The sync's counts and each segment's ROI figures (and their gap) to CloudWatch."""
    from execplatform.hooks.cloudwatch_hook import publish_metrics
    from include.observability.metrics import Metric

    metrics = [
        Metric(f"StripePayments{k.title().replace('_', '')}", float(v), unit="Count")
        for k, v in (counts or {}).items()
    ]
    for roi in rois:
        segment = {"Segment": roi["segment"]}
        metrics.append(Metric("OfferRoiAttributedCents", roi["attributed_roi_cents"], dimensions=segment))
        if roi["incremental_roi_cents"] is not None:
            metrics.append(
                Metric("OfferRoiIncrementalCents", roi["incremental_roi_cents"], dimensions=segment)
            )
            metrics.append(Metric("OfferRoiGapCents", roi["gap_cents"], dimensions=segment))
    publish_metrics(metrics)
    return len(metrics)
