"""execution_tasks: only finished rows in the (ai_model, finished_at) index.

Revision ID: 0007
Revises: 0006

Revision 0002 indexed (ai_model, finished_at) for every row that has an ai_model, queued and
running ones included. No claim or completion is a HOT update (each changes `status`, which the
partial indexes' predicates read), so each claim wrote an entry into this index too, dead as soon
as the task finished. Reports by model read finished rows only; the index becomes partial
WHERE ai_model IS NOT NULL AND finished_at IS NOT NULL (0006 did the same for
(task_type, finished_at)): a claim writes no entry here, a completion one. Queue benchmark, rows
with an ai_model, alternating revisions: 44.6-48.3 us of database CPU per task at 0006,
42.7-43.8 us at 0007.

Zero-downtime as 0006: the new index is built CONCURRENTLY (an invalid leftover of a crashed
build is dropped first) before the old one is dropped CONCURRENTLY; the downgrade does the
reverse. Every step is idempotent, so a resumed run converges. Self-contained, like every
revision: it imports nothing from the code that may change after it.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions: dict[str, str] = {}

NEW_IDX = "execution_tasks_ai_model_finished_idx"
OLD_IDX = "execution_tasks_ai_model_idx"


def drop_if_invalid(index: str) -> str:
    return f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_index WHERE indexrelid = to_regclass('{index}') AND NOT indisvalid) THEN
        DROP INDEX {index};
    END IF;
END $$
"""


def replace_index(build: str, where: str, drop: str) -> None:
    """Build index `build` on (ai_model, finished_at) WHERE `where`, then drop index `drop`."""
    with op.get_context().autocommit_block():
        op.execute(drop_if_invalid(build))
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {build} ON execution_tasks (ai_model, finished_at)"
            f" WHERE {where}"
        )
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {drop}")


def upgrade() -> None:
    replace_index(NEW_IDX, "ai_model IS NOT NULL AND finished_at IS NOT NULL", OLD_IDX)


def downgrade() -> None:
    replace_index(OLD_IDX, "ai_model IS NOT NULL", NEW_IDX)
