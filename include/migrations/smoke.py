"""Smoke checks shared by the rehearsal on a clone and the verification in production.

`fingerprint` records, before a migration, what must survive it: row counts of the critical
tables and content checksums over the columns that existed then. `smoke_check` runs after
it: a task carrying `ai_model` is written and read back, the task-batch queue's own queries
run, and the fingerprint is compared. Everything it writes is rolled back.

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
            sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(ROW({cols})::text, 0)), 0)::text "
                    "FROM {table} WHERE id <= %s").format(  # fmt: skip
                cols=sql.SQL(", ").join(map(sql.Identifier, columns)), table=sql.Identifier(table)
            ),
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
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                problems += _write_and_claim(cur)
            except psycopg2.Error as exc:
                problems.append(f"smoke insert/claim of a task with ai_model failed: {exc.pgerror or exc}")
            finally:
                conn.rollback()
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
            problems.append(f"{table}: content checksum {before.checksums[table]} before, {after.checksums[table]} after")
    return problems


def _write_and_claim(cur) -> list[str]:
    """A task with ai_model goes through insert, claim and completion the way task_batch does."""
    cur.execute(
        "INSERT INTO execution_tasks (task_type, payload, ai_model, priority) "
        "VALUES ('implementation', jsonb_build_object('prompt', 'smoke check', 'ai_model', %s), %s, 32767) "
        "RETURNING id",
        (SMOKE_MODEL, SMOKE_MODEL),
    )
    task_id = cur.fetchone()[0]
    cur.execute(
        """
        UPDATE execution_tasks t
           SET status = 'running', lease_owner = 'smoke-check', lease_token = gen_random_uuid(),
               lease_expires_at = now() + interval '1 minute', attempts = attempts + 1, started_at = now()
          FROM (SELECT id FROM execution_tasks WHERE status = 'queued' AND available_at <= now()
                 ORDER BY priority DESC, available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) ready
         WHERE t.id = ready.id
        RETURNING t.id, t.ai_model, t.lease_token
        """
    )
    claimed = cur.fetchone()
    if claimed is None or claimed[0] != task_id or claimed[1] != SMOKE_MODEL:
        return [f"the claim query returned {claimed!r}, expected the smoke task {task_id} with ai_model {SMOKE_MODEL}"]
    cur.execute(
        "UPDATE execution_tasks SET status = 'succeeded', result = '{}'::jsonb, finished_at = now(), "
        "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = %s AND lease_token = %s",
        (task_id, claimed[2]),
    )
    if cur.rowcount != 1:
        return [f"completing the smoke task {task_id} with its lease token updated {cur.rowcount} rows"]
    return []
