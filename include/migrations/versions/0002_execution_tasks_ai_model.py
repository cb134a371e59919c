"""execution_tasks.ai_model: the column the code writes, added without blocking writers.

Revision ID: 0002
Revises: 0001

Zero-downtime steps, each short:

1. add the column, nullable and without a default (a catalog-only change: no table rewrite),
   and a format CHECK marked NOT VALID (new rows are checked, old ones are not scanned under
   the exclusive lock);
2. backfill it from `payload->>'ai_model'` in id ranges, each range its own transaction, so a
   crash resumes where it stopped (done rows no longer match `ai_model IS NULL`); payload
   values that break the format stay NULL rather than failing the batch. The backfill yields
   to the application (include.migrations.throttle, `Settings.backfill_*`): each range aims at
   a target duration, and while other sessions are at work it pauses after each range, longer
   under contention, until its pause budget is spent;
3. VACUUM (ANALYZE) the table at autovacuum's pace, then VALIDATE the constraint (both
   SHARE UPDATE EXCLUSIVE: writers go on); the VACUUM makes the validation's scan lighter;
4. build the index CONCURRENTLY, outside any transaction, without parallel workers (on a small
   server they would take every core from the writers for the build); an invalid leftover of a
   crashed build is dropped first.

Every step is idempotent, so a retried or resumed run converges; the downgrade removes
exactly these three objects and tolerates a half-applied upgrade. The run's batches, final
batch size, pause seconds and step durations are logged and kept in
`include.migrations.throttle.last_report()`.
"""

import time

from alembic import op

from include.migrations import Settings
from include.migrations import throttle as throttling

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


# Before VALIDATE: clear the backfill's dead row versions and set the visibility map, so that
# VALIDATE and the index build scan a clean table (measured: VALIDATE about a fifth shorter and
# lighter on the writers), and autovacuum has nothing left to start on this table in the middle
# of them. At autovacuum's own pace (the cost delay a manual VACUUM lacks) and without a
# statement timeout: it takes as long as the table needs, and it holds only SHARE UPDATE
# EXCLUSIVE, which no insert, update or read waits on; for the same reason it may wait longer
# than the session's lock timeout for an autovacuum already on the table, which PostgreSQL
# cancels for it after deadlock_timeout (1 s by default).
VACUUM_LOCK_TIMEOUT_MS = 10_000


def vacuum_steps(settings: Settings) -> list[str]:
    return [
        "SET vacuum_cost_delay = '2ms'",
        f"SET lock_timeout = '{max(VACUUM_LOCK_TIMEOUT_MS, int(settings.lock_timeout_ms))}ms'",
        "SET statement_timeout = 0",
        "VACUUM (ANALYZE) execution_tasks",
        "RESET vacuum_cost_delay",
        *settings.session_sql().split(";\n"),
    ]


# The index build alone on this session; parallel workers would share its work out over more
# cores, which on a small server are the ones the writers need.
LIGHT_INDEX_BUILD = "SET max_parallel_maintenance_workers = 0"
RESET_INDEX_BUILD = "RESET max_parallel_maintenance_workers"


def _backfill(config: throttling.ThrottleConfig) -> throttling.Report | None:
    context = op.get_context()
    if context.as_sql:
        op.execute(
            "-- repeated for every id range until max(id); each range commits on its own\n"
            f"-- throttled: the first range spans {config.initial_batch} ids, later ones aim at "
            f"{config.target_batch_s:g} s each ({config.min_batch} to {config.max_batch} ids);\n"
            f"-- while other sessions are active each range is followed by a pause of {config.nice_ratio:g}x "
            f"its duration,\n-- doubled under contention up to {config.max_pause_s:g} s; at most "
            f"{config.budget_s:g} s of pauses in all, then full speed"
        )
        op.execute(BACKFILL_BATCH % {"lo": 1, "size": config.initial_batch})
        return None
    bind = op.get_bind()
    lo, hi = bind.exec_driver_sql(
        "SELECT coalesce(min(id), 1), coalesce(max(id), 0) FROM execution_tasks"
    ).one()

    def batch(lo: int, size: int) -> throttling.Observation:
        start = time.perf_counter()
        rows = bind.exec_driver_sql(BACKFILL_BATCH % {"lo": int(lo), "size": int(size)}).rowcount
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        active, waiting = bind.exec_driver_sql(throttling.PROBE_SQL).one()
        return throttling.Observation(seconds, size, rows, active, waiting, time.perf_counter() - start)

    # autocommit (the caller's block): every range is its own transaction
    return throttling.run(throttling.Throttle(config, "revision 0002 backfill"), int(lo), int(hi), batch)


def _timed(report: throttling.Report | None, phase: str, *statements: str) -> None:
    start = time.perf_counter()
    for statement in statements:
        op.execute(statement)
    if report is not None:
        throttling.perf_phase(report, phase, start)


def upgrade() -> None:
    settings = op.get_context().config.attributes.get("settings") or Settings()
    config = throttling.config_from(settings)
    op.execute(ADD_COLUMN)
    with op.get_context().autocommit_block():
        start = time.perf_counter()
        report = _backfill(config)
        if report is not None:
            throttling.perf_phase(report, "backfill", start)
        _timed(report, "vacuum", *vacuum_steps(settings))
        _timed(report, "validate", VALIDATE)
        _timed(report, "index", DROP_INVALID_INDEX, LIGHT_INDEX_BUILD, CREATE_INDEX, RESET_INDEX_BUILD)
    if report is not None:
        throttling.record(report)


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
