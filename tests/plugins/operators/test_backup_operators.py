"""Backups against the real servers: dump to moto S3, verify by restore, faults, restores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from devstack.stack import BACKUP_BUCKET
from tests.airflow_api import postgres_connection

CONN_ID = "backup_src"


@pytest.fixture
def source(app_dsn, monkeypatch, tmp_path):
    """A seeded database of its own, as connection `backup_src`, with the objects a real
    schema has beyond tables: an enum, a view, a function, a trigger, a used sequence."""
    from devstack.demo_data import seed

    seed(app_dsn, scale=0.01)
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("""
            CREATE TYPE task_mood AS ENUM ('calm', 'busy');
            CREATE TABLE moods (id serial PRIMARY KEY, mood task_mood NOT NULL, doc jsonb);
            INSERT INTO moods (mood, doc) VALUES ('calm', '{"a": [1, 2]}'), ('busy', '{"b": null}');
            CREATE VIEW busy_moods AS SELECT * FROM moods WHERE mood = 'busy';
            CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.doc := coalesce(NEW.doc, '{}'::jsonb); RETURN NEW; END $$;
            CREATE TRIGGER moods_touch BEFORE INSERT ON moods FOR EACH ROW EXECUTE FUNCTION touch();
        """)
    conn.close()
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", postgres_connection(app_dsn))
    monkeypatch.setenv("BACKUP_PREFIX", f"test/{uuid.uuid4().hex}")  # a catalog of the test's own
    return {"dsn": app_dsn, "work_dir": str(tmp_path / "work")}


def backup(source, **kwargs) -> dict:
    from execplatform.operators.backup_operators import PostgresBackupOperator

    op = PostgresBackupOperator(
        task_id="dump",
        bucket=BACKUP_BUCKET,
        postgres_conn_id=CONN_ID,
        work_dir=source["work_dir"],
        **kwargs,
    )
    return op.execute({})


def verify(backup_id: int) -> dict:
    from execplatform.operators.backup_operators import VerifyBackupOperator

    return VerifyBackupOperator(task_id="verify", backup_id=str(backup_id), postgres_conn_id=CONN_ID).execute(
        {}
    )


def catalog(source) -> dict[int, tuple]:
    with psycopg2.connect(source["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, status, error, restore_seconds FROM backups ORDER BY id")
        return {r[0]: r[1:] for r in cur.fetchall()}


def s3_client():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id="aws_default").get_conn()


def test_backup_uploads_and_verification_restores_every_kind_of_object(source):
    done = backup(source)
    backup_id = done["backup_id"]
    assert catalog(source)[backup_id][0] == "uploaded"
    bucket, _, prefix = done["location"].removeprefix("s3://").partition("/")
    keys = {
        o["Key"].removeprefix(prefix)
        for o in s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    }
    assert {"toc.dat", "manifest.json", "schema.sql", "expected.json"} <= keys
    assert not list(Path(source["work_dir"]).rglob("*.dat*")), (
        "the local copy goes once the upload is confirmed"
    )

    result = verify(backup_id)
    status, error, restore_seconds = catalog(source)[backup_id]
    assert (status, error) == ("verified", None) and restore_seconds > 0
    assert result["verified"] == 1
    with psycopg2.connect(source["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'verify_%%'")
        assert cur.fetchone()[0] == 0, "the scratch database is dropped"


def test_a_backup_taken_while_rows_are_inserted_verifies(source, monkeypatch):
    """Sequences are not transactional: a writer moves one on while the dump runs. The values the
    backup records must be read before pg_dump reads them, so that a restore is never behind them.
    On make up's seeded database, counting the tables took longer than pg_dump took to read the
    sequences, and an audit's inserts made db_migrate's backup fail ('sequences of
    public.audit_findings_id_seq: source 11, restore 10'); the delay here stands for that count."""
    import include.backup.archive

    count = include.backup.archive.snapshot

    def slow_count(*args, **kwargs):
        time.sleep(1)
        return count(*args, **kwargs)

    monkeypatch.setattr(include.backup.archive, "snapshot", slow_count)
    stop, inserted = threading.Event(), []

    def write() -> None:
        conn = psycopg2.connect(source["dsn"])
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO moods (mood) VALUES ('busy') RETURNING id")
                inserted.append(cur.fetchone()[0])
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        done = backup(source)
    finally:
        stop.set()
        writer.join()
    assert len(inserted) > 10, "the writer ran while the backup was taken"
    verify(done["backup_id"])
    assert catalog(source)[done["backup_id"]][:2] == ("verified", None)


def test_a_file_corrupted_in_s3_is_refused_naming_it_and_both_checksums(source):
    from airflow.sdk.exceptions import AirflowFailException

    done = backup(source)
    bucket, _, prefix = done["location"].removeprefix("s3://").partition("/")
    client = s3_client()
    data_key = next(
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        if o["Key"].endswith(".dat.gz")
    )
    body = client.get_object(Bucket=bucket, Key=data_key)["Body"].read()
    client.put_object(Bucket=bucket, Key=data_key, Body=body + b"\0")

    with pytest.raises(
        AirflowFailException,
        match=r"file \S+\.dat\.gz has sha256 [0-9a-f]{64}, the manifest records [0-9a-f]{64}",
    ):
        verify(done["backup_id"])
    assert catalog(source)[done["backup_id"]][0] == "failed"


def test_pg_dump_killed_mid_run_fails_the_backup_and_spares_the_verified_one(source, monkeypatch, tmp_path):
    from include.backup import BackupError
    from include.backup.pg_programs import pg_bin

    first = backup(source)
    verify(first["backup_id"])
    # PG_BIN with a pg_dump that pauses before the data dump, so it can be killed mid-run
    slow_bin = tmp_path / "bin"
    slow_bin.mkdir()
    (slow_bin / "pg_dump").write_text(
        f'#!/bin/sh\ncase "$*" in *-Fd*) sleep 30;; esac\nexec {pg_bin("pg_dump")} "$@"\n'
    )
    (slow_bin / "pg_dump").chmod(0o755)
    (slow_bin / "pg_restore").symlink_to(pg_bin("pg_restore"))
    monkeypatch.setenv("PG_BIN", str(slow_bin))

    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(errors, lambda: backup(source)))
    thread.start()
    deadline = time.monotonic() + 30
    while not (
        dumps := [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "pg_dump" and "-Fd" in (p.info["cmdline"] or [])
        ]
    ):
        assert time.monotonic() < deadline, "pg_dump never started"
        time.sleep(0.1)
    for p in dumps:
        for child in p.children(recursive=True):
            child.kill()
        p.kill()
    thread.join(60)

    assert len(errors) == 1 and isinstance(errors[0], BackupError)
    rows = catalog(source)
    assert rows[first["backup_id"]][0] == "verified"
    [(failed_id, (status, error, _))] = [(k, v) for k, v in rows.items() if k != first["backup_id"]]
    assert status == "failed" and "pg_dump failed" in error
    from execplatform.operators.backup_operators import VerifyBackupOperator

    with pytest.raises(BackupError):  # a failed backup can never be verified
        VerifyBackupOperator(task_id="v", backup_id=failed_id, postgres_conn_id=CONN_ID).execute({})


