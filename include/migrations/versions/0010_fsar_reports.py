"""FSAR proposal reports, and the block they put on execution while one is open.

Revision ID: 0010
Revises: 0009

A new table only (nothing existing is altered), so the upgrade takes no lock on live tables:

- fsar_reports: every report the audit issued or fsar_intake accepted (include.audit.fsar's
  record as JSON, and its Markdown), who filed it, the gates its findings named, whether it names
  the schema, and how it closed (by which audit, or by whom and why). `block_alerted_at` records
  that the block was alerted, so each report alerts once, not once per blocked run.
- fsar_reports_blocking_idx: a partial index over the open reports that block execution, the
  only rows the block check reads (usually none: an empty index, one page).

The queue workers' role (app_worker) reads the table (include.migrations.db_roles.WORKER_GRANTS,
granted after this revision by include.migrations.env): each claim of a drain checks the block,
in the drain's own session.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {
    "prefer-bigint-over-int": "severity is held to 0-100 by its CHECK; no id or counter is an integer "
    "(reviewed: platform team)",
}

UPGRADE = """
CREATE TABLE IF NOT EXISTS fsar_reports (
    id               text        PRIMARY KEY
        CHECK (id ~ '^fsar_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    issued_at        timestamptz NOT NULL,
    severity         integer     NOT NULL CHECK (severity BETWEEN 0 AND 100),
    block_execution  boolean     NOT NULL,
    task_type        text        NOT NULL,
    source           text        NOT NULL CHECK (source IN ('audit', 'external')),
    filed_by         text        NOT NULL,
    audit_run_id     bigint      REFERENCES audit_runs (id) ON DELETE SET NULL,
    gates            text[]      NOT NULL DEFAULT '{}',
    names_schema     boolean     NOT NULL DEFAULT false,
    report           jsonb       NOT NULL,
    markdown         text        NOT NULL,
    s3_prefix        text,
    status           text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_at        timestamptz,
    closed_by        text,
    closed_by_audit_run_id bigint REFERENCES audit_runs (id) ON DELETE SET NULL,
    resolution       text,
    block_alerted_at timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fsar_reports_closed_with_a_reason
        CHECK (status = 'open'
               OR (closed_at IS NOT NULL AND closed_by IS NOT NULL AND resolution IS NOT NULL))
);
COMMENT ON TABLE fsar_reports IS
    'FSAR proposal reports (audit verdicts, external reports); an open blocking one stops execution.';
CREATE INDEX IF NOT EXISTS fsar_reports_blocking_idx ON fsar_reports (severity DESC, issued_at)
    WHERE status = 'open' AND block_execution;
CREATE INDEX IF NOT EXISTS fsar_reports_recent_idx ON fsar_reports (recorded_at DESC);
"""

DOWNGRADE = "DROP TABLE IF EXISTS fsar_reports;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
