"""Leading indicators: one value per day, indicator and dimension, and the trend changes found.

Revision ID: 0005
Revises: 0004

New tables only (nothing existing is altered), so the upgrade takes no lock on live tables:

- indicator_values: the daily series (task failure rate, p95 duration per type, PSI per
  feature...), upserted on (day, indicator, dimension) so a re-run changes nothing; an input
  that does not exist yet leaves the day without a row (absent, not zero);
- indicator_changes: each change point the CUSUM detector signalled, stored once, so a
  re-run does not alert twice.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

squawk_exceptions = {}

UPGRADE = """
CREATE TABLE indicator_values (
    day         date             NOT NULL,
    indicator   text             NOT NULL,
    dimension   text             NOT NULL DEFAULT '',
    value       double precision NOT NULL,
    sample_size bigint           CHECK (sample_size >= 0),
    threshold   double precision,
    computed_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (day, indicator, dimension)
);
COMMENT ON TABLE indicator_values IS
    'Daily leading indicators (drift, trust inflation, speed), one row per day, indicator and dimension.';
CREATE INDEX indicator_values_series_idx ON indicator_values (indicator, dimension, day);

CREATE TABLE indicator_changes (
    indicator      text             NOT NULL,
    dimension      text             NOT NULL DEFAULT '',
    day            date             NOT NULL,
    direction      text             NOT NULL CHECK (direction IN ('up', 'down')),
    reference_mean double precision NOT NULL,
    score          double precision NOT NULL,
    detected_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (indicator, dimension, day)
);
COMMENT ON TABLE indicator_changes IS 'Trend changes signalled by the CUSUM detector over indicator_values.';
"""

DOWNGRADE = """
DROP TABLE IF EXISTS indicator_changes;
DROP TABLE IF EXISTS indicator_values;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
