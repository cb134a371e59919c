"""One writer of the schema at a time: the advisory lock restores, migrations, backups and drains
take on the server's maintenance database (the real PostgreSQL)."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture
def maintenance_dsn(pg_server, app_dsn) -> str:
    """The app role's DSN to the server's `postgres` database, where the lock lives."""
    from psycopg2.extensions import make_dsn, parse_dsn

    return make_dsn(**{**parse_dsn(app_dsn), "dbname": "postgres"})


def test_an_exclusive_holder_makes_the_next_wait_and_fail_naming_it(maintenance_dsn):
    from include.migrations.schema_lock import SchemaLocked, schema_lock

    heard = []
    with schema_lock(maintenance_dsn, "db_restore/manual__1/swap", exclusive=True, wait_seconds=5):
        with pytest.raises(SchemaLocked, match=r"db_restore/manual__1/swap \(pid \d+\) holds it exclusive"):
            with schema_lock(
                maintenance_dsn,
                "db_migrate/manual__2/apply",
                exclusive=True,
                wait_seconds=0.5,
                on_wait=heard.extend,
            ):
                pytest.fail("two exclusive holders at once")
    assert [h.name for h in heard] == ["db_restore/manual__1/swap"]


def test_a_waiter_gets_the_lock_once_the_holder_lets_go_and_they_never_overlap(maintenance_dsn):
    """A restore and a migration triggered together: one waits, naming the other; no interleaving."""
    from include.migrations.schema_lock import schema_lock

    spans: dict[str, tuple[float, float]] = {}
    holding = threading.Event()

    def restore() -> None:
        with schema_lock(maintenance_dsn, "db_restore/r/swap", exclusive=True, wait_seconds=5):
            holding.set()
            start = time.monotonic()
            time.sleep(1.5)
            spans["restore"] = (start, time.monotonic())

    thread = threading.Thread(target=restore)
    thread.start()
    holding.wait(10)
    heard = []
    with schema_lock(
        maintenance_dsn, "db_migrate/m/apply", exclusive=True, wait_seconds=30, on_wait=heard.extend
    ):
        spans["migration"] = (time.monotonic(), time.monotonic())
    thread.join()
    assert [h.name for h in heard] == ["db_restore/r/swap"]
    assert spans["migration"][0] >= spans["restore"][1], "the migration started only after the restore ended"


def test_drains_run_beside_each_other_and_step_aside_for_a_writer(maintenance_dsn):
    from include.migrations.schema_lock import schema_lock, shared_schema_lock_if_free

    with shared_schema_lock_if_free(maintenance_dsn, "task_batch/a/drain") as first:
        with shared_schema_lock_if_free(maintenance_dsn, "task_batch/a/drain") as second:
            assert first == [] and second == [], "drains share the lock"
    with schema_lock(maintenance_dsn, "db_migrate/m/apply", exclusive=True, wait_seconds=5):
        with shared_schema_lock_if_free(maintenance_dsn, "task_batch/b/drain") as in_the_way:
            assert [h.name for h in in_the_way] == ["db_migrate/m/apply"]


def test_a_writer_waiting_behind_drains_is_not_starved_by_new_ones(maintenance_dsn):
    """While a migration waits for running drains to end, new drains step aside instead of
    joining in front of it."""
    from include.migrations.schema_lock import schema_lock, shared_schema_lock_if_free

    waiting = threading.Event()
    with shared_schema_lock_if_free(maintenance_dsn, "task_batch/a/drain") as running:
        assert running == []

        def migrate() -> None:
            with schema_lock(
                maintenance_dsn,
                "db_migrate/m/apply",
                exclusive=True,
                wait_seconds=30,
                on_wait=lambda _: waiting.set(),
            ):
                pass

        thread = threading.Thread(target=migrate)
        thread.start()
        assert waiting.wait(10)
        time.sleep(0.3)  # the migration's request is queued
        with shared_schema_lock_if_free(maintenance_dsn, "task_batch/b/drain") as in_the_way:
            assert [h.name for h in in_the_way] == ["db_migrate/m/apply"]
            assert in_the_way[0].waiting
    thread.join(30)
    assert not thread.is_alive()


def test_the_lock_ends_with_the_session_that_held_it(maintenance_dsn):
    """A killed worker cannot leave it behind: closing (or losing) the connection releases it."""
    import psycopg2

    from include.migrations.schema_lock import LOCK_KEY, schema_lock

    orphan = psycopg2.connect(maintenance_dsn)
    orphan.autocommit = True
    with orphan.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    orphan.close()
    with schema_lock(maintenance_dsn, "db_backup/b/dump", exclusive=False, wait_seconds=1):
        pass
