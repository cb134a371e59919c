"""
### ROI sync (Stripe payments → attributed and incremental ROI)

**Owner:** growth data team. **Schedule:** hourly.

1. **sync_payments**: Stripe charges created after the cursor (minus a one-minute overlap),
   page by page, upserted into `payments` (a re-run changes nothing); charges with impossible
   values (negative amount, future timestamp, unknown user or offer coupon) are quarantined
   with a reason. Counts are reconciled: listed = inserted + updated + unchanged + quarantined,
   or the task fails.
2. **compute_roi**: for the live offer set, per segment: attributed ROI (revenue of redeemed
   offers − discount cost) and incremental ROI (revenue per treated user − per holdout user,
   times treated users, − discount cost, with a 95% interval), into `offer_roi`.
3. **publish_metrics**: both ROI figures and their gap (how much attribution overstates the
   effect: a trust-inflation indicator) to CloudWatch, with the sync counts.

**Idempotent:** upserts keyed by Stripe id and (model version, segment); the cursor moves in
the same transaction as the rows.

**When it fails:** a reconciliation failure names the counts; quarantined rows are in
`offer_quarantine`. Fix the cause and clear the run.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.offers import SyncStripePaymentsOperator, offer_default_args
from include.schedules import schedule_for


@dag(
    schedule=schedule_for("roi_sync", "@hourly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["offers", "stripe"],
    **run_metrics_callbacks(),
    default_args=offer_default_args(),
)
def roi_sync():
    synced = SyncStripePaymentsOperator(task_id="sync_payments")

    @task
    def compute_roi() -> list[dict]:
        from dataclasses import asdict

        from execplatform.operators.offers import APP_DB, app_cursor
        from include.offers import jobs

        with app_cursor(APP_DB) as cur:
            version_id = jobs.latest_assignment(cur)
            if version_id is None:
                return []
            return [{**asdict(r), "gap_cents": r.gap_cents, "model_version_id": version_id}
                    for r in jobs.compute_roi(cur, version_id)]  # fmt: skip

    @task
    def publish_metrics(rois: list[dict], ti=None) -> int:
        from execplatform.hooks.cloudwatch_hook import CloudWatchMetricsHook
        from include.metrics import NAMESPACE, Metric, standard_dimensions

        counts = ti.xcom_pull(task_ids="sync_payments") or {}
        dims = standard_dimensions()
        metrics = [Metric(f"StripePayments{k.title()}", float(v), unit="Count", dimensions=dims)
                   for k, v in counts.items()]  # fmt: skip
        for roi in rois:
            seg = {**dims, "Segment": roi["segment"]}
            metrics.append(Metric("OfferRoiAttributedCents", roi["attributed_roi_cents"], dimensions=seg))
            if roi["incremental_roi_cents"] is not None:
                metrics.append(Metric("OfferRoiIncrementalCents", roi["incremental_roi_cents"], dimensions=seg))
                metrics.append(Metric("OfferRoiGapCents", roi["gap_cents"], dimensions=seg))
        CloudWatchMetricsHook(aws_conn_id="aws_default").put_metrics(NAMESPACE, metrics)
        return len(metrics)

    rois = compute_roi()
    synced >> rois
    publish_metrics(rois)


roi_sync()
