"""Revisions after the baseline, run the way db_migrate runs them, on the real PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from include.migrations import (
    Settings,
    all_revisions,
    changed_revisions,
    current,
    downgrade,
    heads,
    offline_sql,
    pending,
    upgrade,
)
from include.migrations.lint import lint
from include.migrations.runner import (
    MigrationError,
    MigrationLocked,
    apply,
    rehearse,
    schema_dump,
    schema_signature,
)
from include.migrations.smoke import fingerprint, smoke_check, table_filenode
from tests.project import FIXTURES

BROKEN = str(FIXTURES / "migrations" / "broken")
FAST = Settings(lock_timeout_ms=200, lock_retries=2, retry_backoff_s=0.05)


def _query(dsn: str, sql: str, args=()):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        rows = cur.fetchall()
    conn.close()
    return rows


def _fingerprint(dsn: str):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        fp = fingerprint(cur)
    conn.close()
    return fp


def _has_ai_model(dsn: str) -> bool:
    return bool(
        _query(
            dsn,
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'execution_tasks' AND column_name = 'ai_model'",
        )
    )


@pytest.fixture
def seeded(app_dsn) -> str:
    from devstack.demo_data import seed

    seed(app_dsn, scale=0.05)
    return app_dsn


def test_one_head_and_the_offline_sql_is_what_runs():
    assert len(heads()) == 1
    sql = offline_sql("0002")
    assert sql.startswith("SET lock_timeout = '1000ms';\nSET statement_timeout =")
    assert "ADD COLUMN IF NOT EXISTS ai_model text;" in sql
    assert "NOT VALID" in sql and "VALIDATE CONSTRAINT" in sql
    assert "CREATE INDEX CONCURRENTLY" in sql
    # the concurrent index is built outside any transaction
    assert (
        sql.index("COMMIT;")
        < sql.index("CREATE INDEX CONCURRENTLY")
        < sql.index("BEGIN;", sql.index("COMMIT;"))
    )


def test_lint_passes_with_the_named_exception_and_blocks_without_it(app_dsn):
    revision = pending(app_dsn)[0]
    assert revision.revision == "0002" and "ban-drop-constraint" in revision.squawk_exceptions
    major = _query(app_dsn, "SELECT current_setting('server_version_num')::int / 10000")[0][0]
    assert lint([revision], pg_major=major) == []
    findings = lint([dataclasses.replace(revision, squawk_exceptions={})], pg_major=major)
    assert [f.rule for f in findings] == ["ban-drop-constraint"]
    assert "revision 0002, line" in str(findings[0])


def test_upgrade_from_empty_to_head_then_every_downgrade_step_by_step(app_dsn):
    downgrade(app_dsn, "base")
    assert current(app_dsn) is None
    upgrade(app_dsn, "head")
    assert current(app_dsn) == heads()[0] and _has_ai_model(app_dsn)
    chain = [r.revision for r in all_revisions()]  # oldest first
    for below in reversed([None, *chain[:-1]]):
        downgrade(app_dsn, "-1")
        assert current(app_dsn) == below
        assert _has_ai_model(app_dsn) == (below is not None and below >= "0002")
    assert _query(app_dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'execution_tasks'") == [(0,)]


def test_up_down_up_gives_the_schema_of_a_straight_upgrade(seeded, app_head_dsn):
    original = schema_dump(seeded)
    after_baseline = [r.revision for r in all_revisions()][1:]
    assert apply(seeded, settings=FAST) == after_baseline
    downgrade(seeded, "0001")
    assert schema_dump(seeded) == original
    assert apply(seeded, settings=FAST) == after_baseline
    assert schema_dump(seeded) == schema_dump(app_head_dsn)  # app_head_dsn: straight from base


def test_backfill_fills_ai_model_from_the_payload_and_skips_malformed_values(seeded):
    with psycopg2.connect(seeded) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO execution_tasks (task_type, payload) VALUES "
            "('idea', '{\"ai_model\": \"NOT a model name!\"}'), ('idea', '{\"ai_model\": 42}')"
        )
    conn.close()
    expected = _query(
        seeded, "SELECT count(*) FROM execution_tasks WHERE payload->>'ai_model' ~ '^[a-z0-9]'"
    )[0][0]
    apply(seeded, "0002", dataclasses.replace(FAST, backfill_batch_size=97))  # many small batches
    assert expected > 0
    assert _query(seeded, "SELECT count(ai_model) FROM execution_tasks") == [(expected,)]
    assert _query(
        seeded,
        "SELECT count(*) FROM execution_tasks WHERE ai_model IS DISTINCT FROM "
        "(payload->>'ai_model') AND ai_model IS NOT NULL",
    ) == [(0,)]
    assert _query(
        seeded,
        "SELECT convalidated FROM pg_constraint WHERE conname = 'execution_tasks_ai_model_format'",
    ) == [(True,)]
    assert _query(
        seeded,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'execution_tasks_ai_model_idx'::regclass",
    ) == [(True,)]


def test_a_million_rows_keep_their_file(app_dsn):
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO execution_tasks (task_type, payload, status)
            SELECT 'implementation',
                   CASE WHEN g % 3 = 0 THEN jsonb_build_object('ai_model', 'gpt-4.1') ELSE '{}' END,
                       'succeeded'
              FROM generate_series(1, 1000000) g
        """)
        before = table_filenode(cur)
    conn.close()
    # a lock timeout above deadlock_timeout (1 s): PostgreSQL then cancels an autovacuum that the
    # million inserts started for a migration statement waiting on it; at 200 ms the runner gave up first
    apply(app_dsn, "0002", dataclasses.replace(FAST, backfill_batch_size=50_000, lock_timeout_ms=2000))
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        assert table_filenode(cur) == before
        cur.execute("SELECT count(*), count(ai_model) FROM execution_tasks")
        assert cur.fetchone() == (1_000_000, 333_333)
    conn.close()


