"""task_batch's measurements: per-type figures of each run, and the bottleneck reports.

Revision ID: 0003
Revises: 0002

Two new tables and nothing else: no lock on an existing table, so it applies online.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Reviewed lint exceptions (rule -> why it is safe here); see include.migrations.lint.
squawk_exceptions = {}

UPGRADE = """
CREATE TABLE IF NOT EXISTS task_batch_metrics (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            text             NOT NULL,
    task_type         text             NOT NULL,
    measured_at       timestamptz      NOT NULL DEFAULT now(),
    tasks             bigint           NOT NULL CHECK (tasks >= 0),
    failures          bigint           NOT NULL CHECK (failures >= 0),
    retries           bigint           NOT NULL DEFAULT 0 CHECK (retries >= 0),
    avg_ms            double precision NOT NULL,
    p50_ms            double precision NOT NULL,
    p95_ms            double precision NOT NULL,
    queue_wait_p50_ms double precision NOT NULL,
    queue_wait_p95_ms double precision NOT NULL,
    queue_wait_ms_sum double precision NOT NULL,
    exec_ms_sum       double precision NOT NULL,
    cache_hits        bigint           NOT NULL DEFAULT 0 CHECK (cache_hits >= 0),
    cache_hit_ms_sum  double precision NOT NULL DEFAULT 0,
    CONSTRAINT task_batch_metrics_run_type_key UNIQUE (run_id, task_type)
);
COMMENT ON TABLE task_batch_metrics IS
    'Per task type figures of each task_batch run (one row per run and type).';
CREATE INDEX IF NOT EXISTS task_batch_metrics_measured_idx ON task_batch_metrics (measured_at);

CREATE TABLE IF NOT EXISTS task_bottleneck_reports (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id          text             NOT NULL,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    window_start    timestamptz      NOT NULL,
    window_end      timestamptz      NOT NULL,
    task_type       text             NOT NULL,
    tasks           bigint           NOT NULL,
    failures        bigint           NOT NULL,
    avg_ms          double precision NOT NULL,
    p50_ms          double precision NOT NULL,
    p95_ms          double precision NOT NULL,
    queued_share    double precision NOT NULL CHECK (queued_share BETWEEN 0 AND 1),
    executing_share double precision NOT NULL CHECK (executing_share BETWEEN 0 AND 1),
    cache_hit_share double precision NOT NULL CHECK (cache_hit_share BETWEEN 0 AND 1),
    CONSTRAINT task_bottleneck_reports_run_type_key UNIQUE (run_id, task_type)
);
COMMENT ON TABLE task_bottleneck_reports IS 'Where execution time goes, per task type, over a window.';
"""

DOWNGRADE = """
DROP TABLE IF EXISTS task_bottleneck_reports;
DROP TABLE IF EXISTS task_batch_metrics;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
