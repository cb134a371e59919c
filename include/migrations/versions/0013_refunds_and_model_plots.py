"""Refunded amounts on payments, and durable model plots.

Revision ID: 0013
Revises: 0012

- `payments.refunded_cents` (bigint, default 0): what Stripe has refunded of the charge, in the
  smallest currency unit, so ROI counts net revenue. `payments_refunded_within_amount` keeps it
  between 0 and `amount_cents`.
- `model_version_plots`: each model version's ROC and calibration PNGs, drawn at evaluation,
  kept in the database so the dashboard shows them after the object store lost them (the local
  stack's moto keeps S3 in memory).

Zero-downtime: the columns are added without a rewrite (a constant default, a nullable column);
the CHECK is added NOT VALID (a brief lock, no scan) and validated apart (SHARE UPDATE EXCLUSIVE:
writers go on). Idempotent (IF NOT EXISTS and catalog checks), so a stopped run resumes; the
downgrade drops what this revision added. Self-contained: it imports nothing from the code.
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {}

REFUNDED = "payments_refunded_within_amount"
EXISTS = f"SELECT 1 FROM pg_constraint WHERE conrelid = 'payments'::regclass AND conname = '{REFUNDED}'"  # noqa: S608 (constants)

COLUMNS = """
ALTER TABLE payments ADD COLUMN IF NOT EXISTS refunded_cents bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS model_version_plots (
    model_version_id bigint      NOT NULL REFERENCES model_versions (id) ON DELETE CASCADE,
    name             text        NOT NULL CHECK (name IN ('roc', 'calibration')),
    png              bytea       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version_id, name)
);
"""

DOWNGRADE = f"""
DROP TABLE IF EXISTS model_version_plots;
ALTER TABLE payments DROP CONSTRAINT IF EXISTS {REFUNDED};
ALTER TABLE payments DROP COLUMN IF EXISTS refunded_cents;
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(COLUMNS)
        op.execute(
            f"DO $$ BEGIN IF NOT EXISTS ({EXISTS}) THEN ALTER TABLE payments ADD CONSTRAINT {REFUNDED}"
            " CHECK (refunded_cents BETWEEN 0 AND amount_cents) NOT VALID; END IF; END $$"
        )
        op.execute(
            f"DO $$ BEGIN IF EXISTS ({EXISTS} AND NOT convalidated) THEN"
            f" ALTER TABLE payments VALIDATE CONSTRAINT {REFUNDED}; END IF; END $$"
        )


def downgrade() -> None:
    op.execute(DOWNGRADE)
