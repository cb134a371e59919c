"""execution_tasks: the same ai_model format CHECK, about 13 times cheaper to evaluate.

Revision ID: 0008
Revises: 0007

PostgreSQL evaluates every CHECK on every new row version: a claim, a completion, each retry.
Revision 0002's `ai_model ~ '^[a-z0-9][a-z0-9._:/-]{0,63}$'` spells the length cap as a bounded
repeat, which PostgreSQL's regex engine expands into 64 states and builds its DFA for at each
call: 2.4 us per evaluation here, about a tenth of the database's CPU in the queue benchmark.
The constraint becomes `ai_model ~ '^[a-z0-9][a-z0-9._:/-]*$' AND char_length(ai_model) <= 64`:
the same values pass (every allowed character is one byte, and NULL passes both), at 0.18 us.

Zero-downtime, each step short and idempotent (a resumed run converges):

1. add the new CHECK as `execution_tasks_ai_model_format_next`, NOT VALID (a brief lock, no
   scan), unless the constraint already has the wanted form;
2. VALIDATE it (SHARE UPDATE EXCLUSIVE: writers go on while it reads the table);
3. in one transaction, drop the old constraint and give the new one its name, so code and
   alerts that name `execution_tasks_ai_model_format` keep working.

The downgrade does the same with the two forms exchanged. Self-contained, like every revision:
it imports nothing from the code that may change after it.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {
    "ban-drop-constraint": "drops the ai_model format CHECK only once a validated CHECK of the same "
    "format stands beside it, so no row is unchecked at any moment (reviewed: platform team)",
}

NAME = "execution_tasks_ai_model_format"
NEXT = "execution_tasks_ai_model_format_next"
BOUNDED = "ai_model ~ '^[a-z0-9][a-z0-9._:/-]{0,63}$'"  # revision 0002's form
CAPPED = "ai_model ~ '^[a-z0-9][a-z0-9._:/-]*$' AND char_length(ai_model) <= 64"


def replace_check(check: str, form_marker: str) -> None:
    """Make `NAME` the CHECK (`check`); `form_marker` is text only the wanted form contains."""

    def exists(name: str) -> str:
        return (
            f"SELECT FROM pg_constraint WHERE conrelid = 'execution_tasks'::regclass AND conname = '{name}'"
        )

    with op.get_context().autocommit_block():
        op.execute(f"""
DO $$
BEGIN
    IF NOT EXISTS ({exists(NEXT)}) AND NOT EXISTS ({exists(NAME)}
            AND position('{form_marker}' IN pg_get_constraintdef(oid)) > 0) THEN
        ALTER TABLE execution_tasks ADD CONSTRAINT {NEXT} CHECK ({check}) NOT VALID;
    END IF;
END $$
""")
        op.execute(
            f"DO $$ BEGIN IF EXISTS ({exists(NEXT)}) THEN"
            f" ALTER TABLE execution_tasks VALIDATE CONSTRAINT {NEXT}; END IF; END $$"
        )
        op.execute(f"""
DO $$
BEGIN
    IF EXISTS ({exists(NEXT)}) THEN
        ALTER TABLE execution_tasks DROP CONSTRAINT IF EXISTS {NAME};
        ALTER TABLE execution_tasks RENAME CONSTRAINT {NEXT} TO {NAME};
    END IF;
END $$
""")


def upgrade() -> None:
    replace_check(CAPPED, "char_length")


def downgrade() -> None:
    replace_check(BOUNDED, "{0,63}")
