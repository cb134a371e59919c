"""
### Offer model retrain (champion/challenger)

**Owner:** growth data team. **Schedule:** weekly, and whenever `offer_feedback` reports enough
new redemptions (Asset `offer_feedback_enough`). Manual runs take the parameters below.

extract → train → evaluate → promote or keep → assign offers → publish offers → report:

- **extract**: every offer impression with its features (recency, frequency, spend, segment,
  channel, offer) into a CSV snapshot in S3 (`$MODEL_BUCKET`); impossible rows (future
  timestamps, negative amounts, unknown products) go to `offer_quarantine` with a reason and
  are counted; training goes on without them.
- **train**: a calibrated gradient-boosting `Pipeline` on the past, validated on the most recent
  `valid_days`; the skops artifact goes to S3 and `model_versions` records its SHA-256, training
  window, data fingerprint and code version.
- **evaluate**: challenger and champion on the same holdout (AUC, log loss, Brier, calibration,
  the policy's expected ROI). Artifacts load only when their SHA-256 matches: a tampered one is
  refused, alerts (critical), and the champion stays.
- **promote or keep**: promoted only when it beats the champion's AUC by `margin_auc` and passes
  the sanity floors; otherwise `rejected`.
- **assign / publish**: the champion picks one offer per segment maximising expected ROI within
  `discount_budget_cents`; `holdout_share` of each segment gets none (the control group ROI is
  measured against). Products and coupons go to Stripe with deterministic ids.
- **report**: ROC and calibration PNGs and a metrics table, stored next to the version in S3.

**Rollback:** trigger with `rollback = true`: the champion is rejected, the previous champion
returns (its artifact unchanged, so its predictions are the old ones), and its offers are
re-published (idempotent).

**Idempotent:** the same data and code give the same version; assignments, publications and
Stripe objects are keyed by version, user or deterministic id.

**When it fails:** read the failed task's log: a refused artifact names both hashes; a Stripe
error names the object id. Fix the cause and clear the failed task; re-runs change nothing done.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import (
    Asset,
    AssetAlias,
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    dag,
    task,
)

from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.offers import PublishOffersOperator, offer_default_args
from include.schedules import schedule_for

OFFER_FEEDBACK = Asset("offer_feedback_enough")
# a new champion (promoted or rolled back to) triggers adversarial_audit; through an alias, so a
# run that keeps the champion emits nothing
MODEL_PROMOTED, MODEL_PROMOTION = Asset("offer_model_promoted"), AssetAlias("offer_model_promotion")


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(schedule_for("offer_model_retrain", "0 3 * * 1"), timezone="UTC"), assets=OFFER_FEEDBACK
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["offers", "ml"],
    params={
        "rollback": Param(False, type="boolean", description="roll the champion back one step instead of training"),
        "valid_days": Param(21, type="number", minimum=1, description="most recent days held out for validation"),
        "margin_auc": Param(0.002, type="number", minimum=-1, maximum=1,
                            description="AUC a challenger must gain over the champion (negative: may lose)"),
        "holdout_share": Param(0.1, type="number", minimum=0.01, maximum=0.5, description="share of each segment given no offer"),
        "discount_budget_cents": Param(50_000_000, type="number", minimum=0, description="expected discount paid over all offers"),
    },
    **run_metrics_callbacks(),
    default_args=offer_default_args(),
)
def offer_model_retrain():
    @task.branch
    def choose_mode(params=None) -> str:
        return "rollback_champion" if params["rollback"] else "extract"

    @task(outlets=[MODEL_PROMOTED])
    def rollback_champion() -> dict:
        from execplatform.operators.offers import APP_DB, app_cursor
        from include.offers import registry
        from include.offers.model import MODEL_NAME
        from include.security_events import log_security_event

        with app_cursor(APP_DB) as cur:
            retired, restored = registry.rollback(cur, MODEL_NAME)
            log_security_event(cur, "rollback", "warning", object="model_version",
                               retired=retired.id, restored=restored.id)  # fmt: skip
        return {"retired": retired.id, "restored": restored.id}

    @task
    def extract(run_id=None) -> dict:
        from datetime import UTC

        from execplatform.operators.offers import APP_DB, app_cursor, model_bucket, s3_client
        from include.offers import jobs
        from include.offers.model import MODEL_NAME

        safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        uri = f"s3://{model_bucket()}/{MODEL_NAME}/runs/{safe_run}/training.csv.gz"
        with app_cursor(APP_DB) as cur:
            return jobs.extract(cur, s3_client(), uri, datetime.now(UTC))

    @task
    def train(extracted: dict, params=None) -> dict:
        from execplatform.operators.offers import APP_DB, app_cursor, model_bucket, s3_client
        from include.offers import jobs

        with app_cursor(APP_DB) as cur:
            return jobs.train(cur, s3_client(), snapshot_uri=extracted["snapshot_uri"],
                              bucket=model_bucket(), valid_days=params["valid_days"])  # fmt: skip

    @task
    def evaluate(extracted: dict, trained: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.operators.offers import (
            APP_DB,
            app_cursor,
            report_refused_artifact,
            s3_client,
        )
        from include.offers import jobs, registry

        try:
            with app_cursor(APP_DB) as cur:
                result = jobs.evaluate(cur, s3_client(), snapshot_uri=extracted["snapshot_uri"],
                                       version_id=trained["version_id"], valid_from=trained["valid_from"])  # fmt: skip
        except registry.ArtifactRefused as refused:
            report_refused_artifact(trained["version_id"], str(refused))
            raise AirflowFailException(f"challenger {trained['version_id']}: {refused}") from None
        if result.get("champion_refused"):
            report_refused_artifact(**result["champion_refused"])
        return result

    @task(outlets=[MODEL_PROMOTION])
    def promote_or_keep(evaluation: dict, params=None, outlet_events=None) -> dict:
        from execplatform.operators.offers import APP_DB, app_cursor
        from include.offers import jobs, registry

        with app_cursor(APP_DB) as cur:
            decision = jobs.promote_or_keep(cur, evaluation, registry.Gates(margin_auc=params["margin_auc"]))
        if decision["promoted"]:
            outlet_events[MODEL_PROMOTION].add(MODEL_PROMOTED)
        return decision

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def assign_offers(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from execplatform.operators.offers import (
            APP_DB,
            app_cursor,
            report_refused_artifact,
            s3_client,
        )
        from include.offers import jobs, registry
        from include.offers.model import MODEL_NAME

        try:
            with app_cursor(APP_DB) as cur:
                return jobs.assign_offers(cur, s3_client(), holdout_share=params["holdout_share"],
                                          budget_cents=params["discount_budget_cents"])  # fmt: skip
        except LookupError as missing:  # no champion yet: nothing to offer, nothing to publish
            raise AirflowSkipException(str(missing)) from None
        except registry.ArtifactRefused as refused:
            with app_cursor(APP_DB) as cur:
                report_refused_artifact(registry.champion(cur, MODEL_NAME).id, str(refused))
            raise AirflowFailException(f"champion artifact refused: {refused}") from None

    publish = PublishOffersOperator(
        task_id="publish_offers",
        model_version_id="{{ ti.xcom_pull(task_ids='assign_offers')['model_version_id'] }}",
    )

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def report(ti=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
        from execplatform.operators.offers import APP_DB, app_cursor, s3_client
        from include.metrics import NAMESPACE, Metric, standard_dimensions
        from include.offers import jobs

        evaluation = ti.xcom_pull(task_ids="evaluate")
        if not evaluation:
            raise AirflowSkipException("no model was trained in this run (rollback)")
        decision = ti.xcom_pull(task_ids="promote_or_keep") or {}
        with app_cursor(APP_DB) as cur:
            files = jobs.write_report(cur, s3_client(), version_id=evaluation["version_id"])
        dims = standard_dimensions()
        challenger = evaluation["challenger"]
        CloudWatchMetricsHook(aws_conn_id="aws_default").put_metrics(NAMESPACE, [
            Metric("OfferModelAuc", challenger["auc"], dimensions=dims),
            Metric("OfferModelLogLoss", challenger["log_loss"], dimensions=dims),
            Metric("OfferModelPromoted", float(bool(decision.get("promoted"))), dimensions=dims),
        ])  # fmt: skip
        return files

    extracted = extract()
    trained = train(extracted)
    evaluated = evaluate(extracted, trained)
    decided = promote_or_keep(evaluated)
    assigned = assign_offers()
    rolled_back = rollback_champion()
    choose_mode() >> [extracted, rolled_back]
    [decided, rolled_back] >> assigned >> publish
    [decided, publish] >> report()


offer_model_retrain()
