"""Hard pass/fail gates over the platform's invariants, each recording its evidence.

A gate is a function `(cursor, limits) -> Evidence`: the query it ran, the value it observed
and the limit it held that value to. `record` stores the evidence in `audit_findings` (a
re-run of the same gate in the same audit replaces its row); the adversarial_audit DAG runs
every gate in `GATES` as its own task and fails, naming each failed gate, when any fails.

Limits are configurable per run (`DEFAULT_LIMITS`, overridden by the DAG's params).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path
from typing import Any, Protocol

DEFAULT_LIMITS: dict[str, float] = {
    # a running task whose lease expired longer ago: its worker is gone
    "expired_lease_minutes": 15,
    "backup_max_age_hours": 26,  # daily backups, with slack for a slow run
    "pending_revision_days": 7,  # a revision on disk but not applied for longer than this
    "backup_restore_max_minutes": 30,  # fetch and sample restore of the newest verified backup
    # the champion's AUC on data it never trained on (registry.Gates.min_auc)
    "model_min_auc": 0.60,
    "model_fresh_days": 21,  # fresh data: the impressions of the last N days before the newest one
    "model_fresh_min_rows": 200,  # fewer fresh rows than this cannot vouch for the model
    "payments_reconcile_days": 30,  # the window of Stripe charges reconciled with the ledger
    "log_scan_hours": 26,  # task logs modified this recently are scanned for secrets
    "worker_session_hours": 26,  # the roles the queue workers recorded this recently are checked
}
# The most each limit may be set to (its DAG param's maximum; the audit refuses a larger one).
LIMIT_MAXIMA: dict[str, float] = {
    "expired_lease_minutes": 7 * 24 * 60,
    "backup_max_age_hours": 30 * 24,
    "pending_revision_days": 365,
    "backup_restore_max_minutes": 24 * 60,
    "model_min_auc": 1,
    "model_fresh_days": 365,
    "model_fresh_min_rows": 10_000_000,
    "payments_reconcile_days": 365,
    "log_scan_hours": 30 * 24,
    "worker_session_hours": 30 * 24,
}


@dataclass(frozen=True)
class Evidence:
    gate: str
    passed: bool
    observed: Any
    limit: Any
    query: str

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"gate {self.gate} {verdict}: observed {self.observed!r}, limit {self.limit!r}"


class Services(Protocol):
    """What the gates reach beyond the app database."""

    def s3(self) -> Any:
        """A boto3 S3 client."""

    def stripe_objects(self, kind: str, params: dict[str, Any] | None = None) -> Iterable[dict[str, Any]]:
        """Every Stripe object of `kind` ("coupons", "products", "charges") matching `params`."""

    def fetched_backup(self, entry: Any) -> AbstractContextManager[Path]:
        """A catalogued backup downloaded and checked against the catalog's SHA-256s (else
        `include.backup.ChecksumMismatch`); the folder is deleted on exit."""

    def scratch_database(self, name: str) -> AbstractContextManager[str]:
        """A new empty database on the app's server, as a libpq DSN; dropped on exit."""

    def secrets(self) -> dict[str, str]:
        """The values of `CONNECTION_IDS`' and `SECRET_SETTINGS`' secrets, by a label that
        names where each comes from (never the value)."""

    def task_log_folder(self) -> Path:
        """Where Airflow writes task logs."""

    def worker_dsn(self) -> str:
        """The libpq DSN exactly as the queue workers (drains, the reaper) open their sessions."""


def _scalar(cur, query: str, params: Mapping | tuple = ()) -> Any:
    cur.execute(query, params)
    return cur.fetchone()[0]


def _count_is_zero(
    gate: str, query: str, params: Mapping | tuple = (), limit: Any = 0
) -> Callable[[Any], Evidence]:
    def check(cur) -> Evidence:
        observed = _scalar(cur, query, params)
        return Evidence(gate, observed == 0, observed, limit, query)

    return check


# --- queue ------------------------------------------------------------------------------------


def queue_expired_leases(cur, limits: Mapping[str, float], services: Services | None = None) -> Evidence:
    query = (
        "SELECT count(*) FROM execution_tasks WHERE status = 'running' "
        "AND lease_expires_at < now() - %(minutes)s * interval '1 minute'"
    )
    minutes = limits["expired_lease_minutes"]
    return _count_is_zero(
        "queue_expired_leases",
        query,
        {"minutes": minutes},
        f"0 with a lease expired over {minutes:g} min",
    )(cur)


def queue_dead_without_error(cur, limits: Mapping[str, float], services: Services | None = None) -> Evidence:
    query = "SELECT count(*) FROM execution_tasks WHERE status = 'dead' AND coalesce(btrim(error), '') = ''"
    return _count_is_zero("queue_dead_without_error", query)(cur)


QUEUE_STATES = ("queued", "running", "succeeded", "failed", "dead")


def queue_valid_status(cur, limits: Mapping[str, float], services: Services | None = None) -> Evidence:
    """Independent of the table's CHECK constraint, which a hand-made change could drop."""
    query = "SELECT count(*) FROM execution_tasks WHERE status <> ALL(%(states)s)"
    return _count_is_zero("queue_valid_status", query, {"states": list(QUEUE_STATES)})(cur)


def queue_ai_model_after_migration(
    cur, limits: Mapping[str, float], services: Services | None = None
) -> Evidence:
    """Tasks created after revision 0002 was applied must carry ai_model; before it, none can."""
    gate = "queue_ai_model_after_migration"
    cur.execute("SELECT to_regclass('public.migration_checksums') IS NOT NULL")
    applied_at = None
    if cur.fetchone()[0]:
        cur.execute("SELECT applied_at FROM migration_checksums WHERE revision = '0002'")
        applied_at = (cur.fetchone() or (None,))[0]
    if applied_at is None:
        return Evidence(gate, True, "revision 0002 not applied: no task can carry ai_model yet", None, "")
    query = "SELECT count(*) FROM execution_tasks WHERE created_at > %(applied_at)s AND ai_model IS NULL"
    return _count_is_zero(gate, query, {"applied_at": applied_at})(cur)


