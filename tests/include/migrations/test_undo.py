"""A revision that fails part-way is undone before anything is stamped, and an undo that fails
says so instead of leaving alembic_version naming a revision that is only half there."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg2
import pytest

from include.migrations import Settings, current, upgrade
from tests.project import FIXTURES

UNDO = str(FIXTURES / "migrations" / "undo")
BROKEN = str(FIXTURES / "migrations" / "broken")
SETTINGS = Settings(lock_timeout_ms=300, lock_retries=0, retry_backoff_s=0.05)


def hold_lock_on_undo_probe(
    dsn: str, seconds: float, held: threading.Event, appears_within: float = 30
) -> threading.Thread:
    """A session that locks `undo_probe` as soon as the revision has made it (within
    `appears_within` seconds), and keeps the lock `seconds`: the contention that failed the
    upgrade is still there when the undo runs."""

    def hold() -> None:
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                deadline = time.monotonic() + appears_within
                while time.monotonic() < deadline:
                    cur.execute("SELECT to_regclass('undo_probe')")
                    if cur.fetchone()[0]:
                        cur.execute("LOCK TABLE undo_probe IN ACCESS SHARE MODE")
                        held.set()
                        time.sleep(seconds)
                        break
                    conn.rollback()
                    time.sleep(0.05)
        finally:
            conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_an_undo_that_times_out_stamps_nothing_and_says_the_revision_is_half_applied(app_dsn):
    from include.migrations.runner import UndoFailed, apply

    upgrade(app_dsn, "0002")
    settings = dataclasses.replace(SETTINGS, extra_versions=(UNDO,))
    held = threading.Event()
    holder = hold_lock_on_undo_probe(app_dsn, 8, held)
    try:
        with pytest.raises(UndoFailed, match="revision 0097 stopped part-way and undoing it failed"):
            apply(app_dsn, "0097", settings)
    finally:
        holder.join()
    assert held.is_set()
    assert current(app_dsn) == "0002", "nothing was stamped: alembic_version still names the start"
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('undo_probe') IS NOT NULL")
        assert cur.fetchone()[0], "the half-applied part is still there, for a person to resolve"
    conn.close()


def test_a_partial_revision_is_undone_without_touching_alembic_version(app_dsn, monkeypatch):
    """The undo runs the downgrade's steps without stamping the failed revision first."""
    from include.migrations import runner

    upgrade(app_dsn, "0002")
    stamps = []
    monkeypatch.setattr(runner, "downgrade", lambda *a, **k: stamps.append(a))  # a stamped undo would use it
    with pytest.raises(runner.MigrationError, match="revision 0099 failed and was undone"):
        runner.apply(app_dsn, "0099", dataclasses.replace(SETTINGS, extra_versions=(BROKEN,)))
    assert stamps == [] and current(app_dsn) == "0002"
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'")
        assert cur.fetchone()[0] == 0, "the committed part was undone"
    conn.close()
