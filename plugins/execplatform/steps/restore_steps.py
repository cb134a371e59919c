"""db_restore's steps: plan from the S3 catalog alone, restore into a new database and compare it,
then (over the live database) swap it into place in one short step.

Nothing here needs the app database to exist: the catalog is read from S3, and databases are
made, compared and renamed through the server's maintenance database. The live database is
never written: a restore goes into a database of its own, and only the swap, one transaction of
two renames under the schema lock, puts it in the live one's place (the old one is kept as
``<live>_pre_restore_<time>``). A restore killed at any step leaves the live database whole.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from execplatform.steps.backup_steps import backup_catalog, fetch_backup, record_recovery_event
from include.ids import APP_DB, AWS

# a database this DAG made carries this comment, so that a retry may drop what it left
MADE_BY = "restore of backup {backup_id} by db_restore run {run_id}"


def _fail(message: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def plan_restore(backup_id: str, target: str | None, confirm: str | None, run_id: str) -> dict[str, Any]:
    """Which backup, into which database, and whether over the live one; refuses before anything
    is touched. An empty target restores into a new database ``restore_<id>_<time>``, or, when the
    live database is gone, recreates it under its own name."""
    from execplatform.operators.backup_operators import DATABASE_NAME
    from include.backup import BackupError

    requested = str(backup_id or "latest").strip()
    if requested != "latest" and not requested.isdigit():
        _fail(f"backup_id {requested!r} is neither a catalog id nor 'latest'")
    try:
        entry = backup_catalog().get(None if requested == "latest" else int(requested))
    except BackupError as exc:
        _fail(str(exc))
    if entry.status != "verified":
        _fail(f"backup {entry.id} has status {entry.status!r}; only verified backups are restored")
    db = AppDatabaseHook(APP_DB)
    live = db.database_name
    live_exists = db.database_exists(live)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    target = (target or "").strip() or (f"restore_{entry.id}_{stamp}" if live_exists else live)
    if not re.fullmatch(DATABASE_NAME, target):
        _fail(f"target_database {target!r} is not a plain lower-case database name")
    over_live = live_exists and target == live
    if over_live and (confirm or "") != live:
        _fail(
            f"restoring over the live database {live!r} needs confirm={live!r}; got {confirm!r}; "
            "nothing was touched"
        )
    if not over_live and db.database_exists(target) and not _made_by_run(db, target, run_id):
        _fail(f"target_database {target!r} already exists; nothing was touched")
    room = _ensure_room(db, entry)
    token = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return {
        "room": room,
        "backup_id": entry.id,
        "live": live,
        "target": target,
        "over_live": over_live,
        # over the live database, the restore goes beside it first
        "restore_into": f"{live}_restoring_{token}" if over_live else target,
        "keep_as": f"{live}_pre_restore_{stamp}",
    }


def _ensure_room(db: AppDatabaseHook, entry) -> dict[str, Any]:
    """The restore's estimated size against the server's free space (include.backup.disk_space,
    from the environment's `APP_DB_DISK_BYTES` or `APP_DB_DISK_FREE_PATH`); the task fails,
    touching nothing, when the disk would be left under its margin or its size is not known."""
    import os

    import psycopg2

    from execplatform.steps import checked_number
    from include.backup import disk_space

    margin = float(os.environ.get(disk_space.MARGIN) or disk_space.RESTORE_DISK_MARGIN)
    margin = checked_number(disk_space.MARGIN, margin, low=0, high=0.99)
    conn = psycopg2.connect(db.maintenance_dsn())
    try:
        with conn.cursor() as cur:
            space = disk_space.measure(cur, os.environ)
    finally:
        conn.close()
    estimate = disk_space.restore_estimate(
        entry.size_bytes, entry.expected, space.empty_database_bytes if space else 0
    )
    if why := disk_space.refusal(estimate, space, margin):
        _fail(f"backup {entry.id} is not restored: {why}; nothing was touched")
    return {"estimate_bytes": estimate, "free_bytes": space.free_bytes, "disk_bytes": space.disk_bytes}


def _made_by_run(db: AppDatabaseHook, name: str, run_id: str) -> bool:
    query = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
    row = _on_server(db, query, (name,))
    return bool(row and row[0] and row[0].endswith(f"db_restore run {run_id}"))


def _on_server(db: AppDatabaseHook, statement, params: tuple = ()) -> tuple | None:
    """One statement on the maintenance database (autocommit); its first row, if any."""
    import psycopg2

    conn = psycopg2.connect(db.maintenance_dsn())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def restore_and_compare(plan: dict[str, Any], run_id: str, jobs: int = 2) -> dict[str, Any]:
    """The backup, fetched from S3 and checked against its catalog entry, restored into a database
    of its own and compared with what the dump recorded; dropped again when they differ. What a
    killed attempt of this run left is dropped first."""
    from psycopg2 import sql

    from include.backup.archive import compare, restore

    db = AppDatabaseHook(APP_DB)
    entry = backup_catalog().get(plan["backup_id"])
    name = plan["restore_into"]
    if db.database_exists(name):
        if not _made_by_run(db, name, run_id):
            _fail(f"{name!r} already exists and this run did not make it; nothing was touched")
        db.drop_database(name)  # a killed attempt's half restore
    _ensure_room(db, entry)  # again: the disk may have filled since the plan
    with tempfile.TemporaryDirectory(prefix="restore-") as tmp:
        folder = fetch_backup(entry, AWS, Path(tmp))
        db.create_database(name)
        made_by = sql.Literal(MADE_BY.format(backup_id=entry.id, run_id=run_id))
        _on_server(db, sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), made_by))
        seconds = restore(db.dsn(name), folder, jobs=jobs)
        problems = compare(db.dsn(name), folder)
    if problems:
        db.drop_database(name)
        _fail(
            f"the restore of backup {entry.id} differs from what it recorded; dropped: " + "; ".join(problems)
        )
    record_recovery_event(
        "restore",
        "warning",
        actor=f"db_restore/{run_id}",
        backup_id=entry.id,
        database=name,
        over_live=plan["over_live"],
        restore_seconds=round(seconds, 3),
    )
    return {"backup_id": entry.id, "database": name, "restore_seconds": round(seconds, 3)}


def swap_into_place(
    plan: dict[str, Any], run_id: str, holder: str, lock_wait_seconds: float
) -> dict[str, Any]:
    """Over the live database: the restored one takes its name in one transaction, under the
    schema lock; the old one is kept. Idempotent: a retry after the swap only finishes up."""
    from include.backup.database_swap import swap_in

    db = AppDatabaseHook(APP_DB)
    live, restored, keep_as = plan["live"], plan["restore_into"], plan["keep_as"]
    with db.schema_lock(holder, exclusive=True, wait_seconds=lock_wait_seconds):
        if db.database_exists(restored):
            swap_in(db.maintenance_dsn(), live, restored, keep_as)
            record_recovery_event(
                "database_swapped",
                "critical",
                actor=f"db_restore/{run_id}",
                backup_id=plan["backup_id"],
                live=live,
                kept_as=keep_as,
            )
        elif not db.database_exists(keep_as):
            _fail(
                f"neither {restored!r} (the restore) nor {keep_as!r} (the swapped-out live database) exists"
            )
    return {"live": live, "kept_as": keep_as}


def finish_restore(plan: dict[str, Any], swapped: bool) -> dict[str, Any]:
    """When the restored database is now the live one, its ``backups`` table is reconciled from
    S3: every backup newer than the restored one is known again, and no id is issued twice."""
    from airflow.sdk.exceptions import AirflowSkipException

    from execplatform.steps.backup_steps import reconcile_catalog

    if plan["over_live"] and not swapped:
        raise AirflowSkipException(
            f"not swapped in: the restore waits in {plan['restore_into']!r} for inspection (drop it when "
            f"done); the live database {plan['live']!r} is untouched"
        )
    if plan["target"] != plan["live"]:
        raise AirflowSkipException(f"restored into {plan['target']!r}; the live database is untouched")
    return reconcile_catalog(backup_catalog())