# --- backups ----------------------------------------------------------------------------------


def backup_fresh_and_restored(cur, limits: Mapping[str, float], services: Services | None = None) -> Evidence:
    """The newest verified backup is younger than the limit, and its restore was timed."""
    query = (
        "SELECT id, extract(epoch FROM now() - verified_at) / 3600, restore_seconds FROM backups "
        "WHERE status = 'verified' ORDER BY verified_at DESC LIMIT 1"
    )
    cur.execute(query)
    row = cur.fetchone()
    limit = limits["backup_max_age_hours"]
    if row is None:
        return Evidence("backup_fresh_and_restored", False, "no verified backup", f"<= {limit} h", query)
    backup_id, age_hours, restore_seconds = row
    observed = {
        "backup_id": backup_id,
        "age_hours": round(float(age_hours), 2),
        "restore_seconds": restore_seconds,
    }
    passed = float(age_hours) <= limit and restore_seconds is not None
    return Evidence("backup_fresh_and_restored", passed, observed, f"<= {limit} h, restore checked", query)


def backup_restores_now(cur, limits: Mapping[str, float], services: Services) -> Evidence:
    """The newest verified backup restores right now: its files still match the catalog's
    SHA-256s, and its critical tables, restored into a scratch database (dropped after), hold
    the row counts and content checksums the dump recorded (`expected.json`, itself covered by
    the catalog's manifest)."""
    import time

    import psycopg2

    from include.backup import BackupError
    from include.backup.archive import CRITICAL_TABLES, EXPECTED_FILE, Snapshot, restore, snapshot
    from include.backup.catalog import catalog_get

    gate = "backup_restores_now"
    limit = limits["backup_restore_max_minutes"]
    query = (
        "newest verified backup in `backups`: fetched from S3 and checked against the catalog's SHA-256s, "
        "its critical tables restored into a scratch database and compared with its expected.json"
    )
    try:
        entry = catalog_get(cur)
    except BackupError as exc:
        return Evidence(gate, False, str(exc), f"restored within {limit} min", query)
    start = time.monotonic()
    observed: dict[str, Any] = {"backup_id": entry.id}
    try:
        with services.fetched_backup(entry) as folder:
            expected = Snapshot(**json.loads((folder / EXPECTED_FILE).read_text()))
            tables = tuple(t for t in CRITICAL_TABLES if t in expected.checksums)
            with services.scratch_database(f"audit_restore_{entry.id}") as dsn:
                restore(dsn, folder, tables=tables)
                with psycopg2.connect(dsn) as conn, conn.cursor() as restored:
                    actual = snapshot(restored, tables)
                conn.close()
    except Exception as exc:  # a missing or corrupt file, a failed pg_restore: the evidence says which
        observed["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        return Evidence(gate, False, observed, f"restored within {limit} min", query)
    minutes = (time.monotonic() - start) / 60
    problems = []
    for table in tables:
        key = f"public.{table}"
        want = (expected.row_counts.get(key), expected.checksums[table])
        got = (actual.row_counts.get(key), actual.checksums.get(table))
        if want != got:
            problems.append(
                f"{table}: backup recorded {want[0]} rows (checksum {want[1]}), restore has {got[0]} "
                f"({got[1]})"
            )
    observed.update(
        {
            "tables": {t: expected.row_counts.get(f"public.{t}") for t in tables},
            "minutes": round(minutes, 3),
            "problems": problems,
        }
    )
    passed = bool(tables) and not problems and minutes <= limit
    return Evidence(gate, passed, observed, f"same rows and checksums, within {limit} min", query)


# --- migrations -------------------------------------------------------------------------------


def migrations_match_files(cur, limits: Mapping[str, float], services: Services | None = None) -> Evidence:
    """Every applied revision's file is unchanged, and the applied head is a known revision."""
    from include.migrations import checksum_problems, current_revision

    problems = checksum_problems(cur)
    revision = current_revision(cur)
    return Evidence(
        "migrations_match_files",
        not problems,
        {"current": revision, "changed": problems},
        [],
        "migration_checksums vs the revision files",
    )


def migrations_not_pending_too_long(
    cur, limits: Mapping[str, float], services: Services | None = None
) -> Evidence:
    """A revision first seen pending by an audit more than the limit ago has waited too long."""
    from include.migrations import current_revision, pending_after

    gate = "migrations_not_pending_too_long"
    pending = [r.revision for r in pending_after(current_revision(cur))]
    query = (
        "SELECT extract(epoch FROM now() - min(created_at)) / 86400 FROM audit_findings "
        "WHERE gate = %(gate)s AND observed -> 'pending' ? %(revision)s"
    )
    waiting = {}
    for revision in pending:
        days = _scalar(cur, query, {"gate": gate, "revision": revision})
        waiting[revision] = round(float(days), 2) if days is not None else 0.0
    limit = limits["pending_revision_days"]
    passed = all(days <= limit for days in waiting.values())
    return Evidence(gate, passed, {"pending": pending, "days_waiting": waiting}, f"<= {limit} days", query)


# --- model ------------------------------------------------------------------------------------


def _promoted_versions(cur) -> int:
    """Versions that were champion once: before the first promotion (the first training still
    running, say) there is no model in production to vouch for."""
    from include.offers.model import MODEL_NAME

    return _scalar(
        cur,
        "SELECT count(*) FROM model_versions WHERE model_name = %s AND promoted_at IS NOT NULL",
        (MODEL_NAME,),
    )


NO_MODEL_YET = "not applicable: no offer model version was ever promoted"


def model_champion_artifacts_verify(cur, limits: Mapping[str, float], services: Services) -> Evidence:
    """A champion exists once any version was promoted; its artifact and the previous champion's
    (the one a rollback restores) download, match their registered SHA-256 and load under the
    skops allowlist. Passes as not applicable while no version was ever promoted."""
    from include.offers import registry
    from include.offers.model import MODEL_NAME

    gate = "model_champion_artifacts_verify"
    limit = "a champion; both artifacts verify"
    query = (
        "model_versions: the champion and the most recently promoted retired version; "
        "artifacts from S3 checked by SHA-256 and the skops type allowlist"
    )
    if _promoted_versions(cur) == 0:
        return Evidence(gate, True, NO_MODEL_YET, limit, query)
    champion = registry.champion(cur, MODEL_NAME)
    if champion is None:
        return Evidence(
            gate,
            False,
            f"no champion of {MODEL_NAME}, though one was promoted before",
            limit,
            query,
        )
    # the version registry.rollback would restore
    cur.execute(
        "SELECT id FROM model_versions WHERE model_name = %s AND id <> %s AND promoted_at IS NOT NULL "
        "AND status = 'retired' ORDER BY promoted_at DESC, id DESC LIMIT 1",
        (MODEL_NAME, champion.id),
    )
    row = cur.fetchone()
    previous = registry.get(cur, row[0]) if row else None
    observed: dict[str, Any] = {}
    passed = True
    for role, version in (("champion", champion), ("previous", previous)):
        if version is None:
            observed[role] = "none: the champion is the first one promoted"
            continue
        try:
            registry.fetch_model(services.s3(), version)
            observed[role] = {"version_id": version.id, "verified": True}
        except Exception as exc:  # refused (hash, format) or not downloadable
            passed = False
            observed[role] = {
                "version_id": version.id,
                "verified": False,
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
    return Evidence(gate, passed, observed, limit, query)


def _fresh_query() -> str:
    from include.offers import model as m

    return (
        f"SELECT * FROM ({m.TRAINING_ROWS_SQL}) fresh WHERE occurred_at >= greatest(%(trained_to)s, "  # noqa: S608 (module constant)
        "(SELECT max(occurred_at) FROM user_events WHERE event_type = 'impression' AND occurred_at <= now())"
        " - %(days)s * interval '1 day')"
    )


def _fresh_rows(cur, trained_to, days: float):
    """The impressions of the last `days` before the newest one that a model trained up to
    `trained_to` never saw, without the rows training quarantines."""
    from datetime import UTC, datetime

    import pandas as pd

    from include.offers import model as m

    cur.execute(_fresh_query(), {"trained_to": trained_to, "days": days})
    fresh = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
    return fresh[m.quarantine_reasons(fresh, datetime.now(UTC)).isna()] if len(fresh) else fresh


def _auc(pipeline, fresh) -> float:
    from sklearn.metrics import roc_auc_score

    from include.offers import model as m

    return float(roc_auc_score(fresh[m.LABEL].astype(int), m.predict(pipeline, fresh)))


def _scorable(fresh, min_rows: int) -> bool:
    from include.offers import model as m

    return len(fresh) >= min_rows and fresh[m.LABEL].nunique() >= 2


def model_auc_on_fresh_data(cur, limits: Mapping[str, float], services: Services) -> Evidence:
    """The champion's ROC AUC on fresh impressions (the last `model_fresh_days` before the
    newest one, and none it trained on) is at least `model_min_auc`. Too few fresh rows (or
    one class only) fail: the model cannot then be vouched for. Not applicable while no
    version was ever promoted."""
    from include.offers import model as m
    from include.offers import registry

    gate = "model_auc_on_fresh_data"
    floor, days, min_rows = (
        limits["model_min_auc"],
        limits["model_fresh_days"],
        int(limits["model_fresh_min_rows"]),
    )
    limit = f"auc >= {floor} on >= {min_rows} fresh rows"
    query = _fresh_query()
    if _promoted_versions(cur) == 0:
        return Evidence(gate, True, NO_MODEL_YET, limit, query)
    champion = registry.champion(cur, m.MODEL_NAME)
    if champion is None:
        return Evidence(gate, False, f"no champion of {m.MODEL_NAME} to score", limit, query)
    cur.execute("SELECT trained_to FROM model_versions WHERE id = %s", (champion.id,))
    trained_to = cur.fetchone()[0]
    fresh = _fresh_rows(cur, trained_to, days)
    observed: dict[str, Any] = {
        "version_id": champion.id,
        "rows": len(fresh),
        "trained_to": trained_to.isoformat() if trained_to else None,
    }
    if not _scorable(fresh, min_rows):
        observed["auc"] = None
        return Evidence(gate, False, observed, limit, query)
    try:
        pipeline = registry.fetch_model(services.s3(), champion)
    except Exception as exc:
        observed["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return Evidence(gate, False, observed, limit, query)
    auc = _auc(pipeline, fresh)
    observed["auc"] = round(auc, 4)
    return Evidence(gate, auc >= floor, observed, limit, query)


def model_candidate_gates(
    cur, limits: Mapping[str, float], services: Services, version_id: int, margin_auc: float = 0.0
) -> list[Evidence]:
    """The model gates on a candidate, before it is promoted (offer_model_retrain): its artifact
    verifies (SHA-256, skops allowlist), its AUC on fresh data (impressions it never trained on,
    as `model_auc_on_fresh_data` reads them) is at least `model_min_auc`, and it is not worse
    there than the champion by more than `margin_auc` allows (the champion scored on the same
    rows). A candidate that fails one is refused: it never becomes champion."""
    from include.offers import model as m
    from include.offers import registry

    days, min_rows, floor = (
        limits["model_fresh_days"],
        int(limits["model_fresh_min_rows"]),
        limits["model_min_auc"],
    )
    candidate = registry.get(cur, version_id)
    artifact = "model_versions.artifact_sha256 and the skops type allowlist, artifact from S3"
    try:
        pipeline = registry.fetch_model(services.s3(), candidate)
    except Exception as exc:  # refused (hash, format) or not downloadable
        error = f"{type(exc).__name__}: {exc}"[:500]
        return [
            Evidence(
                "model_candidate_artifact_verifies",
                False,
                {"version_id": version_id, "error": error},
                "verifies",
                artifact,
            )
        ]
    evidence = [
        Evidence("model_candidate_artifact_verifies", True, {"version_id": version_id}, "verifies", artifact)
    ]
    cur.execute("SELECT trained_to FROM model_versions WHERE id = %s", (version_id,))
    fresh = _fresh_rows(cur, cur.fetchone()[0], days)
    observed: dict[str, Any] = {"version_id": version_id, "rows": len(fresh), "auc": None}
    limit = f"auc >= {floor} on >= {min_rows} fresh rows"
    if not _scorable(fresh, min_rows):
        return [
            *evidence,
            Evidence("model_candidate_auc_on_fresh_data", False, observed, limit, _fresh_query()),
        ]
    auc = observed["auc"] = round(_auc(pipeline, fresh), 4)
    evidence.append(
        Evidence("model_candidate_auc_on_fresh_data", auc >= floor, observed, limit, _fresh_query())
    )
    champion = registry.champion(cur, m.MODEL_NAME)
    gate, versus = (
        "model_candidate_not_worse_than_champion",
        f"auc >= champion's auc + {margin_auc} on the same rows",
    )
    if champion is None or champion.id == version_id:
        return [*evidence, Evidence(gate, True, "no champion to compare with", versus, _fresh_query())]
    try:
        champion_auc = round(_auc(registry.fetch_model(services.s3(), champion), fresh), 4)
    except Exception as exc:
        error = f"champion {champion.id}: {type(exc).__name__}: {exc}"[:500]
        return [*evidence, Evidence(gate, False, {"auc": auc, "error": error}, versus, _fresh_query())]
    compared = {"auc": auc, "champion_id": champion.id, "champion_auc": champion_auc, "rows": len(fresh)}
    return [*evidence, Evidence(gate, auc >= champion_auc + margin_auc, compared, versus, _fresh_query())]


# --- Stripe and ROI ---------------------------------------------------------------------------


def stripe_offers_published_once(cur, limits: Mapping[str, float], services: Services) -> Evidence:
    """Every published offer (an `offer_publications` row marked published, and every offer
    carrying a `stripe_coupon_id`) is in Stripe exactly once: its product and coupon exist under
    their deterministic ids with the offer's metadata and discount, and no other object
    carries the same (model version, segment, offer). A retired publication (its offer lost,
    or its version was rolled back) is left out, and its coupon must be gone from Stripe."""
    from collections import defaultdict

    gate = "stripe_offers_published_once"
    query = (
        "SELECT p.model_version_id, p.segment, p.stripe_product_id, p.stripe_coupon_id, o.id, o.code, "
        "o.discount_pct FROM offer_publications p JOIN offers o ON o.id = p.offer_id "
        "WHERE p.published_at IS NOT NULL AND p.retired_at IS NULL ORDER BY 1, 2, 6"
    )
    cur.execute(query)
    published = cur.fetchall()
    cur.execute("SELECT stripe_coupon_id FROM offer_publications WHERE retired_at IS NOT NULL")
    retired = {r[0] for r in cur.fetchall()}
    cur.execute("SELECT stripe_coupon_id FROM offers WHERE stripe_coupon_id IS NOT NULL")
    offer_coupons = [r[0] for r in cur.fetchall()]
    versions = {str(r[0]) for r in published}
    problems: list[str] = []
    for kind, id_column in (("products", 2), ("coupons", 3)):
        wanted = {r[id_column] for r in published} | (set(offer_coupons) if kind == "coupons" else set())
        if not wanted and not (kind == "coupons" and retired):
            continue
        ids: dict[str, list[dict]] = defaultdict(list)
        per_offer: dict[tuple[str, str], list[str]] = defaultdict(list)
        for obj in services.stripe_objects(kind):
            metadata = obj.get("metadata") or {}
            ids[obj["id"]].append(obj)
            if metadata.get("model_version_id") in versions:
                key = (metadata["model_version_id"], metadata.get("segment"), metadata.get("offer_code"))
                per_offer[key].append(obj["id"])
        for object_id in sorted(wanted):
            if len(ids[object_id]) != 1:
                problems.append(f"{kind} {object_id}: {len(ids[object_id])} in Stripe, expected 1")
        if kind == "coupons":
            problems.extend(f"coupons {c}: retired, still in Stripe" for c in sorted(retired) if ids[c])
        for row in published:
            version_id, segment, offer_id, code, discount_pct = (
                row[0],
                row[1],
                row[4],
                row[5],
                row[6],
            )
            object_id = row[id_column]
            if others := sorted(set(per_offer[(str(version_id), segment, code)]) - {object_id}):
                problems.append(
                    f"{kind} of model version {version_id} segment {segment} offer {code} also in "
                    f"Stripe as {others}"
                )
            if len(ids[object_id]) != 1:
                continue
            obj = ids[object_id][0]
            want = {
                "model_version_id": str(version_id),
                "segment": segment,
                "offer_code": code,
                "offer_id": str(offer_id),
            }
            got = {k: (obj.get("metadata") or {}).get(k) for k in want}
            if got != want:
                problems.append(f"{kind} {object_id}: metadata {got}, the offer says {want}")
            if kind == "coupons" and float(obj.get("percent_off") or 0) != float(discount_pct):
                problems.append(
                    f"coupons {object_id}: percent_off {obj.get('percent_off')}, the offer says "
                    f"{float(discount_pct)}"
                )
    observed = {
        "published": len(published),
        "retired": len(retired),
        "offer_coupons": len(offer_coupons),
        "problems": problems,
    }
    return Evidence(gate, not problems, observed, "each exactly once, as published", query)


# Demo history from devstack/demo_data.py: payments that predate the Stripe account, never synced
SEEDED_PAYMENT_PATTERN = r"^pi_seed_[0-9]{6,}$"


def stripe_payments_reconcile(cur, limits: Mapping[str, float], services: Services) -> Evidence:
    """The payments ledger and Stripe agree over the last `payments_reconcile_days` before the
    sync cursor: every charge the sync has passed is in `payments` (as `roi.payment_row` maps
    it: amount, refunded amount, status, user, offer) or quarantined with a reason, and every ledger row (but
    the seeded demo history) is a charge Stripe has. A charge refunded since the sync last read
    the refunds is left for the next sync, like one made since its cursor. The disputes too
    (`_disputes_reconcile`). Counts and amounts are in the evidence."""
    from datetime import UTC, datetime

    from include.offers.jobs import CHARGES_CURSOR, REFUNDS_CURSOR, get_cursor
    from include.offers.roi import payment_row

    gate = "stripe_payments_reconcile"
    days = limits["payments_reconcile_days"]
    cursor = get_cursor(cur, CHARGES_CURSOR, default=0)
    now = datetime.now(UTC)
    end = cursor or int(now.timestamp())
    start = max(int(end - days * 86400), 1_500_000_001)  # localstripe refuses earlier bounds
    query = (
        "SELECT stripe_payment_id, user_id, offer_id, amount_cents, refunded_cents, status,"
        " extract(epoch FROM created_at) "
        "FROM payments WHERE created_at > to_timestamp(%(start)s) AND stripe_payment_id !~ %(seeded)s"
    )
    cur.execute(query, {"start": start, "seeded": SEEDED_PAYMENT_PATTERN})
    rows = cur.fetchall()
    ledger = {r[0]: r[1:6] for r in rows}
    cur.execute("SELECT source_key FROM offer_quarantine WHERE source = 'stripe_charges'")
    quarantined = {r[0] for r in cur.fetchall()}
    cur.execute("SELECT id FROM users")
    known_users = {r[0] for r in cur.fetchall()}
    cur.execute("SELECT stripe_coupon_id, offer_id FROM offer_publications")
    coupon_offers = dict(cur.fetchall())
    charges = {c["id"]: c for c in services.stripe_objects("charges", {"created": {"gt": start}})}
    refunds_read = get_cursor(cur, REFUNDS_CURSOR, default=0)
    # the cursor's own second too: a refund made in it after the sync read the list comes next
    # time. Stripe lists refunds newest first: the listing stops at the first older one.
    refunded_since = {
        r["charge"]
        for r in takewhile(lambda r: int(r["created"]) >= refunds_read, services.stripe_objects("refunds"))
    }
    # the same charges as those counted below
    passed_by_sync = [r[3:5] for r in rows if r[6] < end and r[0] not in refunded_since]
    missing, mismatched = [], []
    stripe_count = stripe_cents = stripe_refunded = 0
    for charge_id, charge in charges.items():
        if (
            not cursor
            or int(charge["created"]) >= cursor
            or charge_id in quarantined
            or charge_id in refunded_since
        ):
            # not passed by the sync yet (same-second charges come with the next one), refunded
            # since it read the refunds, or refused
            continue
        row, _ = payment_row(charge, known_users=known_users, coupon_offers=coupon_offers, now=now)
        if row is None:
            missing.append(charge_id)  # refused by the sync's rules, yet not quarantined
            continue
        stripe_count += 1
        stripe_cents += row.amount_cents
        stripe_refunded += row.refunded_cents
        if charge_id not in ledger:
            missing.append(charge_id)
        elif ledger[charge_id] != (
            row.user_id,
            row.offer_id,
            row.amount_cents,
            row.refunded_cents,
            row.status,
        ):
            mismatched.append(charge_id)
    not_in_stripe = sorted(set(ledger) - set(charges))
    observed = {
        "window": [
            datetime.fromtimestamp(start, UTC).isoformat(),
            datetime.fromtimestamp(end, UTC).isoformat(),
        ],
        "stripe": {
            "charges": stripe_count,
            "amount_cents": stripe_cents,
            "refunded_cents": stripe_refunded,
            "quarantined": len(quarantined & set(charges)),
            "refunded_since_sync": len(refunded_since & set(charges)),
        },
        "ledger": {
            "payments": len(passed_by_sync),
            "amount_cents": sum(r[0] for r in passed_by_sync),
            "refunded_cents": sum(r[1] for r in passed_by_sync),
        },
        "missing_in_ledger": missing[:20],
        "not_in_stripe": not_in_stripe[:20],
        "mismatched": mismatched[:20],
        "disputes": _disputes_reconcile(cur, services, start),
    }
    disputes = observed["disputes"]
    passed = not (
        missing
        or not_in_stripe
        or mismatched
        or disputes["missing_in_ledger"]
        or disputes["not_in_stripe"]
        or disputes["mismatched"]
    )
    return Evidence(gate, passed, observed, "no charge or dispute missing, unknown or different", query)


def _disputes_reconcile(cur, services: Services, start: int) -> dict[str, Any]:
    """Stripe's disputes made after `start` against `payment_disputes` and `payments.disputed_cents`.

    Every dispute the sync has passed (made before its cursor) is synced with Stripe's status
    and amount, or quarantined; every synced one is a dispute Stripe has; and each charge's
    `disputed_cents` is what Stripe's disputes of it withhold. A synced dispute that was open
    and has changed since is left for the next sync, which reads every open one again (counted
    in `changed_since_sync`), and so is its charge's `disputed_cents`.
    """
    from include.offers.jobs import DISPUTES_CURSOR, get_cursor
    from include.offers.roi import DISPUTE_FINAL, DISPUTE_WITHHELD

    cursor = get_cursor(cur, DISPUTES_CURSOR, default=0)
    stripe = {d["id"]: d for d in services.stripe_objects("disputes", {"created": {"gt": start}})}
    cur.execute(
        "SELECT stripe_dispute_id, stripe_charge_id, amount_cents, status FROM payment_disputes"
        " WHERE created_at > to_timestamp(%s)",
        (start,),
    )
    ledger = {r[0]: r[1:] for r in cur.fetchall()}
    cur.execute("SELECT source_key FROM offer_quarantine WHERE source = 'stripe_disputes'")
    quarantined = {r[0] for r in cur.fetchall()} & set(stripe)
    missing, mismatched, changed, waiting = [], [], [], set()
    for dispute_id, dispute in stripe.items():
        if dispute_id in quarantined:
            continue
        if dispute_id not in ledger:
            if int(dispute["created"]) >= cursor:  # not passed by the sync yet
                waiting.add(dispute["charge"])
            else:
                missing.append(dispute_id)
            continue
        _, amount, status = ledger[dispute_id]
        if amount == dispute["amount"] and status == dispute["status"]:
            continue
        if amount == dispute["amount"] and status not in DISPUTE_FINAL:
            changed.append(dispute_id)
            waiting.add(dispute["charge"])
        else:
            mismatched.append(dispute_id)
    withheld = Counter()
    for dispute in stripe.values():
        if dispute["id"] not in quarantined and dispute["status"] in DISPUTE_WITHHELD:
            withheld[dispute["charge"]] += dispute["amount"]
    charges = sorted({d["charge"] for d in stripe.values() if d["id"] not in quarantined} - waiting)
    cur.execute(
        "SELECT stripe_payment_id, disputed_cents FROM payments WHERE stripe_payment_id = ANY(%s)",
        (charges,),
    )
    disputed = dict(cur.fetchall())
    wrong_charges = [c for c in charges if disputed.get(c, 0) != withheld[c]]
    return {
        "stripe": len(stripe),
        "ledger": len(ledger),
        "quarantined": len(quarantined),
        "changed_since_sync": len(changed),
        "withheld_cents": sum(disputed.get(c, 0) for c in charges),
        "missing_in_ledger": missing[:20],
        "not_in_stripe": sorted(set(ledger) - set(stripe))[:20],
        "mismatched": (mismatched + [f"{c}: disputed_cents" for c in wrong_charges])[:20],
    }


# --- security ---------------------------------------------------------------------------------


def security_api_requires_login(
    cur, limits: Mapping[str, float], services: Services | None = None
) -> Evidence:
    """The Airflow REST API (and the UI behind the same login) refuses a request without a
    token. The address comes from the deployment's own settings: `[api] base_url`, else the
    api-server that the workers reach (`[core] execution_api_server_url`, less its path)."""
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    gate = "security_api_requires_login"
    base = os.environ.get("AIRFLOW__API__BASE_URL", "").rstrip("/")
    if not base and (execution := os.environ.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "")):
        parts = urllib.parse.urlsplit(execution)
        base = f"{parts.scheme}://{parts.netloc}"
    if not base:
        return Evidence(
            gate,
            False,
            "neither AIRFLOW__API__BASE_URL nor AIRFLOW__CORE__EXECUTION_API_SERVER_URL is set: "
            "cannot reach the API",
            "401",
            "",
        )
    url = f"{base}/api/v2/dags"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return Evidence(gate, False, f"GET {url} failed: {exc}", "401 or 403", f"GET {url}")
    return Evidence(gate, status in (401, 403), status, "401 or 403", f"GET {url} without a token")


def _attempt(cur, statement) -> str:
    """What happens when the session of `cur` runs `statement`: "refused" (no privilege) or what
    else. A savepoint that is always rolled back keeps nothing of it."""
    import psycopg2
    from psycopg2 import errors

    cur.execute("SAVEPOINT worker_probe")
    try:
        # a refused DDL never waits; an allowed one must not hang
        cur.execute("SET LOCAL lock_timeout = '2s'")
        try:
            cur.execute(statement)
        except errors.InsufficientPrivilege:
            return "refused"
        return "allowed"
    except psycopg2.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip()}"
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT worker_probe")
        cur.execute("RELEASE SAVEPOINT worker_probe")


WORKER_PRIVILEGES_QUERY = """
SELECT c.relname, p.privilege
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS
    p(privilege)
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND (has_table_privilege(%(role)s, c.oid, p.privilege)
       OR (p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
           AND has_any_column_privilege(%(role)s, c.oid, p.privilege)))
ORDER BY 1, 2
"""

WORKER_SESSIONS_QUERY = (
    "SELECT db_role, login_role, last_owner, last_seen FROM worker_sessions "
    "WHERE last_seen > now() - %(hours)s * interval '1 hour' ORDER BY last_seen DESC"
)


def _worker_session_attempts(dsn: str, cur) -> tuple[dict[str, Any], list[str]]:
    """A session opened as the workers open theirs: its role, and what it may do, tried for real
    (a CREATE TABLE, an ALTER TABLE, a read of every table the workers do not read; each rolled
    back). (observed, problems)."""
    import psycopg2
    from psycopg2 import sql

    from include.migrations.db_roles import WORKER_GRANTS, WORKER_ROLE

    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        problem = f"a worker session could not be opened: {type(exc).__name__}: {str(exc).strip()}"
        return {"error": problem}, [problem]
    try:
        with conn.cursor() as worker:
            worker.execute("SELECT current_user, session_user")
            role, login = worker.fetchone()
            problems = (
                []
                if role == WORKER_ROLE
                else [f"the workers' sessions run as {role!r} (login {login!r}), not {WORKER_ROLE!r}"]
            )
            attempts = {"CREATE TABLE": "CREATE TABLE public.audit_worker_probe (id int)"}
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            tables = [r[0] for r in cur.fetchall()]
            if "execution_tasks" in tables:
                attempts["ALTER TABLE execution_tasks"] = (
                    "ALTER TABLE public.execution_tasks ADD COLUMN audit_worker_probe int"
                )
            readable = {t for t, p in WORKER_GRANTS.items() if "SELECT" in p}
            read = sql.SQL("SELECT 1 FROM {} LIMIT 0")
            attempts.update(
                {f"read {t}": read.format(sql.Identifier("public", t)) for t in tables if t not in readable}
            )
            outcomes = {what: _attempt(worker, statement) for what, statement in attempts.items()}
        conn.rollback()
    finally:
        conn.close()
    problems += [f"{what}: {outcome}" for what, outcome in outcomes.items() if outcome != "refused"]
    observed = {
        "role": role,
        "login": login,
        "attempts_refused": sum(o == "refused" for o in outcomes.values()),
    }
    return observed, problems


def _recorded_worker_roles(cur, hours: float) -> tuple[Any, list[str]]:
    """The roles the drains and the reaper recorded running as (worker_sessions, revision 0009)
    over the last `hours`: (observed, problems)."""
    from include.migrations import table_exists
    from include.migrations.db_roles import WORKER_ROLE

    if not table_exists(cur, "worker_sessions"):
        return "not recorded before revision 0009", []
    cur.execute(WORKER_SESSIONS_QUERY, {"hours": hours})
    rows = cur.fetchall()
    problems = [
        f"a worker ran as {role!r} (login {login!r}, {owner}, last seen {seen:%Y-%m-%d %H:%M:%S%z})"
        for role, login, owner, seen in rows
        if role != WORKER_ROLE
    ]
    return sorted({f"{role} (login {login})" for role, login, _, _ in rows}), problems


def security_worker_role_is_dml_only(
    cur, limits: Mapping[str, float], services: Services | None = None
) -> Evidence:
    """The queue workers hold DML on their tables and nothing else, and really run as the role
    that holds it:

    - the role (`include.migrations.db_roles.WORKER_ROLE`) holds no privilege beyond
      `WORKER_GRANTS` on any table or column, no CREATE on the database or schema, no powerful
      attribute, no membership in an owner's role;
    - a session opened exactly as the workers open theirs (`services.worker_dsn()`, what
      DrainQueueOperator and the reaper call) runs as that role, and in it (rolled back) a CREATE
      TABLE, an ALTER TABLE and a read of every other table are refused;
    - every role the drains and the reaper recorded running as (`worker_sessions`) over the last
      `worker_session_hours` is that role: a drain that connected as the owner fails the gate.
    """
    from include.migrations.db_roles import WORKER_GRANTS, WORKER_ROLE

    gate = "security_worker_role_is_dml_only"
    limit = {
        "role": WORKER_ROLE,
        "grants": {t: list(p) for t, p in WORKER_GRANTS.items()},
        "sessions_within_hours": limits["worker_session_hours"],
    }
    cur.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles "
        "WHERE rolname = %s",
        (WORKER_ROLE,),
    )
    attributes = cur.fetchone()
    if attributes is None:
        return Evidence(gate, False, f"role {WORKER_ROLE} does not exist", limit, "pg_roles")
    problems = [
        f"role attribute {name}"
        for name, on in zip(
            ("superuser", "createdb", "createrole", "replication", "bypassrls"),
            attributes,
            strict=True,
        )
        if on
    ]
    cur.execute(WORKER_PRIVILEGES_QUERY, {"role": WORKER_ROLE})
    held = cur.fetchall()
    problems += [
        f"{privilege} on {table}"
        for table, privilege in held
        if privilege not in WORKER_GRANTS.get(table, ())
    ]
    cur.execute(
        "SELECT has_database_privilege(%(role)s, current_database(), 'CREATE'), "
        "has_schema_privilege(%(role)s, 'public', 'CREATE')",
        {"role": WORKER_ROLE},
    )
    problems += [
        f"CREATE on the {what}"
        for what, on in zip(("database", "schema public"), cur.fetchone(), strict=True)
        if on
    ]
    cur.execute(
        """SELECT DISTINCT owner FROM (
                       SELECT tableowner::text AS owner FROM pg_tables WHERE schemaname = 'public'
                       UNION SELECT datdba::regrole::text FROM pg_database WHERE datname =
                           current_database()) owners
                   WHERE owner <> %(role)s AND pg_has_role(%(role)s, owner, 'MEMBER')""",
        {"role": WORKER_ROLE},
    )
    problems += [f"member of the owner role {r[0]}" for r in cur.fetchall()]
    if services is None:
        session: Any = "not checked: no way to open a worker session (no services)"
        problems.append(session)
    else:
        session, found = _worker_session_attempts(services.worker_dsn(), cur)
        problems += found
    recorded, found = _recorded_worker_roles(cur, limits["worker_session_hours"])
    problems += found
    observed = {
        "role": WORKER_ROLE,
        "held": sorted({f"{p} on {t}" for t, p in held}),
        "worker_session": session,
        "recorded_sessions": recorded,
        "problems": problems,
    }
    query = WORKER_PRIVILEGES_QUERY.strip() + ";\n" + WORKER_SESSIONS_QUERY
    return Evidence(gate, not problems, observed, limit, query)


