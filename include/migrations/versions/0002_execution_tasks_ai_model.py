"""execution_tasks.ai_model: the column the code writes, added without blocking writers.

Revision ID: 0002
Revises: 0001

Zero-downtime steps, each short:

1. add the column, nullable and without a default (a catalog-only change: no table rewrite),
   and a format CHECK marked NOT VALID (new rows are checked, old ones are not scanned under
   the exclusive lock);
2. backfill it from `payload->>'ai_model'` in id ranges, each range its own transaction, so a
   crash resumes where it stopped (done rows no longer match `ai_model IS NULL`); payload
   values that break the format stay NULL rather than failing the batch;
3. VALIDATE the constraint (SHARE UPDATE EXCLUSIVE: writers go on);
4. build the index CONCURRENTLY, outside any transaction; an invalid leftover of a crashed
   build is dropped first.

Every step is idempotent, so a retried or resumed run converges; the downgrade removes
exactly these three objects and tolerates a half-applied upgrade.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {
    "ban-drop-constraint": "drops only the NOT VALID check this revision adds, so that a resumed "
    "run re-creates it; nothing relies on it before the revision completes (reviewed: platform team)",
}

AI_MODEL_FORMAT = "^[a-z0-9][a-z0-9._:/-]{0,63}$"

ADD_COLUMN = f"""
ALTER TABLE execution_tasks ADD COLUMN IF NOT EXISTS ai_model text;
ALTER TABLE execution_tasks
    DROP CONSTRAINT IF EXISTS execution_tasks_ai_model_format,
    ADD CONSTRAINT execution_tasks_ai_model_format
        CHECK (ai_model ~ '{AI_MODEL_FORMAT}') NOT VALID;
COMMENT ON COLUMN execution_tasks.ai_model IS
    'The AI model that executes the task (names the executor and its cache namespace).';
"""

# One batch: rows [lo, lo + size) by primary key. Offline (--sql) output shows it with the
# first range; online it runs once per range, each in its own transaction.
BACKFILL_BATCH = f"""
UPDATE execution_tasks
   SET ai_model = payload->>'ai_model'
 WHERE id >= %(lo)s AND id < %(lo)s + %(size)s
   AND ai_model IS NULL
   AND payload->>'ai_model' ~ '{AI_MODEL_FORMAT}'
"""  # noqa: S608 (interpolates a module constant only)

VALIDATE = "ALTER TABLE execution_tasks VALIDATE CONSTRAINT execution_tasks_ai_model_format"

DROP_INVALID_INDEX = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass('execution_tasks_ai_model_idx')
               AND NOT indisvalid) THEN
        DROP INDEX execution_tasks_ai_model_idx;
    END IF;
END $$
"""

CREATE_INDEX = """
CREATE INDEX CONCURRENTLY IF NOT EXISTS execution_tasks_ai_model_idx
    ON execution_tasks (ai_model, finished_at) WHERE ai_model IS NOT NULL
"""


def _backfill(batch_size: int) -> None:
    context = op.get_context()
    if context.as_sql:
        op.execute("-- repeated for every id range until max(id); each range commits on its own")
        op.execute(BACKFILL_BATCH % {"lo": 1, "size": batch_size})
        return
    bind = op.get_bind()
    lo, hi = bind.exec_driver_sql(
        "SELECT coalesce(min(id), 1), coalesce(max(id), 0) FROM execution_tasks"
    ).one()
    while lo <= hi:  # autocommit (the caller's block): every range is its own transaction
        bind.exec_driver_sql(BACKFILL_BATCH % {"lo": int(lo), "size": batch_size})
        lo += batch_size


def upgrade() -> None:
    batch_size = int(op.get_context().config.attributes.get("backfill_batch_size", 10_000))
    op.execute(ADD_COLUMN)
    with op.get_context().autocommit_block():
        _backfill(batch_size)
        op.execute(VALIDATE)
        op.execute(DROP_INVALID_INDEX)
        op.execute(CREATE_INDEX)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        # an invalid leftover blocks nothing and would make DROP ... CONCURRENTLY wait on
        # the very transactions that broke its build: drop it plainly
        op.execute(DROP_INVALID_INDEX)
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS execution_tasks_ai_model_idx")
    op.execute("""
        ALTER TABLE execution_tasks DROP CONSTRAINT IF EXISTS execution_tasks_ai_model_format;
        ALTER TABLE execution_tasks DROP COLUMN IF EXISTS ai_model;
    """)
