"""Offers that learn: quarantine, assignments with a holdout, bandit posteriors, ROI, cursors.

Revision ID: 0004
Revises: 0003

New tables only (nothing existing is altered), so the upgrade takes no lock on live tables:

- offer_quarantine: rows refused by training, feedback or payment sync, with the reason;
- offer_assignments: which user got which offer under which model version, or the holdout;
- offer_publications: the Stripe product and coupon of each (model version, segment) offer;
- offer_bandit_arms: Beta posteriors per segment x offer and the allocation share they give;
- offer_roi: attributed and incremental ROI per model version and segment, with a CI;
- sync_cursors: where an incremental reader (Stripe payments, feedback events) stopped.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

squawk_exceptions = {}

UPGRADE = """
CREATE TABLE offer_quarantine (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL,
    source_key  text        NOT NULL,
    reason      text        NOT NULL,
    row_data    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the same bad row seen by a re-run is counted once
    CONSTRAINT offer_quarantine_source_key UNIQUE (source, source_key)
);

CREATE TABLE offer_assignments (
    model_version_id   bigint      NOT NULL REFERENCES model_versions (id),
    user_id            bigint      NOT NULL REFERENCES users (id),
    segment            text        NOT NULL,
    offer_id           bigint      REFERENCES offers (id),
    holdout            boolean     NOT NULL,
    expected_roi_cents double precision,
    assigned_at        timestamptz NOT NULL,
    PRIMARY KEY (model_version_id, user_id),
    CHECK (holdout = (offer_id IS NULL))
);
CREATE INDEX offer_assignments_offer_idx ON offer_assignments (offer_id) WHERE offer_id IS NOT NULL;

CREATE TABLE offer_publications (
    model_version_id  bigint      NOT NULL REFERENCES model_versions (id),
    segment           text        NOT NULL,
    offer_id          bigint      NOT NULL REFERENCES offers (id),
    stripe_product_id text        NOT NULL,
    stripe_coupon_id  text        NOT NULL CONSTRAINT offer_publications_coupon_key UNIQUE,
    published_at      timestamptz,
    PRIMARY KEY (model_version_id, segment)
);

CREATE TABLE offer_bandit_arms (
    segment     text             NOT NULL,
    offer_id    bigint           NOT NULL REFERENCES offers (id),
    alpha       double precision NOT NULL CHECK (alpha > 0),
    beta        double precision NOT NULL CHECK (beta > 0),
    impressions bigint           NOT NULL DEFAULT 0 CHECK (impressions >= 0),
    redemptions bigint           NOT NULL DEFAULT 0 CHECK (redemptions >= 0),
    share       double precision NOT NULL DEFAULT 0 CHECK (share >= 0 AND share <= 1),
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (segment, offer_id)
);

CREATE TABLE offer_roi (
    model_version_id          bigint           NOT NULL REFERENCES model_versions (id),
    segment                   text             NOT NULL,
    treated_users             bigint           NOT NULL,
    holdout_users             bigint           NOT NULL,
    attributed_revenue_cents  bigint           NOT NULL,
    discount_cost_cents       bigint           NOT NULL,
    attributed_roi_cents      double precision NOT NULL,
    incremental_roi_cents     double precision,
    incremental_ci_low_cents  double precision,
    incremental_ci_high_cents double precision,
    roi_gap_cents             double precision,
    computed_at               timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version_id, segment)
);

CREATE TABLE sync_cursors (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS sync_cursors;
DROP TABLE IF EXISTS offer_roi;
DROP TABLE IF EXISTS offer_bandit_arms;
DROP TABLE IF EXISTS offer_publications;
DROP TABLE IF EXISTS offer_assignments;
DROP TABLE IF EXISTS offer_quarantine;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
