"""Stripe hook: a `stripe.StripeClient` built from an Airflow connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    import stripe


class StripeHook(BaseHook):
    """
    Talks to Stripe (or localstripe) with the secret key of an Airflow connection.

    The connection keeps the secret key as its password and, optionally, the API base as its
    host (``http://127.0.0.1:8420`` for localstripe; empty for api.stripe.com).

    :param stripe_conn_id: the connection to use.
    """

    conn_name_attr = "stripe_conn_id"
    default_conn_name = "stripe_default"
    conn_type = "stripe"
    hook_name = "Stripe"

    def __init__(self, stripe_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.stripe_conn_id = stripe_conn_id

    def get_conn(self) -> stripe.StripeClient:
        import stripe

        conn = self.get_connection(self.stripe_conn_id)
        if not conn.password:
            raise ValueError(f"connection {self.stripe_conn_id!r} has no secret key in its password")
        base = conn.host or "https://api.stripe.com"
        if conn.port:
            base = f"{base}:{conn.port}"
        return stripe.StripeClient(
            api_key=conn.password, base_addresses={"api": base}, max_network_retries=2
        )
