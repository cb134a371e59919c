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
- **evaluate**: challenger and champion on the same holdout (AUC, log loss, Brier, calibration
  error and curve, the policy's expected ROI); the challenger's evaluation and its ROC and
  calibration plots are recorded (database), which promotion requires. Artifacts load only
  when their SHA-256 matches: a tampered one is refused, alerts (critical), and the champion
  stays.
- **promote or keep**: promoted only when it beats the champion's AUC by `margin_auc` and passes
  the sanity floors; otherwise `rejected`.
- **assign / publish**: the champion picks one offer per segment maximising expected ROI within
  `discount_budget_cents`; `holdout_share` of each segment gets none (the control group ROI is
  measured against). Products and coupons go to Stripe with deterministic ids.
- **report**: the ROC and calibration PNGs and a metrics table, copied next to the version in S3.

**Rollback:** trigger with `rollback = true` and `champion_id` (the champion you are rolling
back; the dashboard's button sends the one its page showed): the champion is rejected, the
previous champion returns (its artifact unchanged, so its predictions are the old ones), the
rejected version's coupons are deleted from Stripe (nobody can redeem them), and the previous
version's offers are published again (its coupons made anew if they were deleted). Without
`champion_id`, the rollback rolls back the champion of the time the run was requested (its
`run_after`). Refused (the run fails, no retry) when another version is champion; a second
request for the same rollback (a double click, with or without `champion_id`) changes nothing,
so the champion moves back once.

**Idempotent:** the same data and code give the same version; assignments, publications and
Stripe objects are keyed by version, user or deterministic id. A run on data and code a decided
version was trained on (the champion, or a version rolled back) changes nothing: the version,
its artifact and its status stay, and nothing is promoted again.

**When it fails:** read the failed task's log: a refused artifact names both hashes; a Stripe
error names the object id. Fix the cause and clear the failed task; re-runs change nothing done.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    Param,
    TriggerRule,
    dag,
    task,
)

from execplatform.dag_defaults import (
    MODEL_PROMOTED,
    MODEL_PROMOTION,
    OFFER_FEEDBACK,
    default_args,
    number_param,
    schedule_for,
)
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.stripe_operators import PublishOffersOperator

JOIN = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS  # where the train and rollback branches meet


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(schedule_for("offer_model_retrain", "0 3 * * 1"), timezone="UTC"),
        assets=OFFER_FEEDBACK,
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["offers", "ml"],
    params={
        "rollback": Param(
            False, type="boolean", description="roll the champion back one step instead of training"
        ),
        "champion_id": number_param(
            0,
            minimum=0,
            maximum=2**31 - 1,
            integer=True,
            description="the champion (model_versions.id) a rollback rolls back; refused when another"
            " is champion (0: whichever was when the run was requested)",
        ),
        "valid_days": number_param(
            21, minimum=1, maximum=365, description="most recent days held out for validation"
        ),
        "margin_auc": number_param(
            0.002,
            minimum=-1,
            maximum=1,
            description="AUC a challenger must gain over the champion (negative: may lose)",
        ),
        "holdout_share": number_param(
            0.1, minimum=0.01, maximum=0.5, description="share of each segment given no offer"
        ),
        "discount_budget_cents": number_param(
            50_000_000,
            minimum=0,
            maximum=10_000_000_000,
            description="expected discount paid over all offers",
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args("growth-data", retry_delay=timedelta(minutes=1)),
)
def offer_model_retrain():
    @task.branch
    def choose_mode(params=None) -> str:
        return "rollback_champion" if params["rollback"] else "extract"

    @task(outlets=[MODEL_PROMOTED])
    def rollback_champion(params=None, dag_run=None) -> dict:
        from execplatform.steps.offer_steps import roll_back_champion

        return roll_back_champion(params["champion_id"], dag_run.run_after)

    @task
    def retire_rolled_back_offers(rolled_back: dict) -> dict:
        from execplatform.steps.offer_steps import retire_offers

        return retire_offers(rolled_back["retired"])

    @task
    def extract(run_id=None) -> dict:
        from execplatform.steps.offer_steps import extract_training_data

        return extract_training_data(run_id)

    @task
    def train(extracted: dict, params=None) -> dict:
        from execplatform.steps.offer_steps import train_challenger

        return train_challenger(extracted["snapshot_uri"], params["valid_days"])

    @task
    def evaluate(extracted: dict, trained: dict) -> dict:
        from execplatform.steps.offer_steps import evaluate_challenger

        return evaluate_challenger(extracted["snapshot_uri"], trained)

    @task(outlets=[MODEL_PROMOTION])
    def promote_or_keep(evaluation: dict, params=None, outlet_events=None) -> dict:
        from execplatform.steps import offer_steps

        decision = offer_steps.promote_or_keep(evaluation, params["margin_auc"])
        if decision["promoted"]:
            outlet_events[MODEL_PROMOTION].add(MODEL_PROMOTED)
        return decision

    @task(trigger_rule=JOIN)
    def assign_offers(params=None) -> dict:
        from execplatform.steps import offer_steps

        return offer_steps.assign_offers(params["holdout_share"], params["discount_budget_cents"])

    publish = PublishOffersOperator(
        task_id="publish_offers",
        model_version_id="{{ ti.xcom_pull(task_ids='assign_offers')['model_version_id'] }}",
    )

    @task(trigger_rule=JOIN)
    def report(ti=None) -> dict:
        from execplatform.steps.offer_steps import write_model_report

        return write_model_report(ti.xcom_pull(task_ids="evaluate"), ti.xcom_pull(task_ids="promote_or_keep"))

    extracted = extract()
    trained = train(extracted)
    evaluated = evaluate(extracted, trained)
    decided = promote_or_keep(evaluated)
    assigned = assign_offers()
    rolled_back = rollback_champion()
    retired = retire_rolled_back_offers(rolled_back)
    choose_mode() >> [extracted, rolled_back]
    [decided, retired] >> assigned >> publish
    [decided, publish] >> report()


offer_model_retrain()
