"""Offers to and money from Stripe: publishing a model version's offers, syncing charges."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from include.ids import APP_DB, STRIPE

if TYPE_CHECKING:
    from airflow.sdk import Context


class PublishOffersOperator(BaseOperator):
    """
    Publish a model version's offers to Stripe: a Product and a Coupon per (segment, offer),
    but for offers already retired (their coupon deleted, see ``offer_feedback``).

    Ids are deterministic (``mv<version id>-<segment>-<offer code>``) and carry the model
    version and segment as metadata; an object that exists is fetched, not re-created, and
    every create sends an idempotency key, so a retried or re-run task never duplicates one.
    Refused (the task fails without retries) while an open FSAR report blocks execution.

    :param model_version_id: (templated) the model version whose ``offer_publications`` to publish.
    :param stripe_conn_id: the Stripe connection (secret key as password, API base as host).
    :param app_conn_id: the app database.
    """

    template_fields = ("model_version_id",)

    def __init__(
        self,
        *,
        model_version_id: int | str,
        stripe_conn_id: str = STRIPE,
        app_conn_id: str = APP_DB,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_version_id = model_version_id
        self.stripe_conn_id = stripe_conn_id
        self.app_conn_id = app_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from execplatform.hooks.stripe_hook import StripeHook
        from execplatform.steps.fsar_steps import refuse_while_blocked
        from include.offers import jobs

        version_id = int(self.model_version_id)
        refuse_while_blocked(
            f"publishing the offers of model version {version_id} to Stripe", self.app_conn_id
        )
        hook = StripeHook(stripe_conn_id=self.stripe_conn_id)
        with AppDatabaseHook(self.app_conn_id).cursor() as cur:
            offers = jobs.publications(cur, version_id)
        created = existing = 0
        for offer in offers:
            metadata = {
                "model_version_id": str(version_id),
                "segment": offer["segment"],
                "offer_code": offer["code"],
                "offer_id": str(offer["offer_id"]),
            }
            _, made_product = hook.ensure(
                "products",
                offer["stripe_product_id"],
                {"name": f"{offer['product']} ({offer['segment']})", "metadata": metadata},
            )
            _, made_coupon = hook.ensure(
                "coupons",
                offer["stripe_coupon_id"],
                {"percent_off": offer["discount_pct"], "duration": "once", "metadata": metadata},
            )
            created += made_product + made_coupon
            existing += (not made_product) + (not made_coupon)
            with AppDatabaseHook(self.app_conn_id).cursor() as cur:
                jobs.mark_published(cur, version_id, offer["segment"], offer["offer_id"])
        self.log.info(
            "offers of model version %d: %d Stripe objects created, %d existed",
            version_id,
            created,
            existing,
        )
        return {"offers": len(offers), "created": created, "existing": existing}


class SyncStripePaymentsOperator(BaseOperator):
    """
    Incremental sync of Stripe charges into ``payments`` and of their disputes into
    ``payment_disputes``: charges listed page by page from a cursor on creation time (with an
    overlap) that never passes a charge that is not final, and the charges of the refunds and
    disputes made since their cursors, fetched again; disputes listed from their cursor, and
    every synced dispute that is not final yet read again by id; upserted with what was refunded
    and what disputes withhold, impossible ones quarantined; returns the reconciliation counts
    (listed = inserted + updated + unchanged + quarantined + pending, and the same for
    ``disputes_*`` without pending).

    :param stripe_conn_id: the Stripe connection.
    :param app_conn_id: the app database.
    :param page_size: charges per Stripe list call.
    """

    def __init__(
        self,
        *,
        stripe_conn_id: str = STRIPE,
        app_conn_id: str = APP_DB,
        page_size: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stripe_conn_id = stripe_conn_id
        self.app_conn_id = app_conn_id
        self.page_size = page_size

    def execute(self, context: Context) -> dict[str, int]:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from execplatform.hooks.stripe_hook import StripeHook
        from include.offers import jobs

        hook = StripeHook(stripe_conn_id=self.stripe_conn_id)
        with AppDatabaseHook(self.app_conn_id).cursor() as cur:
            start, refunds_start = jobs.charges_since(cur), jobs.refunds_since(cur)
            disputes_start = jobs.disputes_since(cur)
            refunds = list(hook.iter_refunds(refunds_start, page_size=self.page_size))
            new_disputes = list(hook.iter_disputes(disputes_start, page_size=self.page_size))
            charges = {c["id"]: c for c in hook.iter_charges(start, page_size=self.page_size)}
            # a refund's or a new dispute's charge may be older than the listing: fetched by id
            # (once each)
            for charge_id in dict.fromkeys(o["charge"] for o in refunds + new_disputes if o.get("charge")):
                if charge_id not in charges:
                    charges[charge_id] = hook.retrieve("charges", charge_id)
            disputes = {d["id"]: d for d in new_disputes}
            for dispute_id in jobs.open_disputes(cur):  # until final, whatever the cursor
                if dispute_id not in disputes:
                    disputes[dispute_id] = hook.retrieve("disputes", dispute_id)
            counts = jobs.sync_payments(cur, charges.values(), refunds=refunds, disputes=disputes.values())
        for prefix, outcomes in (
            ("", ("inserted", "updated", "unchanged", "quarantined", "pending")),
            ("disputes_", ("inserted", "updated", "unchanged", "quarantined")),
        ):
            if sum(counts[prefix + k] for k in outcomes) != counts[prefix + "listed"]:
                raise AirflowFailException(f"payments sync does not reconcile: {counts}")
        self.log.info(
            "Stripe charges after %d, refunds after %d, disputes after %d: %s",
            start,
            refunds_start,
            disputes_start,
            counts,
        )
        return counts
