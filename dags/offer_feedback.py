"""
### Offer feedback (Thompson-sampling bandit)

**Owner:** growth data team. **Schedule:** hourly; trigger it for a refresh on demand.

Folds new offer impressions and redemptions (from `user_events`, after a cursor on the event
id) into the Beta posteriors of the live arms (`offer_bandit_arms`: the champion's published
offers per segment), then re-allocates each segment's traffic by Thompson sampling and
publishes the shares as a new policy version, which serving (`include.offers.serving`, the
ops dashboard's `/ops/offers/decision/<user id>`) draws from at once. Guardrails: every arm
keeps at least `min_exploration / arms` of its segment, and when the expected discount per
impression exceeds `budget_per_impression_cents`, traffic moves to the cheapest arm until it
fits (the budget wins over exploration). Future-dated events are quarantined.

**unpublish_retired_offers:** an arm whose chance of being best stays under 1% for
`retire_after_days` is retired (no longer served); this task deletes its Stripe coupon, so it
can no longer be redeemed. A coupon already gone counts as deleted.

When `retrain_after_redemptions` new redemptions have arrived since the last retrain, the
Asset `offer_feedback_enough` is updated, which triggers `offer_model_retrain`.

**Idempotent:** the cursor moves in the same transaction as the posteriors; a re-run with no
new events changes nothing (the sampling seed is the cursor position).

**When it fails:** the log names the step; fix the cause and clear the run. Nothing is counted
twice, since a failed transaction leaves the cursor where it was.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from execplatform.dag_defaults import OFFER_FEEDBACK, default_args, number_param, schedule_for
from execplatform.notifiers.alert_notifier import run_metrics_callbacks


@dag(
    schedule=schedule_for("offer_feedback", "@hourly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["offers", "ml"],
    params={
        "min_exploration": number_param(
            0.1, minimum=0, maximum=1, description="traffic share spread evenly over every arm"
        ),
        "budget_per_impression_cents": number_param(  # 5 times the dearest product: never binds
            300, minimum=0, maximum=100_000, description="expected discount per impression"
        ),
        "retire_after_days": number_param(
            3, minimum=0, maximum=365, description="days an offer may lose before it is retired"
        ),
        "retrain_after_redemptions": number_param(
            500,
            integer=True,
            minimum=1,
            maximum=1_000_000,
            description="new redemptions that trigger a retrain",
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args("growth-data", retry_delay=timedelta(minutes=1)),
)
def offer_feedback():
    @task
    def update_bandit(params=None) -> dict:
        from execplatform.steps import offer_steps

        return offer_steps.update_bandit(
            params["min_exploration"], params["budget_per_impression_cents"], params["retire_after_days"]
        )

    @task
    def unpublish_retired_offers(update: dict) -> dict:
        from execplatform.steps import offer_steps

        return offer_steps.unpublish_retired_offers()

    @task(outlets=[OFFER_FEEDBACK])
    def signal_enough_feedback(update: dict, params=None) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        new = update["redemptions_since_retrain"]
        if new < params["retrain_after_redemptions"]:
            raise AirflowSkipException(f"{new} redemptions since the last retrain; waiting for more")
        return new

    update = update_bandit()
    unpublish_retired_offers(update)
    signal_enough_feedback(update)


offer_feedback()
