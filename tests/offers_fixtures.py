"""Fixtures shared by the offer tests: a seeded app database, an S3 client on moto, a cursor."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import psycopg2
import pytest

from devstack.stack import MODEL_BUCKET, aws_client
from tests.airflow_api import postgres_connection

SEED_SCALE = 0.05  # ~5k impressions: enough for a model that beats chance by a clear margin


@pytest.fixture
def offers_dsn(app_head_dsn, monkeypatch):
    """A seeded app database at head, also reachable as connection `app_db`."""
    from devstack.demo_data import seed

    seed(app_head_dsn, scale=SEED_SCALE)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    return app_head_dsn


@pytest.fixture
def s3(local_stack):
    return aws_client("s3", json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"]))


@contextmanager
def cursor(dsn: str):
    """One committed transaction."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def snapshot_uri(name: str) -> str:
    return f"s3://{MODEL_BUCKET}/tests/{name}/training.csv.gz"


def synthetic_arms(dsn: str, codes: list[str], *, users: int, segment: str = "vip") -> dict[str, int]:
    """A population of `users` users of one segment and one published offer per code (each
    pro_monthly at 20%, so arms differ only in how often they are redeemed), made the live
    arms of a model version with a neutral prior; returns {code: offer id}."""
    import pandas as pd

    from include.offers import jobs

    with cursor(dsn) as cur:
        cur.execute(
            "INSERT INTO users (email, segment, signup_channel, country)"
            " SELECT 'u' || g || '@synthetic.invalid', %s, 'web', 'US' FROM generate_series(1, %s) g",
            (segment, users),
        )
        cur.execute(
            "INSERT INTO model_versions (model_name, version, status)"
            " VALUES ('offer_redemption', 1, 'champion') RETURNING id"
        )
        version = cur.fetchone()[0]
        ids = {}
        for code in codes:
            cur.execute(
                "INSERT INTO offers (code, product, discount_pct, segment, status)"
                " VALUES (%s, 'pro_monthly', 20, %s, 'active') RETURNING id",
                (code, segment),
            )
            ids[code] = cur.fetchone()[0]
            coupon = jobs.coupon_id(version, segment, code)
            cur.execute(
                "INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id,"
                " stripe_coupon_id, published_at) VALUES (%s, %s, %s, %s, %s, now())",
                (version, segment, ids[code], f"prod_{coupon}", coupon),
            )
        arms = pd.DataFrame({"segment": segment, "offer_id": list(ids.values()), "rate": 0.1})
        jobs.reset_arms(cur, version, arms)
    return ids


def stripe_test_helper(client, path: str, **params) -> dict:
    """POST to one of devstack/stripe_server.py's test helpers (not Stripe's API: there a bank
    opens a dispute) through the Stripe client: the object it answers (an error raises as the
    client's other calls do)."""
    return json.loads(client.raw_request("post", f"/v1/test_helpers/{path}", **params).body)