def test_a_concurrent_writer_is_never_blocked_past_the_lock_timeout(seeded):
    """The writer gives up after 3x the migration's lock timeout: any such wait is an error."""
    stop, errors, inserted = threading.Event(), [], []

    def writer():
        conn = psycopg2.connect(seeded)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '3s'")
            while not stop.is_set():
                try:
                    cur.execute(
                        "INSERT INTO execution_tasks (task_type, payload) VALUES ('idea', '{}') RETURNING id"
                    )
                    inserted.append(cur.fetchone()[0])
                except psycopg2.Error as exc:
                    errors.append(exc)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        apply(seeded, "0002", Settings(lock_timeout_ms=1000, backfill_batch_size=500))
        during = len(inserted)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert during > 0 and len(inserted) > during
    assert current(seeded) == "0002"


def test_a_long_transaction_makes_it_retry_then_fail_naming_the_blocker(seeded):
    signature = schema_signature(seeded)
    holder = psycopg2.connect(seeded)
    retries = []
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM execution_tasks /* reporting job */")
            pid = holder.get_backend_pid()
            with pytest.raises(MigrationLocked) as caught:
                apply(
                    seeded,
                    settings=FAST,
                    on_retry=lambda rev, attempt, exc: retries.append(attempt),
                )
    finally:
        holder.rollback()
        holder.close()
    assert retries == [1, 2] and caught.value.attempts == 3
    message = str(caught.value)
    assert f"pid {pid}" in message and "reporting job" in message and "transaction open" in message
    assert schema_signature(seeded) == signature and current(seeded) == "0001"


def test_0002_stopped_at_its_concurrent_index_is_undone_completely(seeded, caplog):
    """An old transaction elsewhere makes the index build wait after the column, backfill and
    validation have committed: the retries give up and the schema is as it was."""
    original, data = schema_dump(seeded), _fingerprint(seeded)
    holder = psycopg2.connect(seeded)
    holder.set_session(isolation_level="REPEATABLE READ")  # its snapshot lives as long as it does
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")  # an open snapshot, no lock on execution_tasks
            with pytest.raises(MigrationLocked, match="revision 0002"):
                apply(seeded, settings=FAST)
    finally:
        holder.rollback()
        holder.close()
    # each of the 3 attempts had committed the column before the index build gave up
    assert caplog.text.count("revision 0002 stopped part-way; undoing what it committed") == 3
    assert current(seeded) == "0001" and schema_dump(seeded) == original
    assert smoke_check_clean(seeded, data)


def smoke_check_clean(dsn, before) -> bool:
    after = _fingerprint(dsn)
    return after.counts == before.counts and after.checksums == before.checksums