# The connections (include.ids) and settings whose secrets must never reach a task log.
SECRET_SETTINGS = (("core", "fernet_key"), ("api", "secret_key"), ("api_auth", "jwt_secret"))
MIN_SECRET_LENGTH = 8  # a shorter value would match ordinary text by chance


def security_no_secrets_in_task_logs(cur, limits: Mapping[str, float], services: Services) -> Evidence:
    """No secret of the project's connections or of Airflow's settings appears in a task log
    written in the last `log_scan_hours`. The evidence names the secret's source and the file,
    never the value."""
    import time

    gate = "security_no_secrets_in_task_logs"
    hours = limits["log_scan_hours"]
    folder = services.task_log_folder()
    query = f"task logs under {folder} modified in the last {hours} h, searched for each secret's value"
    if not folder.is_dir():
        return Evidence(
            gate, False, f"task log folder {folder} does not exist", "no secret in any log", query
        )
    secrets = {
        label: value.encode()
        for label, value in services.secrets().items()
        if len(value) >= MIN_SECRET_LENGTH
    }
    overlap = max((len(v) for v in secrets.values()), default=1) - 1
    since = time.time() - hours * 3600
    leaks, scanned = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.stat().st_mtime < since:
                continue
            found = _secrets_in_file(path, secrets, overlap)
        except OSError:
            continue  # rotated away while scanning
        scanned += 1
        leaks += [{"secret": label, "file": str(path.relative_to(folder))} for label in found]
    observed = {"files_scanned": scanned, "secrets_checked": sorted(secrets), "leaks": leaks[:50]}
    return Evidence(gate, not leaks, observed, "no secret in any log", query)


