"""How long a redemption takes to change the served offers on the local stack: from the Stripe
charge to the first offer decision drawn from shares that count it.

One local stack with Airflow (scheduler, LocalExecutor; every DAG but offer_feedback paused), the
app database at head, and one segment's offers as a retrain leaves them: BENCH_LATENCY_ARMS
published offers (coupons in localstripe), live bandit arms with the model's prior, a policy.
Each of BENCH_LATENCY_ROUNDS rounds (default 5):

1. a user redeems: a charge with an offer's coupon in localstripe, and the redemption in
   `user_events`, as the product records it;
2. offer_feedback is triggered through the REST API (the on-demand refresh);
3. a decision is asked for every 0.2 s (`include.offers.serving.decide`, what the ops
   dashboard's `/ops/offers/decision/<user>` calls) until one is drawn from a policy whose
   feedback cursor covers the redemption.

Prints `offer_feedback_latency: ratio=X (on demand/hourly)`: the median from the charge to that
decision, over what the hourly schedule alone gives on average (half an hour's wait for the next
run, not waited for here, plus the same measured run time).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_task_batch_overhead import api, log, token_and_dags  # noqa: E402

from tests.offers_fixtures import cursor  # noqa: E402  (one committed transaction)

ROUNDS = int(os.environ.get("BENCH_LATENCY_ROUNDS", "5"))
ARMS = int(os.environ.get("BENCH_LATENCY_ARMS", "3"))
HOURLY_WAIT_SECONDS = 1800.0  # the mean wait for the next run of an hourly schedule


def set_up_offers(dsn: str, segment: str) -> list[tuple[int, str]]:
    """A champion of one segment's ARMS offers, published to localstripe, live arms, a policy."""
    import pandas as pd

    from execplatform.hooks.stripe_hook import StripeHook
    from include.offers import jobs

    hook = StripeHook()
    with cursor(dsn) as cur:
        cur.execute(
            "INSERT INTO model_versions (model_name, version, status) VALUES ('offer_redemption',"
            " (SELECT coalesce(max(version), 0) + 1 FROM model_versions), 'champion') RETURNING id"
        )
        version = cur.fetchone()[0]
        offers = []
        for pct in range(10, 10 + 5 * ARMS, 5):
            code = f"GEN_{segment}_PRO_MONTHLY_{pct}_{uuid.uuid4().hex[:4]}".upper()
            cur.execute(
                "INSERT INTO offers (code, product, discount_pct, segment, status)"
                " VALUES (%s, 'pro_monthly', %s, %s, 'active') RETURNING id",
                (code, pct, segment),
            )
            offer_id = cur.fetchone()[0]
            coupon = jobs.coupon_id(version, segment, code)
            hook.ensure("coupons", coupon, {"percent_off": pct, "duration": "once"})
            cur.execute(
                "INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id,"
                " stripe_coupon_id, published_at) VALUES (%s, %s, %s, %s, %s, now())",
                (version, segment, offer_id, f"prod_{coupon}", coupon),
            )
            offers.append((offer_id, coupon))
        arms = pd.DataFrame({"segment": segment, "offer_id": [o for o, _ in offers], "rate": 0.1})
        jobs.reset_arms(cur, version, arms)
    return offers


def one_round(stack, dsn: str, user_id: int, offer: tuple[int, str]) -> tuple[float, float]:
    """(charge to the first decision that reflects it, the offer_feedback run's own time), seconds."""
    from execplatform.hooks.stripe_hook import StripeHook
    from include.offers import serving

    client = StripeHook().get_conn()
    offer_id, coupon = offer
    token, dags = token_and_dags(stack)
    start = time.perf_counter()
    method = client.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    client.v1.charges.create(
        {
            "amount": 1600,
            "currency": "usd",
            "source": method.id,
            "metadata": {"user_id": str(user_id), "coupon": coupon},
        }
    )
    with cursor(dsn) as cur:
        cur.execute(
            "INSERT INTO user_events (user_id, offer_id, event_type, channel, amount_cents, occurred_at)"
            " VALUES (%s, %s, 'redemption', 'web', 1600, now()) RETURNING id",
            (user_id, offer_id),
        )
        event_id = cur.fetchone()[0]
    body = {"logical_date": None, "conf": {}, "dag_run_id": f"latency_{uuid.uuid4().hex[:8]}"}
    run = api(f"{dags}/offer_feedback/dagRuns", token, body)
    while True:
        with cursor(dsn) as cur:
            [decision] = serving.decide(cur, [user_id])
            cur.execute(
                "SELECT feedback_cursor FROM offer_policy_versions WHERE id = %s", (decision.policy_version,)
            )
            covered = cur.fetchone()[0] >= event_id
        if covered:
            latency = time.perf_counter() - start
            break
        if time.perf_counter() - start > 600:
            raise TimeoutError(f"no decision reflected redemption {event_id} within 600 s")
        time.sleep(0.2)
    details = api(f"{dags}/offer_feedback/dagRuns/{run['dag_run_id']}", token)
    while details.get("end_date") is None:
        time.sleep(0.5)
        details = api(f"{dags}/offer_feedback/dagRuns/{run['dag_run_id']}", token)
    from datetime import datetime

    def seconds(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    return latency, seconds(details["end_date"]) - seconds(details["start_date"])


def main() -> None:
    from devstack.stack import LocalStack, connections
    from include.migrations import upgrade

    os.environ["SEED_SCALE"] = "0.001"
    # the Stripe client logs every request at info on stdout, where the result line goes
    logging.getLogger("stripe").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench_feedback_") as tmp:
        stack = LocalStack(Path(tmp) / "stack", with_airflow=True, api_port=0)
        try:
            t = time.perf_counter()
            stack.start()
            log(f"stack up in {time.perf_counter() - t:.0f}s")
            for conn_id, conn in connections(stack.ports, stack.secret).items():
                os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
            dsn = stack.app_dsn()
            upgrade(dsn, "head")
            token, dags = token_and_dags(stack)
            for dag in api(f"{dags}?limit=100", token)["dags"]:
                paused = dag["dag_id"] != "offer_feedback"
                api(f"{dags}/{dag['dag_id']}", token, {"is_paused": paused}, method="PATCH")
            with cursor(dsn) as cur:  # the segment with the most users of the (small) seed
                cur.execute(
                    "SELECT segment, array_agg(id ORDER BY id) FROM users GROUP BY 1 ORDER BY count(*) DESC"
                )
                segment, users = cur.fetchone()
            offers = set_up_offers(dsn, segment)
            latencies, runs = [], []
            for i in range(ROUNDS):
                latency, run = one_round(stack, dsn, users[i % len(users)], offers[i % len(offers)])
                log(f"round {i + 1}: redemption to decision {latency:.1f}s (offer_feedback run {run:.1f}s)")
                latencies.append(latency)
                runs.append(run)
            ours, run = statistics.median(latencies), statistics.median(runs)
            hourly = HOURLY_WAIT_SECONDS + run
            print(
                f"offer_feedback_latency: ratio={ours / hourly:.4f} (on demand/hourly) on_demand={ours:.1f}s "
                f"(median of {len(latencies)}, max {max(latencies):.1f}s; the offer_feedback run itself "
                f"{run:.1f}s) hourly={hourly:.0f}s (its mean wait {HOURLY_WAIT_SECONDS:.0f}s, computed, "
                "plus the run)"
            )
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
