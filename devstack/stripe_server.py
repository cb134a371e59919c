"""localstripe bound to loopback, its state kept in memory rather than in a shared /tmp pickle, with
a Disputes resource, which localstripe lacks.

Disputes behave as Stripe's API does, behind localstripe's own authentication (a secret key):

- `GET /v1/disputes`: newest first, in Stripe's list envelope; `limit`, `starting_after`,
  `charge` and `created` (a unix time, or `gt`/`gte`/`lt`/`lte`, any of them together);
- `GET /v1/disputes/{id}`;
- `POST /v1/disputes/{id}`: `metadata`, and `submit=true` (evidence submitted: `needs_response`
  becomes `under_review`, `warning_needs_response` becomes `warning_under_review`);
- `POST /v1/disputes/{id}/close`: the dispute accepted, so `lost` (an inquiry: `warning_closed`).

Not part of Stripe's API (in Stripe the cardholder's bank opens a dispute, e.g. for the test
card 4000000000000259, and the network decides it), two test helpers stand in for them:

- `POST /v1/test_helpers/disputes` with `charge`, optional `amount` (default: what is left of the
  charge after its refunds; at most the charge's amount), `reason` (default `fraudulent`),
  `inquiry=true` (an inquiry, `warning_needs_response`, which withholds no money) and `metadata`:
  opens a dispute on a succeeded charge;
- `POST /v1/test_helpers/disputes/{id}/settle` with `outcome`: `won` or `lost` for a dispute,
  `warning_closed` for an inquiry.
"""

from __future__ import annotations

import argparse

from aiohttp import web
from localstripe import resources
from localstripe.errors import UserError
from localstripe.server import api_extra, api_list_all, api_retrieve, api_update, app

OPEN = ("warning_needs_response", "warning_under_review", "needs_response", "under_review")
SETTLED = {False: ("won", "lost"), True: ("warning_closed",)}  # by whether it is an inquiry
REASONS = (
    "bank_cannot_process",
    "check_returned",
    "credit_not_processed",
    "customer_initiated",
    "debit_not_authorized",
    "duplicate",
    "fraudulent",
    "general",
    "incorrect_account_details",
    "insufficient_funds",
    "product_not_received",
    "product_unacceptable",
    "subscription_canceled",
    "unrecognized",
)


def _bad(message: str) -> UserError:
    return UserError(400, message)


class Dispute(resources.StripeObject):
    """A Stripe dispute (object `dispute`, id `dp_...`), kept in localstripe's store."""

    object = "dispute"
    _id_prefix = "dp_"

    def __init__(self, charge=None, amount=None, reason="fraudulent", inquiry=False, metadata=None, **kwargs):
        if kwargs:
            raise _bad("Unexpected " + ", ".join(kwargs))
        if not isinstance(charge, str) or not charge.startswith("ch_"):
            raise _bad(f"charge {charge!r} is not a charge id")
        charge_obj = resources.Charge._api_retrieve(charge)  # 404 when unknown
        if charge_obj.status != "succeeded":
            raise _bad(f"charge {charge} is {charge_obj.status}: only a succeeded charge is disputed")
        amount = resources.try_convert_to_int(
            charge_obj.amount - charge_obj.amount_refunded if amount is None else amount
        )
        if not isinstance(amount, int) or not 0 < amount <= charge_obj.amount:
            raise _bad(f"amount {amount!r} outside 1-{charge_obj.amount}")
        if reason not in REASONS:
            raise _bad(f"reason {reason!r} is not one of Stripe's")
        inquiry = resources.try_convert_to_bool(inquiry)
        if not isinstance(inquiry, bool) or not (metadata is None or isinstance(metadata, dict)):
            raise _bad("inquiry must be a boolean and metadata an object")
        super().__init__()  # no exception after this point: the object is in the store
        self.charge = charge
        self.payment_intent = None
        self.amount = amount
        self.currency = charge_obj.currency
        self.reason = reason
        self.status = OPEN[0] if inquiry else OPEN[2]
        self.is_charge_refundable = inquiry  # an inquiry withdraws nothing yet
        self.metadata = metadata or {}

    @property
    def _inquiry(self) -> bool:
        return self.status.startswith("warning_")

    def _settle(self, outcome: str) -> Dispute:
        if self.status not in OPEN:
            raise _bad(f"dispute {self.id} is already {self.status}")
        if outcome not in SETTLED[self._inquiry]:
            raise _bad(f"outcome {outcome!r} is not one of {SETTLED[self._inquiry]}")
        self.status = outcome
        return self

    def _update(self, submit=None, metadata=None, **data):
        if data:
            raise _bad("Unexpected " + ", ".join(data))
        if metadata is not None:
            super()._update(metadata=metadata)
        if resources.try_convert_to_bool(submit) is True:
            if self.status not in ("needs_response", "warning_needs_response"):
                raise _bad(f"dispute {self.id} is {self.status}: no evidence is due")
            self.status = self.status.replace("needs_response", "under_review")

    @classmethod
    def _api_close(cls, id, **data):
        if data:
            raise _bad("Unexpected " + ", ".join(data))
        dispute = cls._api_retrieve(id)
        return dispute._settle("warning_closed" if dispute._inquiry else "lost")

    @classmethod
    def _api_settle(cls, id, outcome=None, **data):
        if data:
            raise _bad("Unexpected " + ", ".join(data))
        return cls._api_retrieve(id)._settle(outcome)

    @classmethod
    def _api_list_all(cls, url, charge=None, created=None, limit=None, starting_after=None):
        bounds = created if isinstance(created, dict) else {} if created is None else {"eq": created}
        tests = {
            "eq": int.__eq__,
            "gt": int.__gt__,
            "gte": int.__ge__,
            "lt": int.__lt__,
            "lte": int.__le__,
        }
        if set(bounds) - set(tests):
            raise _bad("created takes gt, gte, lt, lte or a unix time")
        limits = {}
        for op, value in bounds.items():
            limits[op] = resources.try_convert_to_int(value)
            if not isinstance(limits[op], int):
                raise _bad(f"created[{op}] {value!r} is not a unix time")
        listing = resources.List(url, limit=limit, starting_after=starting_after)
        items = [d for key, d in resources.store.items() if key.startswith("dispute:")]
        listing._list = [
            d
            for d in reversed(items)  # newest first, as Stripe lists
            if (charge is None or d.charge == charge)
            and all(tests[op](d.created, value) for op, value in limits.items())
        ]
        listing._list.sort(key=lambda d: d.created, reverse=True)  # stable: same second stays newest first
        return listing


def add_dispute_routes(application: web.Application) -> None:
    """The routes of the module docstring, on localstripe's app (before it starts)."""
    url = "/v1/disputes"
    for method, path, handler in (
        ("POST", "/v1/test_helpers/disputes", api_extra(Dispute._api_create, url)),
        ("POST", "/v1/test_helpers/disputes/{id}/settle", api_extra(Dispute._api_settle, url)),
        ("POST", url + "/{id}/close", api_extra(Dispute._api_close, url)),
        ("GET", url + "/{id}", api_retrieve(Dispute, url)),
        ("POST", url + "/{id}", api_update(Dispute, url)),
        ("GET", url, api_list_all(Dispute, url)),
    ):
        application.router.add_route(method, path, handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # localstripe pickles every write to /tmp/localstripe.pickle, shared by every instance on the
    # machine; a test stack must not see another stack's coupons, so state stays in this process.
    resources.Store.dump_to_disk = lambda self: None
    add_dispute_routes(app)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