def _secrets_in_file(path: Path, secrets: dict[str, bytes], overlap: int) -> list[str]:
    """Labels of the secrets in `path`, read in chunks (a log may be large)."""
    found: set[str] = set()
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            window = tail + chunk
            found.update(label for label, value in secrets.items() if value in window)
            tail = window[-overlap:] if overlap else b""
    return sorted(found)


GATES: dict[str, Callable[..., Evidence]] = {
    gate.__name__: gate
    for gate in (
        queue_expired_leases,
        queue_dead_without_error,
        queue_valid_status,
        queue_ai_model_after_migration,
        backup_fresh_and_restored,
        backup_restores_now,
        migrations_match_files,
        migrations_not_pending_too_long,
        model_champion_artifacts_verify,
        model_auc_on_fresh_data,
        stripe_offers_published_once,
        stripe_payments_reconcile,
        security_api_requires_login,
        security_worker_role_is_dml_only,
        security_no_secrets_in_task_logs,
    )
}


@dataclass(frozen=True)
class GatePolicy:
    """What a failed gate means for the audit's FSAR report (include.audit.verdict)."""

    weight: int  # its share of the report's severity (the sum of the failed gates' weights, at most 100)
    blocks: bool  # its failure blocks execution until the report closes
    remediation: str  # the concrete step that repairs it (`{previous}`: the version a rollback restores)