def test_a_revision_failing_halfway_leaves_schema_and_data_as_before(seeded):
    settings = dataclasses.replace(FAST, extra_versions=(BROKEN,))
    apply(seeded, "0002", settings)
    original, data = schema_dump(seeded), _fingerprint(seeded)
    with pytest.raises(MigrationError, match="revision 0099 failed and was undone: .*division by zero"):
        apply(seeded, "0099", settings)
    assert current(seeded) == "0002" and schema_dump(seeded) == original
    assert smoke_check_clean(seeded, data)


def test_a_revision_file_changed_after_it_was_applied_is_named(seeded, tmp_path):
    folder = tmp_path / "versions"
    folder.mkdir()
    source = (
        Path(BROKEN, "0099_broken_halfway.py")
        .read_text()
        .replace('    op.execute("SELECT 1 / 0")  # the step that breaks\n', "")
    )
    (folder / "0099_nickname.py").write_text(source)
    settings = dataclasses.replace(FAST, extra_versions=(str(folder),))
    apply(seeded, "0099", settings)
    assert changed_revisions(seeded, settings=settings) == []
    (folder / "0099_nickname.py").write_text(source + "\n# edited after it ran\n")
    [problem] = changed_revisions(seeded, settings=settings)
    assert problem.startswith(
        "revision 0099 (0099_nickname.py) changed after it was applied: applied sha256 "
    )
    downgrade(seeded, "0002", settings=settings)
    assert changed_revisions(seeded, settings=settings) == []


def test_rehearsal_passes_for_0002_and_smoke_checks_catch_lost_rows(seeded):
    before = _fingerprint(seeded)
    assert rehearse(seeded, "0002", FAST)["applied"] == ["0002"]
    assert smoke_check(seeded, before, exact=True) == []
    _query(seeded, "DELETE FROM payments WHERE id IN (SELECT id FROM payments LIMIT 3) RETURNING id")
    problems = smoke_check(seeded, before, exact=False)
    assert problems == ["payments: 3 existing rows are gone"]


