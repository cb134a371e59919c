"""Fixtures shared by the offer tests: a seeded app database, an S3 client on moto, a cursor."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import psycopg2
import pytest

from devstack.stack import MODEL_BUCKET
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
    import boto3

    aws = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    return boto3.client(
        "s3",
        endpoint_url=aws["extra"]["endpoint_url"],
        region_name=aws["extra"]["region_name"],
        aws_access_key_id=aws["login"],
        aws_secret_access_key=aws["password"],
    )


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