class Forwarder:
    """A TCP forwarder to moto that can be cut, as S3 going away in the middle of a backup."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst) -> None:
        try:
            while self.open.is_set() and (data := src.recv(65536)):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def cut(self) -> None:
        self.open.clear()


def aws_through(monkeypatch, port: int) -> str:
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_FLAKY",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "local-access-key",
                "password": "local-secret-key",
                "extra": {
                    "endpoint_url": f"http://127.0.0.1:{port}",
                    "region_name": "us-east-1",
                    "config_kwargs": {
                        "retries": {"max_attempts": 1},
                        "connect_timeout": 1,
                        "read_timeout": 5,
                    },
                },
            }
        ),
    )
    return "aws_flaky"


def test_s3_unreachable_before_the_backup_fails_it_before_anything_is_dumped(source, monkeypatch):
    """The catalog is read from S3 first: with S3 down, no id is issued and nothing is dumped."""
    from devstack.stack import free_port

    with pytest.raises(Exception, match="(?i)connect"):
        backup(source, aws_conn_id=aws_through(monkeypatch, free_port()))
    assert catalog(source) == {}
    assert not list(Path(source["work_dir"]).rglob("toc.dat"))


def test_s3_gone_during_the_upload_fails_the_backup_and_keeps_the_local_copy(
    source, local_stack, monkeypatch
):
    forwarder = Forwarder(local_stack.ports["moto"])
    conn_id = aws_through(monkeypatch, forwarder.port)

    def cut_once_dumping() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(Path(source["work_dir"]).rglob("toc.dat")):
            time.sleep(0.05)
        forwarder.cut()

    cutter = threading.Thread(target=cut_once_dumping)
    cutter.start()
    with pytest.raises(Exception, match="(?i)connect|closed|reset|aborted"):
        backup(source, aws_conn_id=conn_id)
    cutter.join()
    [(backup_id, (status, error, _))] = catalog(source).items()
    assert status == "failed" and error
    kept = Path(source["work_dir"]) / "execplatform-backups" / f"backup-{backup_id}"
    assert (kept / "manifest.json").exists() and (kept / "toc.dat").exists()


def test_retention_keeps_the_newest_and_each_day_and_week():
    from datetime import datetime, timedelta

    from include.backup.catalog import plan_retention

    base = datetime(2026, 3, 2, 3, 0)  # a Monday
    # two backups a day for 30 days: ids 1..60, newest last
    rows = [(i + 1, base + timedelta(hours=12 * i)) for i in range(60)]
    doomed = plan_retention(rows, keep_daily=3, keep_weekly=3, protected=frozenset({5}))
    kept = sorted({r[0] for r in rows} - set(doomed))
    # days: the newest of Mar 31, 30, 29 (60, 58, 56); weeks: of Mar 30-31 (60), Mar 23-29 (56),
    # Mar 16-22 (42, from Sunday the 22nd); and the protected rollback point 5
    assert kept == [5, 42, 56, 58, 60]
    assert plan_retention([], keep_daily=1, keep_weekly=1) == []


def _capture(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


def test_retention_never_deletes_a_pending_migrations_rollback_point(source):
    """Three verified backups on three days; the oldest is a running db_migrate's way back."""
    from execplatform.steps.backup_steps import apply_retention
    from include.migrations import BOOKKEEPING_DDL

    s3 = s3_client()
    prefix = f"test/{uuid.uuid4().hex}"
    with psycopg2.connect(source["dsn"]) as conn, conn.cursor() as cur:
        cur.execute(BOOKKEEPING_DDL)
        ids = []
        for days_ago in (3, 2, 1):
            location = f"s3://{BACKUP_BUCKET}/{prefix}/{days_ago}/"
            s3.put_object(Bucket=BACKUP_BUCKET, Key=f"{prefix}/{days_ago}/toc.dat", Body=b"x")
            cur.execute(
                "INSERT INTO backups (database_name, status, verified_at, location) "
                "VALUES ('app', 'verified', now() - make_interval(days => %s), %s) RETURNING id",
                (days_ago, location),
            )
            ids.append(cur.fetchone()[0])
        cur.execute(
            "INSERT INTO migration_runs (dag_run_id, from_revision, target_revision, backup_id, status) "
            "VALUES ('manual__1', '0001', '0002', %s, 'rehearsed')",
            (ids[0],),
        )
    conn.close()

    def keys(days_ago: int) -> int:
        return s3.list_objects_v2(Bucket=BACKUP_BUCKET, Prefix=f"{prefix}/{days_ago}/").get("KeyCount", 0)

    assert apply_retention(keep_daily=1, keep_weekly=0, postgres_conn_id=CONN_ID) == [ids[1]]
    assert (keys(3), keys(2), keys(1)) == (1, 0, 1)
    # once the run has completed, its rollback point is an ordinary old backup
    with psycopg2.connect(source["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("UPDATE migration_runs SET status = 'completed'")
    conn.close()
    assert apply_retention(keep_daily=1, keep_weekly=0, postgres_conn_id=CONN_ID) == [ids[0]]
    assert catalog(source)[ids[0]][0] == "deleted" and keys(3) == 0


def test_a_scratch_database_is_dropped_even_with_a_session_left_in_it(source):
    """A plain DROP first (it asks an autovacuum worker, a superuser's process that FORCE may
    not end, to stop); FORCE only when our own sessions are still in the database."""
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    def databases() -> set[str]:
        with psycopg2.connect(source["dsn"]) as conn, conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            names = {row[0] for row in cur.fetchall()}
        conn.close()
        return names

    quiet, busy = (f"scratch_{uuid.uuid4().hex[:8]}" for _ in range(2))
    AppDatabaseHook(CONN_ID).create_database(quiet)
    AppDatabaseHook(CONN_ID).drop_database(quiet)
    AppDatabaseHook(CONN_ID).create_database(busy)
    left = psycopg2.connect(
        source["dsn"].replace(f"dbname={parse_dsn(source['dsn'])['dbname']}", f"dbname={busy}")
    )
    AppDatabaseHook(CONN_ID).drop_database(busy)
    assert {quiet, busy}.isdisjoint(databases())
    with pytest.raises(psycopg2.OperationalError):  # the left session was ended by FORCE
        left.cursor().execute("SELECT 1")
    left.close()


def test_finding_the_client_programs_warns_about_nothing():
    """The embedded wheel's import made platformdirs warn that XDG_RUNTIME_DIR is unset, a line
    in every backup task's log and in each `make psql`."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "PG_BIN")}
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "from include.backup.archive import pg_bin; print(pg_bin('pg_dump'))",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_file() and not done.stderr


def test_retention_deletes_the_files_of_a_backup_never_verified_once_it_is_old(source):
    """A failed or unverified backup used to keep its files in S3 forever: past the age limit
    they go, its catalog entry stays (marked deleted, its error kept); a younger one is left."""
    from datetime import UTC, datetime, timedelta

    from execplatform.steps.backup_steps import apply_retention, backup_catalog
    from include.backup.catalog import split_location

    old, young = backup(source)["backup_id"], backup(source)["backup_id"]  # uploaded, never verified
    s3_catalog = backup_catalog()
    entry = s3_catalog.get(old)
    long_ago = datetime.now(UTC) - timedelta(days=4)
    entry.status, entry.error, entry.started_at, entry.finished_at = (
        "failed",
        "verify: differs",
        long_ago,
        long_ago,
    )
    s3_catalog.put(entry)
    with psycopg2.connect(source["dsn"]) as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE backups SET status = 'failed', started_at = %s, finished_at = %s WHERE id = %s",
            (long_ago, long_ago, old),
        )
    conn.close()

    def files(backup_id: int) -> list[str]:
        bucket, prefix = split_location(s3_catalog.get(backup_id).location)
        listed = s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(o["Key"].removeprefix(prefix) for o in listed)

    assert len(files(old)) > 3 and len(files(young)) > 3
    assert apply_retention(keep_daily=7, keep_weekly=4, postgres_conn_id=CONN_ID) == [old]
    assert files(old) == ["catalog.json"] and len(files(young)) > 3
    kept = s3_catalog.get(old)
    assert (kept.status, kept.error) == ("deleted", "verify: differs")
    assert catalog(source)[old][0] == "deleted" and catalog(source)[young][0] == "uploaded"
    assert apply_retention(keep_daily=7, keep_weekly=4, postgres_conn_id=CONN_ID) == []  # done once
