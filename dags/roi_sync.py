"""
### ROI sync (Stripe payments → attributed and incremental ROI)

**Owner:** growth data team. **Schedule:** hourly.

1. **sync_payments**: Stripe charges created after the charge cursor (minus a one-minute
   overlap), and the charges of the refunds made after the refund cursor, upserted into
   `payments` with what was refunded of each (a re-run changes nothing). A charge that is not
   final (pending, or authorised and not captured) is not stored and holds the charge cursor
   before it, so the next run reads it again. Charges with impossible values (negative amount,
   future timestamp, unknown user or offer coupon) are quarantined with a reason. Disputes:
   those made after the dispute cursor (minus the overlap), their charges fetched by id, and
   every synced dispute not final yet (won, lost, warning_closed) read again by id, into
   `payment_disputes`; `payments.disputed_cents` is what a charge's disputes withhold (open or
   lost; won or an inquiry: nothing). A dispute above what is left of its charge, or of an
   unknown charge, is quarantined. Counts are reconciled, for charges (listed = inserted +
   updated + unchanged + quarantined + pending) and for disputes (the same without pending),
   or the task fails.
2. **compute_roi**: for the live offer set, per segment, on net revenue (paid − refunded −
   withheld by disputes):
   attributed ROI (revenue of redeemed offers − discount cost) and incremental ROI (revenue
   per treated user − per holdout user, times treated users, − discount cost, with a 95%
   interval), into `offer_roi`.
3. **publish_metrics**: both ROI figures and their gap (how much attribution overstates the
   effect: a trust-inflation indicator) to CloudWatch, with the sync counts.

**Idempotent:** upserts keyed by Stripe id and (model version, segment); the cursors move in
the same transaction as the rows.

**When it fails:** a reconciliation failure names the counts; quarantined rows are in
`offer_quarantine`. Fix the cause and clear the run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from execplatform.dag_defaults import default_args, schedule_for
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.stripe_operators import SyncStripePaymentsOperator


@dag(
    schedule=schedule_for("roi_sync", "@hourly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["offers", "stripe"],
    **run_metrics_callbacks(),
    default_args=default_args("growth-data", retry_delay=timedelta(minutes=1)),
)
def roi_sync():
    synced = SyncStripePaymentsOperator(task_id="sync_payments")

    @task
    def compute_roi() -> list[dict]:
        from execplatform.steps import offer_steps

        return offer_steps.compute_roi()

    @task
    def publish_metrics(rois: list[dict], ti=None) -> int:
        from execplatform.steps.offer_steps import publish_roi_metrics

        return publish_roi_metrics(ti.xcom_pull(task_ids="sync_payments"), rois)

    rois = compute_roi()
    synced >> rois
    publish_metrics(rois)


roi_sync()
