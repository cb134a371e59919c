"""Revision 0004 (the offer tables) upgrades, downgrades to 0002 and upgrades again."""

from __future__ import annotations

import psycopg2
import pytest

from include.migrations import current, downgrade, upgrade

TABLES = (
    "offer_quarantine",
    "offer_assignments",
    "offer_publications",
    "offer_bandit_arms",
    "offer_roi",
    "sync_cursors",
)


def _present(dsn: str) -> set[str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
            (list(TABLES),),
        )
        found = {r[0] for r in cur.fetchall()}
    conn.close()
    return found


def test_offer_tables_come_and_go_with_their_revision(app_dsn):
    upgrade(app_dsn, "0004")
    assert _present(app_dsn) == set(TABLES) and current(app_dsn) == "0004"
    downgrade(app_dsn, "0003")
    assert _present(app_dsn) == set() and current(app_dsn) == "0003"
    upgrade(app_dsn, "0004")
    assert _present(app_dsn) == set(TABLES)


def test_an_assignment_is_either_an_offer_or_the_holdout(app_head_dsn):
    from devstack.demo_data import seed

    seed(app_head_dsn, scale=0.01)
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO model_versions (model_name, version) VALUES ('m', 1) RETURNING id")
        version = cur.fetchone()[0]
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(
                "INSERT INTO offer_assignments (model_version_id, user_id, segment, offer_id, holdout, "
                "assigned_at)"
                " SELECT %s, min(u.id), 'vip', min(o.id), true, now() FROM users u, offers o",
                (version,),
            )
    conn.close()
