"""Shared fixtures: the real local servers (started once per session) and fresh app databases."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# An Airflow home of the test session's own, so importing Airflow never touches ~/airflow.
_TEST_HOME = Path(tempfile.mkdtemp(prefix="airflow-test-home-"))
os.environ["AIRFLOW_HOME"] = str(_TEST_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# the seeded demo data is sized for a person to look at; tests need only a little of it
os.environ.setdefault("SEED_SCALE", "0.02")


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The stack's servers (no Airflow): Postgres, Redis, moto, localstripe, the SMTP sink.

    Their connections are exported as AIRFLOW_CONN_* for the whole session, the way the
    running stack and production read them.
    """
    from include.devstack.stack import LocalStack, connections

    stack = LocalStack(tmp_path_factory.mktemp("stack"), with_airflow=False, api_port=0)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    saved = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")}
    for conn_id, conn in connections(stack.ports, stack.secret).items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    yield stack
    for key in [k for k in os.environ if k.startswith("AIRFLOW_CONN_")]:
        del os.environ[key]
    os.environ.update(saved)
    stack.stop()


def _create_database(local_stack, name: str, template: str | None = None) -> None:
    import psycopg2

    admin = psycopg2.connect(local_stack.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER app' + (f' TEMPLATE "{template}"' if template else ""))
    admin.close()


def _drop_database(local_stack, name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(local_stack.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def app_template(local_stack) -> str:
    """A database at the baseline revision, copied by `app_dsn` (faster than migrating each)."""
    from include.migrations import BASELINE_REVISION, upgrade

    _create_database(local_stack, "app_template")
    upgrade(local_stack.app_dsn("app_template"), BASELINE_REVISION)
    return "app_template"


@pytest.fixture(scope="session")
def app_head_template(local_stack) -> str:
    """A database at the newest revision (ai_model present), copied by `app_head_dsn`."""
    from include.migrations import upgrade

    _create_database(local_stack, "app_head_template")
    upgrade(local_stack.app_dsn("app_head_template"), "head")
    return "app_head_template"


@pytest.fixture
def app_dsn(local_stack, app_template) -> str:
    """A fresh, empty app database at the baseline revision, dropped after the test."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    _create_database(local_stack, name, app_template)
    yield local_stack.app_dsn(name)
    _drop_database(local_stack, name)


@pytest.fixture
def app_head_dsn(local_stack, app_head_template) -> str:
    """A fresh, empty app database at the newest revision, dropped after the test."""
    name = f"app_{uuid.uuid4().hex[:12]}"
    _create_database(local_stack, name, app_head_template)
    yield local_stack.app_dsn(name)
    _drop_database(local_stack, name)
