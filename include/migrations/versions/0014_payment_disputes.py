"""Stripe disputes of payments, and what they withhold.

Revision ID: 0014
Revises: 0013

- `payment_disputes`: each Stripe dispute (keyed by its id) with its charge, amount, currency,
  status and reason, as the ROI sync last read it (indexed by charge).
- `payments.disputed_cents` (bigint, default 0): what the charge's disputes withhold now (an
  open dispute or a lost one; a won one gives the money back, an inquiry withholds nothing), in
  the smallest currency unit, so ROI counts net revenue. `payments_disputed_within_amount` keeps
  it between 0 and `amount_cents`.

Zero-downtime: the column is added without a rewrite (a constant default); the table is new
(its index built concurrently all the same); the CHECK is added NOT VALID (a brief lock, no scan)
and validated apart (SHARE UPDATE EXCLUSIVE: writers go on). Idempotent (IF NOT EXISTS and
catalog checks), so a stopped run resumes; the downgrade drops what this revision added.
Self-contained: it imports nothing from the code.
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {}

DISPUTED = "payments_disputed_within_amount"
EXISTS = f"SELECT 1 FROM pg_constraint WHERE conrelid = 'payments'::regclass AND conname = '{DISPUTED}'"  # noqa: S608 (constants)

COLUMNS = """
ALTER TABLE payments ADD COLUMN IF NOT EXISTS disputed_cents bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS payment_disputes (
    stripe_dispute_id text        PRIMARY KEY,
    stripe_charge_id  text        NOT NULL,
    amount_cents      bigint      NOT NULL CHECK (amount_cents > 0),
    currency          text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('warning_needs_response',
                          'warning_under_review', 'warning_closed', 'needs_response',
                          'under_review', 'won', 'lost')),
    reason            text        NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
"""
# its own statement: CONCURRENTLY cannot run in a transaction block
INDEX = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS payment_disputes_charge_idx"
    " ON payment_disputes (stripe_charge_id)"
)

DOWNGRADE = f"""
DROP TABLE IF EXISTS payment_disputes;
ALTER TABLE payments DROP CONSTRAINT IF EXISTS {DISPUTED};
ALTER TABLE payments DROP COLUMN IF EXISTS disputed_cents;
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(COLUMNS)
        op.execute(INDEX)
        op.execute(
            f"DO $$ BEGIN IF NOT EXISTS ({EXISTS}) THEN ALTER TABLE payments ADD CONSTRAINT {DISPUTED}"
            " CHECK (disputed_cents BETWEEN 0 AND amount_cents) NOT VALID; END IF; END $$"
        )
        op.execute(
            f"DO $$ BEGIN IF EXISTS ({EXISTS} AND NOT convalidated) THEN"
            f" ALTER TABLE payments VALIDATE CONSTRAINT {DISPUTED}; END IF; END $$"
        )


def downgrade() -> None:
    op.execute(DOWNGRADE)
