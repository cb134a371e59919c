"""Shared fixtures: the real local servers (started once per session) and fresh app databases,
and the test tiers: what needs a server is marked here, from the fixtures each test uses."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]

# An Airflow home of the test session's own, so importing Airflow never touches ~/airflow.
_TEST_HOME = Path(tempfile.mkdtemp(prefix="airflow-test-home-"))
os.environ["AIRFLOW_HOME"] = str(_TEST_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# the seeded demo data is sized for a person to look at; tests need only a little of it
os.environ.setdefault("SEED_SCALE", "0.02")

# The fixtures that start a server or reach the local stack's services. A test that uses one,
# directly or through other fixtures, is marked `stack`; every test under tests/e2e is marked
# `airflow_stack` (each suite there starts a whole stack with Airflow). `-m "not stack and not
# airflow_stack"` is then the fast tier (`make test-fast`), without a list of files to keep.
SERVER_FIXTURES = frozenset(
    {
        "local_stack",  # starts the stack's servers
        "pg_server",  # the stack's PostgreSQL (asked for by name at run time) or TEST_PG_SERVER's
        "executor",  # the stack's task executor (test_task_batch_dag.py's own reads the stack's env)
        "own_stripe",  # starts a localstripe of one test's own (test_offer_dags.py)
    }
)
E2E = ROOT / "tests" / "e2e"
COMPOSE_SUITE = ROOT / "tests" / "compose"  # runs against `docker-compose up` (make test-compose)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.airflow_stack)
        elif COMPOSE_SUITE in item.path.parents:
            item.add_marker(pytest.mark.compose_stack)
        elif SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


_setting_up: list[pytest.Item] = []  # the test whose fixtures are being set up


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _setting_up[:] = [item]


def refuse_outside_the_server_tiers(fixture: str) -> None:
    """Fail the test that sets up `fixture` (which starts servers) without being marked: it
    reached the fixture in a way the marking above cannot see, so the fast tier would start it."""
    item = _setting_up[0] if _setting_up else None
    if item is not None and not any(item.get_closest_marker(m) for m in ("stack", "airflow_stack")):
        pytest.fail(
            f"{item.nodeid} sets up {fixture} but is not marked stack: add the fixture through which "
            "it does to SERVER_FIXTURES in tests/conftest.py",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """The stack's servers (no Airflow): Postgres, Redis, moto, localstripe, the SMTP sink.

    Their connections are exported as AIRFLOW_CONN_* for the whole session, the way the
    running stack and production read them.
    """
    from devstack.stack import LocalStack, connections
    from include.backup.disk_space import DISK_FREE_PATH

    refuse_outside_the_server_tiers("local_stack")
    stack = LocalStack(tmp_path_factory.mktemp("stack"), with_airflow=False, api_port=0)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    ours = ("AIRFLOW_CONN_", DISK_FREE_PATH)
    saved = {k: v for k, v in os.environ.items() if k.startswith(ours)}
    for conn_id, conn in connections(stack.ports, stack.secret).items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    os.environ[DISK_FREE_PATH] = str(stack.folder)  # as the stack tells Airflow: its server is here
    yield stack
    for key in [k for k in os.environ if k.startswith(ours)]:
        del os.environ[key]
    os.environ.update(saved)
    stack.stop()


@pytest.fixture
def executor(local_stack):
    """(url, admin client) of the stack's task executor, answering at once and without faults;
    reset afterwards (faults, counts, and its model catalog)."""
    import httpx

    url = json.loads(os.environ["AIRFLOW_CONN_TASK_EXECUTOR"])["host"]
    admin = httpx.Client(base_url=url)
    admin.post("/admin/reset")
    admin.post("/admin/faults", json={"latency_ms": 0, "slow_ms": 1000})
    yield url, admin
    admin.post("/admin/reset")
    admin.post("/admin/faults", json={"latency_ms": 50})
    admin.close()


class ExternalServer:
    """A PostgreSQL server given by TEST_PG_SERVER (host:port, trust auth for `postgres`), for
    running the migration tests against a second major version (`make test-pg15`)."""

    def __init__(self, address: str) -> None:
        import psycopg2

        self.host, _, port = address.partition(":")
        self.port = int(port or 5432)
        admin = psycopg2.connect(self.superuser_dsn())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app'")
            if cur.fetchone() is None:
                cur.execute("CREATE ROLE app LOGIN CREATEDB")
        admin.close()

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user=postgres"

    def app_dsn(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} dbname={dbname} user=app"


@pytest.fixture(scope="session")
def pg_server(request):
    """Where app databases are made: the local stack's PostgreSQL, or TEST_PG_SERVER's."""
    address = os.environ.get("TEST_PG_SERVER")
    return ExternalServer(address) if address else request.getfixturevalue("local_stack")


def _template(server, revision: str) -> Iterator[str]:
    from include.migrations import upgrade

    # unique: a shared server may keep old ones
    name = f"app_template_{revision}_{uuid.uuid4().hex[:8]}"
    create_database(server, name)
    upgrade(server.app_dsn(name), revision)
    yield name
    drop_database(server, name)


@pytest.fixture(scope="session")
def app_template(pg_server) -> Iterator[str]:
    """A database at the baseline revision, copied by `app_dsn` (faster than migrating each)."""
    from include.migrations import BASELINE_REVISION

    yield from _template(pg_server, BASELINE_REVISION)


@pytest.fixture(scope="session")
def app_head_template(pg_server) -> Iterator[str]:
    """A database at the newest revision (ai_model present), copied by `app_head_dsn`."""
    yield from _template(pg_server, "head")


def _fresh(server, template: str) -> Iterator[str]:
    name = f"app_{uuid.uuid4().hex[:12]}"
    create_database(server, name, template)
    yield server.app_dsn(name)
    drop_database(server, name)


@pytest.fixture
def app_dsn(pg_server, app_template) -> Iterator[str]:
    """A fresh app database at the baseline revision (demo tables, no rows), dropped after."""
    yield from _fresh(pg_server, app_template)


@pytest.fixture
def app_head_dsn(pg_server, app_head_template) -> Iterator[str]:
    """A fresh app database at the newest revision, dropped after the test."""
    yield from _fresh(pg_server, app_head_template)
