"""Smoke checks shared by the rehearsal on a clone and the verification in production.

`fingerprint` records, before a migration, what must survive it: row counts of the critical
tables and content checksums over the columns that existed then. `smoke_check` runs after
it: a task carrying `ai_model` goes through the task-batch queue's own enqueue, claim and
completion (include.execution.task_queue), and the fingerprint is compared. Everything it writes is
rolled back.

On an isolated clone nothing else writes, so counts and checksums must match exactly
(`exact=True`). In production live writers add and update rows during the migration, so
there the check is that no row that existed before is gone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SMOKE_TABLES = ("execution_tasks", "payments", "offers", "users")


@dataclass
class Fingerprint:
    columns: dict[str, list[str]] = field(default_factory=dict)
    max_ids: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _columns(cur, table: str) -> list[str]:
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (table,),
    )
    return [r[0] for r in cur.fetchall()]


def fingerprint(cur, before: Fingerprint | None = None) -> Fingerprint:
    """Counts and checksums of the rows with id <= the recorded max id, over the recorded
    columns; `before` gives those bounds (else they are read now)."""
    from psycopg2 import sql

    fp = Fingerprint()
    for table in SMOKE_TABLES:
        columns = before.columns[table] if before else _columns(cur, table)
        if before:
            max_id = before.max_ids[table]
        else:
            cur.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(sql.Identifier(table)))
            max_id = cur.fetchone()[0]
        cur.execute(
            sql.SQL(
                "SELECT count(*), coalesce(sum(hashtextextended(ROW({cols})::text, 0)), 0)::text "
                "FROM {table} WHERE id <= %s"
            ).format(cols=sql.SQL(", ").join(map(sql.Identifier, columns)), table=sql.Identifier(table)),
            (max_id,),
        )
        fp.columns[table], fp.max_ids[table] = columns, max_id
        fp.counts[table], fp.checksums[table] = cur.fetchone()
    return fp


def table_filenode(cur, table: str = "execution_tasks") -> int:
    """The table's file on disk: a rewrite (e.g. a volatile default) would change it."""
    cur.execute("SELECT pg_relation_filenode(%s::regclass)", (table,))
    return cur.fetchone()[0]


SMOKE_MODEL = "smoke-check-model"


def smoke_check(dsn: str, before: Fingerprint, *, exact: bool) -> list[str]:
    """Problems found, each naming what failed; [] when the migrated schema works."""
    import psycopg2

    problems = []
    try:
        problems += _enqueue_claim_complete(dsn)
    except Exception as exc:  # any failure of the queue on the new schema is the finding
        problems.append(f"the task queue failed on the migrated schema: {type(exc).__name__}: {exc}")
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            after = fingerprint(cur, before)
        conn.rollback()
    finally:
        conn.close()
    for table in SMOKE_TABLES:
        if exact and after.counts[table] != before.counts[table]:
            problems.append(f"{table}: {before.counts[table]} rows before, {after.counts[table]} after")
        elif after.counts[table] < before.counts[table]:
            problems.append(f"{table}: {before.counts[table] - after.counts[table]} existing rows are gone")
        if exact and after.checksums[table] != before.checksums[table]:
            problems.append(
                f"{table}: content checksum {before.checksums[table]} before, {after.checksums[table]} after"
            )
    return problems


class _RolledBack(Exception):
    """Ends the smoke transaction: nothing it wrote survives."""


def _enqueue_claim_complete(dsn: str) -> list[str]:
    """A task with ai_model goes through the task-batch queue's own enqueue, claim and
    completion, in one transaction that is then rolled back."""
    from include.execution.task_queue import Completion, TaskQueue

    problems: list[str] = []
    with TaskQueue(dsn, owner="smoke-check") as queue:
        try:
            with queue.transaction():
                task_id = queue.enqueue(
                    "implementation",
                    {"prompt": "smoke check", "ai_model": SMOKE_MODEL},
                    ai_model=SMOKE_MODEL,
                    priority=32767,
                )
                claimed = queue.claim(1)
                if [(t.id, t.ai_model) for t in claimed] != [(task_id, SMOKE_MODEL)]:
                    problems.append(
                        f"the claim returned {[(t.id, t.ai_model) for t in claimed]}, "
                        f"expected the smoke task {task_id} with ai_model {SMOKE_MODEL}"
                    )
                elif queue.complete([Completion(claimed[0], {"ok": True}, 0)]) != [task_id]:
                    problems.append(f"completing the smoke task {task_id} with its lease token was refused")
                raise _RolledBack
        except _RolledBack:
            pass
    return problems
