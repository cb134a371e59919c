"""Baseline: the platform's tables as they stood before the ai_model fix.

Revision ID: 0001
Revises:

`execution_tasks` has no `ai_model` column here on purpose: the code that writes it fails
against this schema until revision 0002 is applied through the db_migrate DAG.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE execution_tasks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_type        text        NOT NULL
        CONSTRAINT execution_tasks_task_type_check
        CHECK (task_type IN ('implementation', 'self_improvement', 'idea', 'idea_implementation')),
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'queued'
        CONSTRAINT execution_tasks_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
    priority         smallint    NOT NULL DEFAULT 0,
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    available_at     timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_token      uuid,
    lease_expires_at timestamptz,
    idempotency_key  text        CONSTRAINT execution_tasks_idempotency_key_key UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    duration_ms      integer     CHECK (duration_ms >= 0),
    result           jsonb,
    error            text,
    CONSTRAINT execution_tasks_lease_complete
        CHECK ((lease_token IS NULL) = (lease_expires_at IS NULL))
);
COMMENT ON TABLE execution_tasks IS 'The AI platform''s task queue; workers claim rows with leases.';
-- the claim query: ready rows by priority, then age
CREATE INDEX execution_tasks_ready_idx
    ON execution_tasks (priority DESC, available_at, id) WHERE status = 'queued';
-- the reaper: running rows whose lease has expired
CREATE INDEX execution_tasks_lease_idx
    ON execution_tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX execution_tasks_type_finished_idx ON execution_tasks (task_type, finished_at);

CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email          text        NOT NULL CONSTRAINT users_email_key UNIQUE,
    segment        text        NOT NULL,
    signup_channel text        NOT NULL,
    country        char(2)     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE offers (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code             text         NOT NULL CONSTRAINT offers_code_key UNIQUE,
    product          text         NOT NULL,
    discount_pct     numeric(5,2) NOT NULL CHECK (discount_pct >= 0 AND discount_pct <= 100),
    segment          text,
    status           text         NOT NULL DEFAULT 'draft'
        CHECK (status IN ('draft', 'active', 'retired')),
    stripe_coupon_id text         CONSTRAINT offers_stripe_coupon_id_key UNIQUE,
    model_version_id bigint,
    valid_from       timestamptz,
    valid_until      timestamptz,
    created_at       timestamptz  NOT NULL DEFAULT now(),
    CHECK (valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from)
);

CREATE TABLE user_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id),
    offer_id     bigint      REFERENCES offers (id),
    event_type   text        NOT NULL
        CHECK (event_type IN ('visit', 'impression', 'click', 'redemption', 'purchase')),
    channel      text        NOT NULL,
    amount_cents bigint      CHECK (amount_cents >= 0),
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX user_events_user_time_idx ON user_events (user_id, occurred_at);
CREATE INDEX user_events_offer_type_idx ON user_events (offer_id, event_type) WHERE offer_id IS NOT NULL;

CREATE TABLE payments (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stripe_payment_id text        NOT NULL CONSTRAINT payments_stripe_payment_id_key UNIQUE,
    user_id           bigint      NOT NULL REFERENCES users (id),
    offer_id          bigint      REFERENCES offers (id),
    amount_cents      bigint      NOT NULL CHECK (amount_cents >= 0),
    currency          char(3)     NOT NULL DEFAULT 'usd',
    status            text        NOT NULL CHECK (status IN ('succeeded', 'refunded', 'failed')),
    created_at        timestamptz NOT NULL
);
CREATE INDEX payments_user_idx ON payments (user_id);
CREATE INDEX payments_offer_idx ON payments (offer_id) WHERE offer_id IS NOT NULL;

CREATE TABLE model_versions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name       text        NOT NULL,
    version          integer     NOT NULL,
    status           text        NOT NULL DEFAULT 'candidate'
        CHECK (status IN ('candidate', 'champion', 'retired', 'rejected')),
    metrics          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    artifact_uri     text,
    artifact_sha256  char(64),
    trained_from     timestamptz,
    trained_to       timestamptz,
    data_fingerprint text,
    code_version     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    promoted_at      timestamptz,
    CONSTRAINT model_versions_name_version_key UNIQUE (model_name, version)
);
-- one champion per model, enforced by the database rather than by the promotion code
CREATE UNIQUE INDEX model_versions_one_champion_idx
    ON model_versions (model_name) WHERE status = 'champion';
ALTER TABLE offers ADD CONSTRAINT offers_model_version_fk
    FOREIGN KEY (model_version_id) REFERENCES model_versions (id);

CREATE TABLE backups (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    database_name   text        NOT NULL,
    status          text        NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'uploaded', 'verified', 'failed', 'deleted')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    verified_at     timestamptz,
    size_bytes      bigint      CHECK (size_bytes >= 0),
    location        text,
    manifest        jsonb,
    server_version  text,
    restore_seconds double precision,
    error           text,
    CHECK (status <> 'verified' OR verified_at IS NOT NULL)
);
CREATE INDEX backups_verified_idx ON backups (verified_at DESC) WHERE status = 'verified';

CREATE TABLE audit_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_run_id  text        NOT NULL,
    status      text        NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'passed', 'failed')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE audit_findings (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    audit_run_id bigint      NOT NULL REFERENCES audit_runs (id) ON DELETE CASCADE,
    gate         text        NOT NULL,
    passed       boolean     NOT NULL,
    observed     jsonb,
    threshold    jsonb,
    query        text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_findings_run_idx ON audit_findings (audit_run_id);

CREATE TABLE alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    level       text        NOT NULL CHECK (level IN ('info', 'warning', 'error', 'critical')),
    fingerprint text        NOT NULL,
    dag_id      text,
    task_id     text,
    run_id      text,
    try_number  integer,
    message     text        NOT NULL,
    occurrences integer     NOT NULL DEFAULT 1 CHECK (occurrences > 0),
    channel_failures integer NOT NULL DEFAULT 0 CHECK (channel_failures >= 0),
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_fingerprint_idx ON alerts (fingerprint, last_seen DESC);

CREATE TABLE security_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    event_type  text        NOT NULL,
    severity    text        NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
    actor       text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
-- append-only: the log of what went wrong must not be editable by what went wrong
CREATE FUNCTION security_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'security_events is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER security_events_no_update_delete
    BEFORE UPDATE OR DELETE ON security_events
    FOR EACH ROW EXECUTE FUNCTION security_events_append_only();

CREATE TABLE healthcheck_results (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at timestamptz NOT NULL DEFAULT now(),
    run_id     text        NOT NULL,
    conn_id    text        NOT NULL,
    ok         boolean     NOT NULL,
    latency_ms double precision NOT NULL CHECK (latency_ms >= 0),
    detail     text,
    CONSTRAINT healthcheck_results_run_conn_key UNIQUE (run_id, conn_id)
);
"""

DOWNGRADE = """
DROP TABLE healthcheck_results;
DROP TABLE security_events;
DROP FUNCTION security_events_append_only();
DROP TABLE alerts;
DROP TABLE audit_findings;
DROP TABLE audit_runs;
DROP TABLE backups;
DROP TABLE payments;
DROP TABLE user_events;
DROP TABLE offers;
DROP TABLE model_versions;
DROP TABLE users;
DROP TABLE execution_tasks;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
