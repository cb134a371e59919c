"""db_restore's steps on the real PostgreSQL and moto S3: restores that work with the database gone,
restores over live data by swap, and a live database that is whole at every moment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import psutil
import pytest
from psycopg2.extensions import parse_dsn

from devstack.stack import BACKUP_BUCKET
from tests.airflow_api import postgres_connection
from tests.pg import as_superuser, drop_database, query
from tests.project import ROOT

NEW_USER = "INSERT INTO users (email, segment, signup_channel, country) VALUES (%s, 'new', 'web', 'US')"


@pytest.fixture
def live(app_head_dsn, pg_server, monkeypatch, tmp_path):
    """A live app database at head with rows in it, as the `app_db` connection, with a backup
    catalog of its own in S3; the databases a test leaves beside it are dropped afterwards."""
    query(
        app_head_dsn,
        """
        INSERT INTO users (email, segment, signup_channel, country)
            SELECT 'u' || g || '@example.com', 'new', 'web', 'US' FROM generate_series(1, 50) g;
        INSERT INTO execution_tasks (task_type, payload, ai_model)
            SELECT 'idea', jsonb_build_object('n', g), 'gpt-4.1' FROM generate_series(1, 200) g;
    """,
    )
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    monkeypatch.setenv("BACKUP_PREFIX", f"test-restore/{uuid.uuid4().hex}")
    name = parse_dsn(app_head_dsn)["dbname"]
    yield {"dsn": app_head_dsn, "name": name, "work_dir": str(tmp_path)}
    leftovers = "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s"
    for (leftover,) in query(pg_server.superuser_dsn(), leftovers, (f"{name}_%", name)):
        drop_database(pg_server, leftover)


def backup(live) -> int:
    from execplatform.operators.backup_operators import PostgresBackupOperator, VerifyBackupOperator

    done = PostgresBackupOperator(task_id="b", bucket=BACKUP_BUCKET, work_dir=live["work_dir"]).execute({})
    VerifyBackupOperator(task_id="v", backup_id=done["backup_id"]).execute({})
    return done["backup_id"]


def dsn_of(live, dbname: str) -> str:
    return live["dsn"].replace(f"dbname={live['name']}", f"dbname={dbname}")


def counts(dsn: str) -> tuple[int, int]:
    return query(dsn, "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM execution_tasks)")[0]


def test_with_the_app_database_dropped_latest_brings_it_back_from_s3_alone(live, pg_server):
    from execplatform.steps.restore_steps import finish_restore, plan_restore, restore_and_compare

    backup_id = backup(live)
    before = counts(live["dsn"])
    drop_database(pg_server, live["name"])

    plan = plan_restore("latest", None, None, "manual__gone")
    assert (plan["backup_id"], plan["target"], plan["over_live"]) == (backup_id, live["name"], False)
    restored = restore_and_compare(plan, "manual__gone")
    assert restored["database"] == live["name"]
    assert finish_restore(plan, swapped=False) == {"inserted": 0, "updated": 1, "unchanged": 0}
    assert counts(live["dsn"]) == before
    # the catalog, rebuilt from the bucket, knows the backup as verified; the next id is past it
    assert query(live["dsn"], "SELECT id, status FROM backups") == [(backup_id, "verified")]
    assert backup(live) == backup_id + 1


def test_over_live_after_tables_that_reference_restored_ones_the_swap_keeps_both_whole(live, pg_server):
    """The case that broke `pg_restore --clean` over live: a later revision added a table with a
    foreign key into a restored table. Backup N, then that table, then a newer backup N+1."""
    from execplatform.steps.backup_steps import backup_catalog
    from execplatform.steps.restore_steps import (
        finish_restore,
        plan_restore,
        restore_and_compare,
        swap_into_place,
    )

    first = backup(live)
    query(
        live["dsn"],
        """
        CREATE TABLE user_notes (id serial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id),
                                 note text);
        INSERT INTO user_notes (user_id, note) SELECT id, 'later' FROM users;
        INSERT INTO execution_tasks (task_type, payload, ai_model) VALUES ('idea', '{}', 'gpt-4.1');
    """,
    )
    newer = backup(live)
    catalog = backup_catalog()
    newer_objects = {o["Key"]: o["ETag"] for o in _objects(catalog, catalog.get(newer).location)}

    with pytest.raises(Exception, match=f"needs confirm='{live['name']}'.*nothing was touched"):
        plan_restore(str(first), live["name"], None, "manual__over")
    plan = plan_restore(str(first), live["name"], live["name"], "manual__over")
    assert plan["over_live"] and plan["restore_into"] != live["name"]
    restore_and_compare(plan, "manual__over")
    assert query(live["dsn"], "SELECT count(*) FROM user_notes") == [(50,)], "live untouched before the swap"
    swap_into_place(plan, "manual__over", "db_restore/manual__over/swap", lock_wait_seconds=10)
    assert finish_restore(plan, swapped=True)["inserted"] == 1  # the newer backup, known again

    assert counts(live["dsn"]) == (50, 200), "the live name is the restored database, complete"
    assert query(live["dsn"], "SELECT to_regclass('user_notes')") == [(None,)]
    kept = dsn_of(live, plan["keep_as"])
    assert query(kept, "SELECT count(*) FROM user_notes") == [(50,)], "the old database is kept whole"
    assert counts(kept) == (50, 201)
    assert backup(live) == newer + 1, "a fresh id, so a fresh folder"
    assert {o["Key"]: o["ETag"] for o in _objects(catalog, catalog.get(newer).location)} == newer_objects


def _objects(catalog, location: str) -> list[dict]:
    bucket, prefix = location.removeprefix("s3://").split("/", 1)
    return [o for o in catalog.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]


def test_a_restore_killed_during_pg_restore_leaves_live_whole_and_a_retry_finishes(
    live, pg_server, tmp_path, monkeypatch
):
    from execplatform.steps.restore_steps import plan_restore, restore_and_compare, swap_into_place
    from include.backup.pg_programs import pg_bin

    backup(live)
    query(live["dsn"], "DELETE FROM execution_tasks WHERE id % 2 = 0")
    before = counts(live["dsn"])
    plan = plan_restore("latest", live["name"], live["name"], "manual__killed")
    slow_bin = tmp_path / "bin"  # a pg_restore that waits before restoring, to be killed there
    slow_bin.mkdir()
    (slow_bin / "pg_restore").write_text(f'#!/bin/sh\nsleep 60\nexec {pg_bin("pg_restore")} "$@"\n')
    (slow_bin / "pg_restore").chmod(0o755)
    (slow_bin / "pg_dump").symlink_to(pg_bin("pg_dump"))
    env = {**os.environ, "PG_BIN": str(slow_bin), "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}"}
    code = (
        "import json, sys\nfrom execplatform.steps.restore_steps import restore_and_compare\n"
        "restore_and_compare(json.loads(sys.argv[1]), 'manual__killed')"
    )
    import json

    worker = subprocess.Popen([sys.executable, "-c", code, json.dumps(plan)], env=env)
    deadline = time.monotonic() + 120
    while not [c for c in psutil.Process(worker.pid).children(recursive=True) if "sleep" in c.name()]:
        assert worker.poll() is None, "the restore ended before pg_restore started"
        assert time.monotonic() < deadline, "pg_restore never started"
        time.sleep(0.2)
    for child in psutil.Process(worker.pid).children(recursive=True):
        child.kill()
    worker.kill()
    worker.wait()

    assert counts(live["dsn"]) == before, "the live database is untouched by a killed restore"
    query(live["dsn"], NEW_USER, ("x@example.com",))  # and usable
    assert query(live["dsn"], "SELECT 1 FROM pg_database WHERE datname = %s", (plan["restore_into"],))
    restore_and_compare(plan, "manual__killed")  # the retry drops the half restore, starts again
    # killed between the comparison and the swap: still the old database, whole and usable
    assert counts(live["dsn"]) == (before[0] + 1, before[1])
    swap_into_place(plan, "manual__killed", "db_restore/manual__killed/swap", lock_wait_seconds=10)
    assert counts(live["dsn"]) == (50, 200)
    # a retried swap after a swap only finishes up
    swap_into_place(plan, "manual__killed", "db_restore/manual__killed/swap", lock_wait_seconds=10)
    assert counts(live["dsn"]) == (50, 200)


def test_a_swap_that_cannot_rename_leaves_live_as_it_was(live, pg_server):
    from execplatform.steps.restore_steps import plan_restore, restore_and_compare, swap_into_place

    backup(live)
    plan = plan_restore("latest", live["name"], live["name"], "manual__blocked")
    restore_and_compare(plan, "manual__blocked")
    as_superuser(pg_server, f'CREATE DATABASE "{plan["keep_as"]}"')  # the name the old database would take
    with pytest.raises(Exception, match="already exists"):
        swap_into_place(plan, "manual__blocked", "db_restore/manual__blocked/swap", lock_wait_seconds=10)
    assert counts(live["dsn"]) == (50, 200)
    # connections are allowed again
    query(live["dsn"], NEW_USER, ("y@example.com",))


def test_a_plan_without_a_target_or_logical_date_restores_into_a_new_named_database(live):
    from execplatform.steps.restore_steps import plan_restore, restore_and_compare

    backup_id = backup(live)
    plan = plan_restore(str(backup_id), None, None, "manual__2026-12-05T10:00:00+00:00")
    assert plan["target"].startswith(f"restore_{backup_id}_") and not plan["over_live"]
    restore_and_compare(plan, "manual__2026-12-05T10:00:00+00:00")
    assert counts(dsn_of(live, plan["target"])) == counts(live["dsn"])
    with pytest.raises(Exception, match="already exists; nothing was touched"):
        plan_restore(str(backup_id), plan["target"], None, "manual__another")
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    AppDatabaseHook().drop_database(plan["target"])


def _disk(monkeypatch, **settings) -> None:
    """The workers' disk settings: exactly `settings` (APP_DB_DISK_BYTES, APP_DB_DISK_FREE_PATH)."""
    for name in ("APP_DB_DISK_BYTES", "APP_DB_DISK_FREE_PATH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, str(value))


def test_a_restore_that_would_leave_the_disk_under_its_margin_is_refused_touching_nothing(
    live, pg_server, monkeypatch
):
    """Restores into new databases had no limit. The disk is known from the workers' settings (here
    the stack's data folder, measured; then a declared size, against what SQL can measure), and a
    restore that would leave less than the margin free is refused before any database is made."""
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.backup_steps import backup_catalog
    from execplatform.steps.restore_steps import plan_restore, restore_and_compare

    backup_id = backup(live)
    entry = backup_catalog().get(backup_id)
    plan = plan_restore(str(backup_id), None, None, "manual__room")  # the stack's folder: room enough
    assert plan["room"]["estimate_bytes"] > entry.size_bytes * 10
    assert plan["room"]["free_bytes"] > plan["room"]["estimate_bytes"]

    databases = lambda: {r[0] for r in query(pg_server.superuser_dsn(), "SELECT datname FROM pg_database")}  # noqa: E731
    before = databases()
    used = query(live["dsn"], "SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0]
    _disk(monkeypatch, APP_DB_DISK_BYTES=int(used) + plan["room"]["estimate_bytes"] // 2)
    with pytest.raises(
        AirflowFailException, match=r"would leave -?\d+ of the disk's \d+ bytes free"
    ) as refused:
        plan_restore(str(backup_id), None, None, "manual__full")
    assert (
        "APP_DB_DISK_BYTES" in str(refused.value)
        and "minus the databases'" in str(refused.value)
        and "nothing was touched" in str(refused.value)
    )
    with pytest.raises(AirflowFailException, match="under the 15% margin"):
        restore_and_compare(plan, "manual__room")  # checked again: the disk filled since the plan
    _disk(monkeypatch)
    with pytest.raises(AirflowFailException, match="set APP_DB_DISK_BYTES .* or APP_DB_DISK_FREE_PATH"):
        restore_and_compare(plan, "manual__room")
    assert databases() == before

    _disk(monkeypatch, APP_DB_DISK_BYTES=int(used) + 100 * plan["room"]["estimate_bytes"])
    assert restore_and_compare(plan, "manual__room")["database"] == plan["target"]