ROLL_BACK = (
    "roll back the offer model to version {previous}: trigger `offer_model_retrain` with "
    '`{{"rollback": true}}`'
)
# Every gate's weight, whether it blocks, and its remediation. A gate blocks when work done on
# top of its broken invariant would be lost, unsafe or unrecoverable; it does not when the
# remediation is itself execution (the reaper runs in task_batch, offers are re-published by
# offer_model_retrain), which a block would stop.
GATE_POLICY: dict[str, GatePolicy] = {
    "queue_expired_leases": GatePolicy(
        20,
        False,
        "let `task_batch` run (its `publish_metrics` reaps expired leases) and read the dead drain's log",
    ),
    "queue_dead_without_error": GatePolicy(
        40,
        True,
        "record why each dead task died (`SELECT id FROM execution_tasks WHERE status = 'dead' AND "
        "coalesce(btrim(error), '') = ''`), fail or re-enqueue it, then run `adversarial_audit`",
    ),
    "queue_valid_status": GatePolicy(
        50,
        True,
        "repair the rows with an unknown status and restore the status CHECK, then run `adversarial_audit`",
    ),
    "queue_ai_model_after_migration": GatePolicy(
        50,
        True,
        "set `ai_model` on the tasks created without one (or fail them), then run `adversarial_audit`",
    ),
    "backup_fresh_and_restored": GatePolicy(40, True, "take and verify a backup: run `db_backup`"),
    "backup_restores_now": GatePolicy(
        60,
        True,
        "take and verify a new backup (`db_backup`), then find why the newest one no longer restores",
    ),
    "migrations_match_files": GatePolicy(
        70,
        True,
        "restore the edited revision file from version control, or repair the schema with `db_migrate` "
        "and `remediation_report` naming this report",
    ),
    "migrations_not_pending_too_long": GatePolicy(20, False, "apply the pending revisions: run `db_migrate`"),
    "model_champion_artifacts_verify": GatePolicy(50, True, ROLL_BACK),
    "model_auc_on_fresh_data": GatePolicy(
        30, False, ROLL_BACK + ", or retrain it on fresh data: trigger `offer_model_retrain`"
    ),
    "stripe_offers_published_once": GatePolicy(
        35,
        False,
        "re-publish the champion's offers: trigger `offer_model_retrain` (publishing is idempotent)",
    ),
    "stripe_payments_reconcile": GatePolicy(
        35, False, "sync the charges again (`roi_sync`) and reconcile the ledger rows the evidence names"
    ),
    "security_api_requires_login": GatePolicy(
        90,
        True,
        "turn the REST API's authentication back on (`[core] auth_manager`) and restart the api-server",
    ),
    "security_worker_role_is_dml_only": GatePolicy(
        80,
        True,
        "revoke what `app_worker` holds beyond its grants and provision it again "
        "(`python -m include.migrations.db_roles`)",
    ),
    "security_no_secrets_in_task_logs": GatePolicy(
        70, True, "rotate the secret the evidence names and delete the task logs that hold it"
    ),
    # the audit's steps that record a gate's finding
    "adversarial_probes": GatePolicy(
        60,
        True,
        "refuse the hostile input the evidence names at its entry point, then run `adversarial_audit`",
    ),
    "alarm_delivery": GatePolicy(
        50, False, "repair the alert channel the evidence names (`smtp_default`, Sentry, CloudWatch)"
    ),
}
# an audit step that did not finish (no finding): it counts, but blocks nothing
UNFINISHED_STEP = GatePolicy(10, False, "read the step's log, fix what stopped it, and clear it")


