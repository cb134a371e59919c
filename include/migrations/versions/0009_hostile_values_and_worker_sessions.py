"""Bounds on values that broke things, and where the workers record the role they run as.

Revision ID: 0009
Revises: 0008

- `execution_tasks.ai_model` loses `/` from its format (`^[a-z0-9][a-z0-9._:-]*$`, at most 64):
  the executor client puts the model in a URL path, where `a/../../admin/stats` climbed out of
  `/v1/models/`. The first character stays alphanumeric, so no name is `.` or `..` either.
- `execution_tasks.max_attempts` is at most 100 (`execution_tasks_max_attempts_bounded`): the
  retry backoff raised 2 to the attempt, and one task past attempt 1024 failed the statement
  that settles and claims a whole batch.
- `offers.discount_pct` stays below 100 (`offers_discount_pct_below_100`): ROI derives an offer's
  cost from what was paid, `amount * pct / (100 - pct)`, which a free offer divides by zero.
- `worker_sessions`: one row per (role, login) that a drain or the reaper ran as, with when it
  was last seen; the audit's `security_worker_role_is_dml_only` reads it. The workers' grants on
  it come with the revision (include.migrations.env grants `WORKER_GRANTS` after each revision).

A row that breaks a new bound stops the revision before anything changes, naming how many rows
and the query that finds them: the data is the operator's to fix (fail the tasks, retire the
offer), never silently rewritten here.

Zero-downtime, each step short and idempotent (a resumed run converges): each CHECK is added
NOT VALID (a brief lock, no scan) and validated apart (SHARE UPDATE EXCLUSIVE: writers go on);
the ai_model format is replaced as revision 0008 did it, the new CHECK validated beside the old
before the old is dropped and the new one takes its name. The downgrade restores 0008's format
the same way and drops what this revision added. Self-contained: it imports nothing from the
code that may change after it.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {
    "ban-drop-constraint": "drops the ai_model format CHECK only once a validated CHECK of the "
    "stricter format stands beside it, so no row is unchecked at any moment (reviewed: platform team)",
}

FORMAT = "execution_tasks_ai_model_format"
FORMAT_NEXT = "execution_tasks_ai_model_format_next"
NO_SLASH = "ai_model ~ '^[a-z0-9][a-z0-9._:-]*$' AND char_length(ai_model) <= 64"
WITH_SLASH = "ai_model ~ '^[a-z0-9][a-z0-9._:/-]*$' AND char_length(ai_model) <= 64"  # revision 0008's
NO_SLASH_MARKER, WITH_SLASH_MARKER = "._:-]", "._:/-]"  # text only that form's definition holds

MAX_ATTEMPTS = "execution_tasks_max_attempts_bounded"
DISCOUNT = "offers_discount_pct_below_100"
BOUNDS = {  # constraint -> (table, check)
    MAX_ATTEMPTS: ("execution_tasks", "max_attempts BETWEEN 1 AND 100"),
    DISCOUNT: ("offers", "discount_pct < 100"),
}

# what must hold before any step: (what, table, rows that break it)
REFUSE_IF_ANY = (
    ("ai_model with a path character or outside the format", "execution_tasks", f"NOT ({NO_SLASH})"),
    ("max_attempts over 100", "execution_tasks", "max_attempts > 100"),
    ("discount_pct of 100 or more", "offers", "discount_pct >= 100"),
)

WORKER_SESSIONS = """
CREATE TABLE IF NOT EXISTS worker_sessions (
    db_role      text        NOT NULL,
    login_role   text        NOT NULL,
    last_owner   text        NOT NULL,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT worker_sessions_pkey PRIMARY KEY (db_role, login_role)
);
COMMENT ON TABLE worker_sessions IS
    'The database roles the queue workers ran as (current_user, session_user), last seen when.';
"""


def _exists(table: str, name: str) -> str:
    return f"SELECT FROM pg_constraint WHERE conrelid = '{table}'::regclass AND conname = '{name}'"


def refuse_rows_out_of_bounds() -> None:
    for what, table, where in REFUSE_IF_ANY:
        query = f"SELECT count(*) FROM {table} WHERE {where}"  # noqa: S608 (module constants)
        op.execute(f"""
DO $$
DECLARE n bigint;
BEGIN
    {query} INTO n;
    IF n > 0 THEN
        RAISE EXCEPTION 'revision 0009: % row(s) of {table} have {what}; fix them first (find them with: %)',
            n, $q${query.replace("count(*)", "*")}$q$;
    END IF;
END $$
""")


def replace_format(check: str, marker: str, other_marker: str) -> None:
    """Make `FORMAT` the CHECK `check`; a leftover `FORMAT_NEXT` of the other direction (a run of
    it that stopped halfway) is dropped first."""
    op.execute(f"""
DO $$
BEGIN
    IF EXISTS ({_exists("execution_tasks", FORMAT_NEXT)}
            AND position('{other_marker}' IN pg_get_constraintdef(oid)) > 0) THEN
        ALTER TABLE execution_tasks DROP CONSTRAINT {FORMAT_NEXT};
    END IF;
    IF NOT EXISTS ({_exists("execution_tasks", FORMAT_NEXT)})
            AND NOT EXISTS ({_exists("execution_tasks", FORMAT)}
            AND position('{marker}' IN pg_get_constraintdef(oid)) > 0) THEN
        ALTER TABLE execution_tasks ADD CONSTRAINT {FORMAT_NEXT} CHECK ({check}) NOT VALID;
    END IF;
END $$
""")
    op.execute(
        f"DO $$ BEGIN IF EXISTS ({_exists('execution_tasks', FORMAT_NEXT)}) THEN"
        f" ALTER TABLE execution_tasks VALIDATE CONSTRAINT {FORMAT_NEXT}; END IF; END $$"
    )
    op.execute(f"""
DO $$
BEGIN
    IF EXISTS ({_exists("execution_tasks", FORMAT_NEXT)}) THEN
        ALTER TABLE execution_tasks DROP CONSTRAINT IF EXISTS {FORMAT};
        ALTER TABLE execution_tasks RENAME CONSTRAINT {FORMAT_NEXT} TO {FORMAT};
    END IF;
END $$
""")


def upgrade() -> None:
    refuse_rows_out_of_bounds()
    with op.get_context().autocommit_block():
        replace_format(NO_SLASH, NO_SLASH_MARKER, WITH_SLASH_MARKER)
        for name, (table, check) in BOUNDS.items():
            op.execute(
                f"DO $$ BEGIN IF NOT EXISTS ({_exists(table, name)}) THEN"
                f" ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({check}) NOT VALID; END IF; END $$"
            )
            op.execute(
                f"DO $$ BEGIN IF EXISTS ({_exists(table, name)} AND NOT convalidated) THEN"
                f" ALTER TABLE {table} VALIDATE CONSTRAINT {name}; END IF; END $$"
            )
    op.execute(WORKER_SESSIONS)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS worker_sessions")
    for name, (table, _) in BOUNDS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
    with op.get_context().autocommit_block():
        replace_format(WITH_SLASH, WITH_SLASH_MARKER, NO_SLASH_MARKER)
