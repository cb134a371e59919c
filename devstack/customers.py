"""The local stack's demo customers: pay for published offers in localstripe (see
devstack/customer_simulator.py).

Polls the app database; once the live assignment's offers are all in Stripe, plays its
customers once. Reads the `app_db` and `stripe_default` connections from AIRFLOW_CONN_* as
every process of the stack does. Errors are logged and retried at the next poll, so a bad
moment never stops the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def stripe_client(conn: dict):
    import stripe

    return stripe.StripeClient(
        api_key=conn["password"], base_addresses={"api": conn["host"]}, max_network_retries=3
    )


def app_dsn(conn: dict) -> str:
    from psycopg2.extensions import make_dsn

    return make_dsn(
        host=conn["host"],
        port=conn["port"],
        dbname=conn["schema"],
        user=conn["login"],
        password=conn["password"],
    )


def play_once(seed: int) -> dict:
    import psycopg2
    import psycopg2.errors

    from devstack.customer_simulator import simulate

    client = stripe_client(json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"]))
    conn = psycopg2.connect(app_dsn(json.loads(os.environ["AIRFLOW_CONN_APP_DB"])))
    try:
        with conn, conn.cursor() as cur:
            return simulate(cur, client, seed=seed)
    except psycopg2.errors.UndefinedTable:
        return {
            "status": "waiting",
            "reason": "no offer tables yet: run db_migrate (revision 0004)",
        }
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between polls")
    parser.add_argument("--once", action="store_true", help="one poll, then exit")
    args = parser.parse_args()
    last = None
    while True:
        try:
            result = play_once(args.seed)
        except Exception as error:  # noqa: BLE001 (a demo service: report and poll again)
            result = {"status": "error", "error": f"{type(error).__name__}: {error}"}
        if result != last:  # one line per change, not one per poll
            print(json.dumps(result, default=str), flush=True)
            last = result
        if args.once:
            return 0 if result["status"] != "error" else 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
