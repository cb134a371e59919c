"""The Disputes stand-in of devstack/stripe_server.py, on the stack's localstripe, through the
Stripe client as the sync uses it."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

from tests.offers_fixtures import stripe_test_helper


@pytest.fixture
def client(local_stack):
    from execplatform.hooks.stripe_hook import StripeHook

    return StripeHook().get_conn()


def _charge(client, amount: int) -> str:
    card = {"number": "4242424242424242", "exp_month": 1, "exp_year": 2031, "cvc": "321"}
    source = client.v1.payment_methods.create({"type": "card", "card": card}).id
    return client.v1.charges.create({"amount": amount, "currency": "usd", "source": source}).id


def test_disputes_are_listed_read_and_closed_as_stripe_does(client):
    import stripe

    charged, other = _charge(client, 4000), _charge(client, 900)
    client.v1.refunds.create({"charge": charged, "amount": 1000})
    first = stripe_test_helper(client, "disputes", charge=charged, metadata={"case": "1"})
    time.sleep(1.1)  # a later second, for the `created` filters
    second = stripe_test_helper(
        client, "disputes", charge=other, amount=500, reason="duplicate", inquiry=True
    )
    assert {
        k: first[k] for k in ("object", "charge", "amount", "currency", "status", "reason", "metadata")
    } == {
        "object": "dispute",
        "charge": charged,
        "amount": 3000,  # what is left of the charge after its refund
        "currency": "usd",
        "status": "needs_response",
        "reason": "fraudulent",
        "metadata": {"case": "1"},
    }
    assert first["id"].startswith("dp_") and first["is_charge_refundable"] is False
    assert (second["status"], second["is_charge_refundable"]) == ("warning_needs_response", True)

    page = client.v1.disputes.list({"limit": 1, "created": {"gte": first["created"]}})
    assert (page.object, page.url, page.has_more, [d.id for d in page.data]) == (
        "list",
        "/v1/disputes",
        True,
        [second["id"]],  # newest first
    )
    rest = client.v1.disputes.list(
        {"limit": 1, "starting_after": second["id"], "created": {"gte": first["created"]}}
    )
    assert [d.id for d in rest.data] == [first["id"]]
    assert [d.id for d in client.v1.disputes.list({"created": {"gt": first["created"]}}).data] == [
        second["id"]
    ]
    assert [
        d.id for d in client.v1.disputes.list({"created": {"lt": second["created"]}, "charge": charged}).data
    ] == [first["id"]]

    assert client.v1.disputes.update(first["id"], {"submit": True}).status == "under_review"
    assert client.v1.disputes.close(first["id"]).status == "lost"  # accepted
    assert client.v1.disputes.close(second["id"]).status == "warning_closed"  # an inquiry
    assert client.v1.disputes.retrieve(first["id"]).to_dict()["status"] == "lost"
    with pytest.raises(stripe.InvalidRequestError, match="already lost"):
        client.v1.disputes.close(first["id"])
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.disputes.retrieve("dp_unknown")
    assert unknown.value.http_status == 404


def test_the_test_helpers_refuse_what_a_bank_could_not_do(client):
    import stripe

    charged = _charge(client, 1000)
    for params, error in (
        ({"charge": charged, "amount": 1001}, "amount 1001 outside 1-1000"),
        ({"charge": charged, "reason": "bored"}, "reason 'bored'"),
        ({"charge": "ch_missing"}, "Not Found"),
    ):
        with pytest.raises(stripe.InvalidRequestError, match=error):
            stripe_test_helper(client, "disputes", **params)
    dispute = stripe_test_helper(client, "disputes", charge=charged)
    with pytest.raises(stripe.InvalidRequestError, match="not one of"):  # only an inquiry closes so
        stripe_test_helper(client, f"disputes/{dispute['id']}/settle", outcome="warning_closed")
    assert stripe_test_helper(client, f"disputes/{dispute['id']}/settle", outcome="won")["status"] == "won"


def test_disputes_need_the_secret_key_like_every_localstripe_route(local_stack):
    host = json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"])["host"]
    for path in ("/v1/disputes", "/v1/charges"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(host + path, timeout=10)
        assert refused.value.code == 401