def test_the_reviewer_commands_print_the_sql_and_lint_every_revision():
    import subprocess
    import sys

    sql = subprocess.run(
        [sys.executable, "-m", "include.migrations", "sql", "0002"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sql == offline_sql("0002") + "\n"
    linted = subprocess.run(
        [sys.executable, "-m", "include.migrations", "lint"], capture_output=True, text=True
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def queue_index_entries(dsn: str) -> dict[str, int]:
    """Entries per index of execution_tasks: exact after a VACUUM (it counts every index's tuples)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM execution_tasks")
        cur.execute(
            "SELECT c.relname, c.reltuples::int FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'execution_tasks'::regclass"
        )
        entries = dict(cur.fetchall())
    conn.close()
    return entries


def test_0006_leaves_keyless_and_unfinished_rows_out_of_the_queue_indexes_and_keys_stay_unique(
    app_dsn,
):
    from include.execution.task_queue import Completion, TaskQueue

    upgrade(app_dsn, "0005")
    with TaskQueue(app_dsn) as q:  # enqueueing with a key works before the revision...
        first = q.enqueue("idea", {"n": 0}, idempotency_key="k1")
        assert q.enqueue("idea", {"n": 1}, idempotency_key="k1") == first
        q.enqueue_many([{"task_type": "idea", "payload": {"n": i}} for i in range(10)])
        q.complete([Completion(t, {}, 1) for t in q.claim(4)])
    before = queue_index_entries(app_dsn)
    assert (
        before["execution_tasks_idempotency_key_key"],
        before["execution_tasks_type_finished_idx"],
    ) == (11, 11)
    upgrade(app_dsn, "0006")
    after = queue_index_entries(app_dsn)
    assert (
        "execution_tasks_idempotency_key_key" not in after
        and "execution_tasks_type_finished_idx" not in after
    )
    # only the keyed row, and only the finished rows, have entries
    assert (
        after["execution_tasks_idempotency_key_idx"],
        after["execution_tasks_type_finished_at_idx"],
    ) == (1, 4)
    with TaskQueue(app_dsn) as q:  # ... and after it
        assert q.enqueue("idea", {"n": 2}, idempotency_key="k1") == first
        assert q.enqueue("idea", {"n": 3}, idempotency_key="k2") != first
    with pytest.raises(psycopg2.errors.UniqueViolation):
        _query(
            app_dsn,
            "INSERT INTO execution_tasks (task_type, payload, idempotency_key)"
            " VALUES ('idea', '{}', 'k2') RETURNING id",
        )
    downgrade(app_dsn, "0005")
    assert _query(
        app_dsn,
        "SELECT contype FROM pg_constraint WHERE conname = 'execution_tasks_idempotency_key_key'",
    ) == [("u",)]
    restored = queue_index_entries(app_dsn)
    assert (
        restored["execution_tasks_idempotency_key_key"],
        restored["execution_tasks_type_finished_idx"],
    ) == (12, 12)
    assert "execution_tasks_idempotency_key_idx" not in restored


def test_0007_leaves_unfinished_rows_out_of_the_ai_model_index(app_dsn):
    from include.execution.task_queue import Completion, TaskQueue

    upgrade(app_dsn, "0006")
    with TaskQueue(app_dsn) as q:
        q.enqueue_many([{"task_type": "idea", "payload": {"n": i}, "ai_model": "gpt-4.1"} for i in range(10)])
        claimed = q.claim(4)
        q.complete([Completion(t, {}, 1) for t in claimed[:2]])  # 2 finished, 2 running, 6 queued
    assert queue_index_entries(app_dsn)["execution_tasks_ai_model_idx"] == 10
    upgrade(app_dsn, "0007")
    after = queue_index_entries(app_dsn)
    assert "execution_tasks_ai_model_idx" not in after and after["execution_tasks_ai_model_finished_idx"] == 2
    with TaskQueue(app_dsn) as q:  # a claim adds no entry, a completion one
        q.complete([Completion(t, {}, 1) for t in q.claim(3)[:1]])
    assert queue_index_entries(app_dsn)["execution_tasks_ai_model_finished_idx"] == 3
    plan = _query(
        app_dsn,
        "SET enable_seqscan = off; EXPLAIN SELECT count(*) FROM execution_tasks"
        " WHERE ai_model = 'gpt-4.1' AND finished_at > now() - interval '1 day'",
    )
    # still serves a report by model over a window
    assert "execution_tasks_ai_model_finished_idx" in str(plan)
    downgrade(app_dsn, "0006")
    restored = queue_index_entries(app_dsn)
    assert (
        "execution_tasks_ai_model_finished_idx" not in restored
        and restored["execution_tasks_ai_model_idx"] == 10
    )


def test_0008_keeps_the_ai_model_format_and_its_name_on_both_sides(app_dsn):
    import re

    AI_MODEL_FORMAT = re.compile(r"^[a-z0-9][a-z0-9._:/-]{0,63}$")  # 0002's (0009 took "/" out)
    values = [
        "gpt-4.1",
        "a",
        "a" * 64,
        "a" * 65,
        "org/model:v2_b.1",
        "GPT-4",
        "-gpt",
        "",
        "gpt 4",
        "gpt-é",
        "gpt\n",
        "9" + "x" * 63,
        "x" * 63 + "!",
    ]
    conn = psycopg2.connect(app_dsn)
    conn.autocommit = True

    def accepted() -> list[bool]:
        verdicts = []
        for value in values:
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO execution_tasks (task_type, ai_model) VALUES ('idea', %s)",
                        (value,),
                    )
                verdicts.append(True)
            except psycopg2.errors.CheckViolation as exc:
                assert "execution_tasks_ai_model_format" in str(exc)
                verdicts.append(False)
        return verdicts

    def definition() -> list[tuple]:
        return _query(
            app_dsn,
            "SELECT conname, convalidated, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname LIKE 'execution_tasks_ai_model_format%%'",
        )

    expected = [bool(AI_MODEL_FORMAT.fullmatch(v)) for v in values]
    assert expected.count(True) == 5  # the list holds both verdicts
    upgrade(app_dsn, "0007")
    assert accepted() == expected and "{0,63}" in definition()[0][2]
    with conn.cursor() as cur:  # as if a run had stopped after its first step: the next run converges
        cur.execute(
            "ALTER TABLE execution_tasks ADD CONSTRAINT execution_tasks_ai_model_format_next"
            " CHECK (ai_model ~ '^[a-z0-9][a-z0-9._:/-]*$' AND char_length(ai_model) <= 64) NOT VALID"
        )
    upgrade(app_dsn, "0008")
    [(name, valid, check)] = definition()
    assert (name, valid) == ("execution_tasks_ai_model_format", True) and "char_length" in check
    assert accepted() == expected
    downgrade(app_dsn, "0007")
    [(name, valid, check)] = definition()
    assert (name, valid) == ("execution_tasks_ai_model_format", True) and "{0,63}" in check
    assert accepted() == expected
    conn.close()
