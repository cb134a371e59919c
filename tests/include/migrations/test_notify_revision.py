"""Revision 0011 (the queued-tasks notification and the pickup columns) on the real PostgreSQL:
one notification per transaction and task type, whatever writes the rows, and a clean undo."""

from __future__ import annotations

import time

import psycopg2
import pytest

from include.execution.task_queue import NOTIFY_CHANNEL
from include.migrations import downgrade, revision_info, upgrade
from tests.pg import notified, query

REVISION = "0011"


def parent() -> str:
    """The revision 0011 follows (another branch may come in between: never written out here)."""
    return revision_info(REVISION).down_revision


class Listener:
    """A session listening on NOTIFY_CHANNEL."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.conn.cursor().execute(f"LISTEN {NOTIFY_CHANNEL}")

    def received(self) -> list[str]:
        return notified(self.conn)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listener(app_dsn):
    upgrade(app_dsn, REVISION)
    listening = Listener(app_dsn)
    yield listening
    listening.close()


def insert(dsn: str, *statements: str) -> None:
    """The statements in ONE transaction, as a writer other than the library would."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def revision_module():
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("revision_0011", revision_info(REVISION).path)
    loaded = module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_the_revision_s_channel_is_the_library_s():
    from include.execution.task_queue import ENQUEUE

    revision = revision_module()
    assert revision.CHANNEL == NOTIFY_CHANNEL
    assert f"pg_notify('{NOTIFY_CHANNEL}'" in revision.UPGRADE
    assert f"pg_notify('{NOTIFY_CHANNEL}'" in ENQUEUE


def test_any_writer_wakes_listeners_once_per_transaction_and_task_type(app_dsn, listener):
    insert(
        app_dsn,
        "INSERT INTO execution_tasks (task_type) VALUES ('idea'), ('idea'), ('implementation')",
        "INSERT INTO execution_tasks (task_type) VALUES ('idea')",
        "INSERT INTO execution_tasks (task_type) SELECT 'self_improvement' FROM generate_series(1, 500)",
    )
    assert sorted(listener.received()) == ["idea", "implementation", "self_improvement"]
    # two transactions: twice
    insert(app_dsn, "INSERT INTO execution_tasks (task_type) VALUES ('idea')")
    insert(app_dsn, "INSERT INTO execution_tasks (task_type) VALUES ('idea')")
    assert listener.received() == ["idea", "idea"]
    # rows that are not queued (history written by hand) announce nothing
    insert(app_dsn, "INSERT INTO execution_tasks (task_type, status) VALUES ('idea', 'succeeded')")
    assert listener.received() == []


def test_a_copy_of_ten_thousand_rows_is_one_notification_per_type(app_dsn, listener):
    import io

    rows = "".join(f"{('idea', 'implementation')[i % 2]}\n" for i in range(10_000))
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.copy_expert("COPY execution_tasks (task_type) FROM STDIN", io.StringIO(rows))
    conn.close()
    assert sorted(listener.received()) == ["idea", "implementation"]


def test_a_rolled_back_insert_announces_nothing(app_dsn, listener):
    conn = psycopg2.connect(app_dsn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO execution_tasks (task_type) VALUES ('idea')")
    conn.rollback()
    conn.close()
    assert listener.received() == []


def test_downgrade_removes_the_trigger_and_columns_and_a_second_upgrade_restores_them(app_dsn):
    def state() -> tuple:
        trigger = query(
            app_dsn,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'execution_tasks_notify_queued'",
        )[0][0]
        columns = query(
            app_dsn,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'task_bottleneck_reports' "
            "AND column_name LIKE 'pickup_%%'",
        )[0][0]
        function = query(app_dsn, "SELECT to_regprocedure('execution_tasks_notify_queued()') IS NOT NULL")[0][
            0
        ]
        return trigger, columns, function

    upgrade(app_dsn, parent())
    assert state() == (0, 0, False)
    upgrade(app_dsn, REVISION)
    assert state() == (1, 2, True)
    downgrade(app_dsn, parent())
    assert state() == (0, 0, False)
    upgrade(app_dsn, REVISION)
    assert state() == (1, 2, True)


def test_the_upgrade_resumes_over_a_run_that_stopped_halfway(app_dsn):
    """Every step is idempotent: run again over its own result (as a resumed run would), it
    converges to one trigger."""
    upgrade(app_dsn, REVISION)
    query(app_dsn, revision_module().UPGRADE)
    assert (
        query(
            app_dsn,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'execution_tasks'::regclass "
            "AND NOT tgisinternal",
        )[0][0]
        == 1
    )


def test_the_trigger_costs_an_insert_little(app_dsn):
    """A statement-level trigger runs once per statement: 20,000 rows in one INSERT take about
    as long with it as without (a row-level trigger would call its function per row)."""

    def insert_seconds() -> float:
        conn = psycopg2.connect(app_dsn)
        conn.autocommit = True
        best = float("inf")
        with conn.cursor() as cur:
            for _ in range(3):
                cur.execute("TRUNCATE execution_tasks")
                started = time.perf_counter()
                cur.execute(
                    "INSERT INTO execution_tasks (task_type) SELECT 'idea' FROM generate_series(1, 20000)"
                )
                best = min(best, time.perf_counter() - started)
        conn.close()
        return best

    upgrade(app_dsn, parent())
    without = insert_seconds()
    upgrade(app_dsn, REVISION)
    with_trigger = insert_seconds()
    assert with_trigger < without * 1.3 + 0.02, (with_trigger, without)