# --- the audit record -------------------------------------------------------------------------


def start_audit(cur, dag_run_id: str) -> int:
    cur.execute("SELECT id FROM audit_runs WHERE dag_run_id = %s", (dag_run_id,))
    if row := cur.fetchone():
        cur.execute("UPDATE audit_runs SET status = 'running', finished_at = NULL WHERE id = %s", (row[0],))
        return row[0]
    cur.execute("INSERT INTO audit_runs (dag_run_id) VALUES (%s) RETURNING id", (dag_run_id,))
    return cur.fetchone()[0]


def record(cur, audit_run_id: int, evidence: Evidence) -> None:
    cur.execute(
        "DELETE FROM audit_findings WHERE audit_run_id = %s AND gate = %s",
        (audit_run_id, evidence.gate),
    )
    cur.execute(
        "INSERT INTO audit_findings (audit_run_id, gate, passed, observed, threshold, query) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (
            audit_run_id,
            evidence.gate,
            evidence.passed,
            json.dumps(evidence.observed, default=str),
            json.dumps(evidence.limit, default=str),
            evidence.query,
        ),
    )


def finish_audit(cur, audit_run_id: int, expected_gates: list[str]) -> list[str]:
    """Mark the audit passed or failed; returns the failed gates (a gate with no finding,
    because its task never ran, counts as failed)."""
    cur.execute("SELECT gate, passed FROM audit_findings WHERE audit_run_id = %s", (audit_run_id,))
    results = dict(cur.fetchall())
    failed = sorted(g for g in expected_gates if not results.get(g, False))
    cur.execute(
        "UPDATE audit_runs SET status = %s, finished_at = now() WHERE id = %s",
        ("failed" if failed else "passed", audit_run_id),
    )
    return failed
