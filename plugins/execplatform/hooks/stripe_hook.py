"""Stripe hook: a `stripe.StripeClient` built from an Airflow connection."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook

from include.ids import STRIPE

if TYPE_CHECKING:
    import stripe

T = TypeVar("T")


class StripeHook(BaseHook):
    """
    Talks to Stripe (or localstripe) with the secret key of an Airflow connection.

    The connection keeps the secret key as its password and, optionally, the API base as its
    host (``http://127.0.0.1:8420`` for localstripe; empty for api.stripe.com).

    :param stripe_conn_id: the connection to use.
    """

    conn_name_attr = "stripe_conn_id"
    default_conn_name = STRIPE
    conn_type = "stripe"
    hook_name = "Stripe"

    # Network retries, set explicitly rather than left to library defaults: for reads the client
    # retries connection errors, timeouts and 5xx itself (with backoff), and this hook adds 429,
    # which the client does not retry without a server hint. Creates are retried by `ensure`
    # only, which looks for the object before each new attempt.
    max_network_retries = 3
    timeout_seconds = 10.0
    rate_limit_retries = 4
    rate_limit_backoff_seconds = 0.5

    def __init__(self, stripe_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.stripe_conn_id = stripe_conn_id
        self.api_base = "https://api.stripe.com"  # the connection's, once get_conn has read it

    def get_conn(self) -> stripe.StripeClient:
        import stripe

        conn = self.get_connection(self.stripe_conn_id)
        if not conn.password:
            raise ValueError(f"connection {self.stripe_conn_id!r} has no secret key in its password")
        base = conn.host or "https://api.stripe.com"
        self.api_base = f"{base}:{conn.port}" if conn.port else base
        return stripe.StripeClient(
            api_key=conn.password,
            base_addresses={"api": self.api_base},
            max_network_retries=self.max_network_retries,
            http_client=stripe.RequestsClient(timeout=self.timeout_seconds),
        )

    def _with_retries(self, call: Callable[[], T]) -> T:
        """`call()`, retried with backoff on 429 and on errors the client gave up on."""
        import stripe

        for attempt in range(self.rate_limit_retries + 1):
            try:
                return call()
            except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError) as error:
                transient = not isinstance(error, stripe.APIError) or (error.http_status or 500) >= 500
                if not transient or attempt == self.rate_limit_retries:
                    raise
                # the message only: it never carries the key (the hook sends it in a header)
                self.log.warning("Stripe call failed (%s), retry %d", type(error).__name__, attempt + 1)
                time.sleep(self.rate_limit_backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    def ensure(self, kind: str, object_id: str, params: dict[str, Any]) -> tuple[Any, bool]:
        """The Stripe object `kind` ("products", "coupons") with id `object_id`: fetched when it
        exists, else created with `params` and an idempotency key derived from the id.

        Returns (object, created). After any failed create (5xx, 429, timeout: the object may
        have been made and only the answer lost) the next attempt fetches before creating
        again, and a 409 means it exists: an object is never made twice.
        """
        import stripe

        service = getattr(self.get_conn().v1, kind)
        options = {"idempotency_key": f"{kind}-{object_id}", "max_network_retries": 0}
        self._report(kind, wrote=True)

        def fetch() -> Any | None:
            try:
                return service.retrieve(object_id)
            except stripe.InvalidRequestError as error:
                if error.http_status == 404:
                    return None
                raise

        for attempt in range(self.rate_limit_retries + 1):
            existing = self._with_retries(fetch)
            if existing is not None:
                return existing, False
            try:
                return service.create({**params, "id": object_id}, options), True
            except (stripe.RateLimitError, stripe.APIConnectionError, stripe.APIError) as error:
                if (
                    isinstance(error, stripe.APIError)
                    and (error.http_status or 500) < 500
                    and error.http_status != 409
                ):
                    raise
                self.log.warning(
                    "creating Stripe %s %s failed (%s), attempt %d; fetching first",
                    kind,
                    object_id,
                    type(error).__name__,
                    attempt + 1,
                )
                if error.http_status != 409:
                    time.sleep(self.rate_limit_backoff_seconds * 2**attempt)
        raise RuntimeError(
            f"Stripe {kind} {object_id!r}: not created after {self.rate_limit_retries + 1} attempts"
        )

    def delete_coupon(self, coupon_id: str) -> bool:
        """Delete a coupon, so it can no longer be redeemed (charges made with it stay). Returns
        True when it was deleted now, False when Stripe has no such coupon (already deleted)."""
        import stripe

        service = self.get_conn().v1.coupons
        self._report("coupons", wrote=True)

        def delete() -> bool:
            try:
                service.delete(coupon_id)
            except stripe.InvalidRequestError as error:
                if error.http_status == 404:
                    return False
                raise
            return True

        return self._with_retries(delete)

    def iter_charges(self, created_after: int, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every charge created after `created_after` (unix seconds), page by page."""
        return self.iter_objects("charges", {"created": {"gt": created_after}}, page_size)

    def iter_refunds(self, created_after: int, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every refund created after `created_after` (unix seconds). Stripe lists refunds newest
        first, so the listing stops at the first older one (localstripe takes no `created` filter
        on refunds; the stop works the same on both)."""
        for refund in self.iter_objects("refunds", None, page_size):
            if int(refund["created"]) <= created_after:
                return
            yield refund

    def iter_disputes(self, created_after: int, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every dispute created after `created_after` (unix seconds), page by page."""
        return self.iter_objects("disputes", {"created": {"gt": created_after}}, page_size)

    def retrieve(self, kind: str, object_id: str) -> dict[str, Any]:
        """The Stripe object `kind` ("charges", "coupons"...) with id `object_id`."""
        service = getattr(self.get_conn().v1, kind)
        return self._with_retries(lambda: service.retrieve(object_id)).to_dict()

    def iter_objects(
        self, kind: str, params: dict[str, Any] | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every Stripe object of `kind` ("charges", "coupons", "products") matching `params`,
        page by page."""
        service = getattr(self.get_conn().v1, kind)
        self._report(kind, wrote=False)
        starting_after = None
        while True:
            query: dict[str, Any] = {**(params or {}), "limit": page_size}
            if starting_after:
                query["starting_after"] = starting_after
            page = self._with_retries(lambda query=query: service.list(query))
            for obj in page.data:
                yield obj.to_dict()
            if not page.has_more or not page.data:
                return
            starting_after = page.data[-1].id

    def _report(self, kind: str, *, wrote: bool) -> None:
        """Lineage: the running task reads (or writes) Stripe's `kind` objects."""
        from execplatform.lineage import report_stripe

        report_stripe(self, self.api_base, kind, wrote=wrote)
