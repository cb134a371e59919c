"""Offers in Stripe (localstripe): deterministic ids, fetch-not-recreate, and a faulty network.

The fault test puts an HTTP proxy between the hook and localstripe that answers 500 after
forwarding (the object is made, the answer lost), 429 without forwarding, or forwards and then
stalls past the client's timeout, on a fixed share of requests.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from include.offers import jobs
from tests import offers_fixtures
from tests.offers_fixtures import cursor

offers_dsn = offers_fixtures.offers_dsn  # the shared fixture

SEGMENTS = ("new", "casual", "regular", "vip")


class FaultyProxy:
    """Forwards to `upstream`; request n gets the fault `schedule[n % len(schedule)]`."""

    def __init__(self, upstream: str, schedule: list[str], stall_seconds: float) -> None:
        self.upstream = urlparse(upstream)
        self.schedule = schedule
        self.stall_seconds = stall_seconds
        self.counter = itertools.count()
        self.faults: Counter = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                fault = proxy.schedule[next(proxy.counter) % len(proxy.schedule)]
                proxy.faults[fault] += 1
                if fault == "429":
                    return self._answer(
                        429, b'{"error": {"type": "rate_limit_error", "message": "slow down"}}'
                    )
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, data = proxy.forward(self.command, self.path, dict(self.headers), body)
                if fault == "500":
                    return self._answer(500, b'{"error": {"type": "api_error", "message": "injected"}}')
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                self._answer(status, data)

            def _answer(self, status: int, data: bytes):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out first: that is the fault

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        keep = {
            k: v
            for k, v in headers.items()
            if k.lower() in ("authorization", "content-type", "idempotency-key")
        }
        conn.request(method, path, body=body or None, headers=keep)
        response = conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _publications(dsn: str) -> int:
    """A model version with unique ids (localstripe lives for the whole session) and offers."""
    version_id = random.randint(10**6, 10**9)
    with cursor(dsn) as cur:
        cur.execute(
            "INSERT INTO model_versions (id, model_name, version, status) OVERRIDING SYSTEM VALUE"
            " VALUES (%s, 'stripe_test', 1, 'candidate')",
            (version_id,),
        )
        cur.execute("SELECT id, code FROM offers WHERE discount_pct > 0 ORDER BY id LIMIT 4")
        offers = cur.fetchall()
        for i, segment in enumerate(SEGMENTS):
            offer_id, code = offers[i]
            coupon = jobs.coupon_id(version_id, segment, code)
            cur.execute(
                "INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id,"
                " stripe_coupon_id) VALUES (%s, %s, %s, %s, %s)",
                (version_id, segment, offer_id, f"prod_{coupon}", coupon),
            )
    return version_id


def _stripe_objects(kind: str, prefix: str) -> list[dict]:
    from execplatform.hooks.stripe_hook import StripeHook

    client = StripeHook().get_conn()
    listed = getattr(client.v1, kind).list({"limit": 10_000})
    return [o.to_dict() for o in listed.data if o.id.startswith(prefix)]


def test_publish_creates_each_offer_once_with_metadata_and_a_rerun_fetches(offers_dsn):
    from execplatform.operators.stripe_operators import PublishOffersOperator

    version_id = _publications(offers_dsn)
    operator = PublishOffersOperator(task_id="publish", model_version_id=str(version_id))
    first = operator.execute({})
    assert first == {"offers": 4, "created": 8, "existing": 0}
    assert operator.execute({}) == {"offers": 4, "created": 0, "existing": 8}
    coupons = _stripe_objects("coupons", f"mv{version_id}-")
    products = _stripe_objects("products", f"prod_mv{version_id}-")
    assert len(coupons) == len(products) == 4
    vip = next(c for c in coupons if "-vip-" in c["id"])
    assert vip["metadata"]["model_version_id"] == str(version_id)
    assert vip["metadata"]["segment"] == "vip"
    with cursor(offers_dsn) as cur:
        cur.execute(
            "SELECT count(*) FROM offer_publications WHERE model_version_id = %s AND published_at IS NOT "
            "NULL",
            (version_id,),
        )
        assert cur.fetchone()[0] == 4


def test_every_offer_exists_exactly_once_through_500s_429s_and_timeouts(offers_dsn, local_stack, monkeypatch):
    from execplatform.hooks.stripe_hook import StripeHook
    from execplatform.operators.stripe_operators import PublishOffersOperator

    stripe_conn = json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"])
    # one request in two is faulty: lost answers after the write, refusals, stalls
    proxy = FaultyProxy(stripe_conn["host"], ["ok", "500", "ok", "429", "ok", "stall"], stall_seconds=1.5)
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_FAULTY", json.dumps({**stripe_conn, "host": proxy.url}))
    monkeypatch.setattr(StripeHook, "timeout_seconds", 0.5)
    monkeypatch.setattr(StripeHook, "rate_limit_backoff_seconds", 0.05)
    monkeypatch.setattr(StripeHook, "rate_limit_retries", 8)
    try:
        version_id = _publications(offers_dsn)
        operator = PublishOffersOperator(
            task_id="publish", model_version_id=version_id, stripe_conn_id="stripe_faulty"
        )
        result = operator.execute({})
        rerun = operator.execute({})  # a retried task: nothing new
    finally:
        proxy.close()
    assert proxy.faults["500"] >= 2 and proxy.faults["429"] >= 2 and proxy.faults["stall"] >= 2, proxy.faults
    assert result["offers"] == 4 and result["created"] + result["existing"] == 8
    assert rerun == {"offers": 4, "created": 0, "existing": 8}
    coupon_ids = [c["id"] for c in _stripe_objects("coupons", f"mv{version_id}-")]
    product_ids = [p["id"] for p in _stripe_objects("products", f"prod_mv{version_id}-")]
    assert sorted(coupon_ids) == sorted(set(coupon_ids)) and len(coupon_ids) == 4
    assert sorted(product_ids) == sorted(set(product_ids)) and len(product_ids) == 4


def test_the_stripe_key_never_reaches_the_task_log(offers_dsn, caplog):
    from execplatform.operators.stripe_operators import PublishOffersOperator

    secret = json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"])["password"]
    version_id = _publications(offers_dsn)
    with caplog.at_level("DEBUG"):
        PublishOffersOperator(task_id="publish", model_version_id=version_id).execute({})
    assert secret not in caplog.text


def test_payment_sync_pages_through_stripe_and_a_rerun_changes_nothing(offers_dsn):
    from execplatform.hooks.stripe_hook import StripeHook
    from execplatform.operators.stripe_operators import SyncStripePaymentsOperator

    client = StripeHook().get_conn()
    made = []
    for user_id in range(1, 8):
        method = client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 1,
                    "exp_year": 2031,
                    "cvc": "321",
                },
            }
        )
        made.append(
            client.v1.charges.create(
                {
                    "amount": 1500,
                    "currency": "usd",
                    "source": method.id,
                    "metadata": {"user_id": str(user_id)},
                }
            ).id
        )
    listed = list(StripeHook().iter_charges(1_500_000_001, page_size=3))
    ids = [c["id"] for c in listed]
    assert len(ids) == len(set(ids)) and set(made) <= set(ids)  # every page, no charge twice

    operator = SyncStripePaymentsOperator(task_id="sync", page_size=3)
    first = operator.execute({})
    second = operator.execute({})
    assert first["listed"] >= 7 and first["inserted"] >= 7
    assert second["inserted"] == second["updated"] == 0 and second["unchanged"] >= 7
    with cursor(offers_dsn) as cur:
        cur.execute("SELECT count(*) FROM payments WHERE stripe_payment_id = ANY(%s)", (made,))
        assert cur.fetchone()[0] == 7
        cur.execute("SELECT position FROM sync_cursors WHERE name = 'stripe_charges_created'")
        assert cur.fetchone()[0] >= 1_500_000_001


def test_retired_coupons_are_deleted_through_500s_and_429s(local_stack, monkeypatch):
    """A deletion whose answer is lost (500 after the write) is retried, finds the coupon gone
    (404) and counts it as deleted: every coupon ends deleted, no call fails."""
    import uuid

    import pytest
    import stripe

    from execplatform.hooks.stripe_hook import StripeHook

    stripe_conn = json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"])
    client = StripeHook().get_conn()
    ids = [f"retire-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for coupon in ids:
        client.v1.coupons.create({"id": coupon, "percent_off": 10, "duration": "once"})
    proxy = FaultyProxy(stripe_conn["host"], ["500", "ok", "429", "ok"], stall_seconds=0)
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_FAULTY", json.dumps({**stripe_conn, "host": proxy.url}))
    monkeypatch.setattr(StripeHook, "rate_limit_backoff_seconds", 0.05)
    monkeypatch.setattr(StripeHook, "max_network_retries", 0)  # the hook's own retries, quickly
    try:
        hook = StripeHook("stripe_faulty")
        results = [hook.delete_coupon(coupon) for coupon in ids]
        again = [hook.delete_coupon(coupon) for coupon in ids]
    finally:
        proxy.close()
    assert proxy.faults["500"] >= 1 and proxy.faults["429"] >= 1, proxy.faults
    assert all(isinstance(r, bool) for r in results) and again == [False] * 2
    for coupon in ids:
        with pytest.raises(stripe.InvalidRequestError) as gone:
            client.v1.coupons.retrieve(coupon)
        assert gone.value.http_status == 404
