"""The audit gates that reach beyond the app database, against the real servers (PostgreSQL,
moto S3, localstripe) through the Airflow adapter: each passes while its invariant holds and
fails when the invariant is broken on purpose."""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

from devstack.stack import BACKUP_BUCKET, MODEL_BUCKET
from include.audit.gates import DEFAULT_LIMITS, GATES, NO_MODEL_YET
from include.offers import jobs, registry
from include.offers import model as m
from tests import offers_fixtures
from tests.airflow_api import postgres_connection
from tests.offers_fixtures import cursor, snapshot_uri, stripe_test_helper

offers_dsn = offers_fixtures.offers_dsn  # the shared fixture


@pytest.fixture
def services(local_stack, tmp_path):
    from execplatform.steps.audit_steps import AirflowServices

    (tmp_path / "logs").mkdir()
    return AirflowServices(log_folder=str(tmp_path / "logs"))


def gate(dsn: str, name: str, services, **limits):
    with cursor(dsn) as cur:
        return GATES[name](cur, {**DEFAULT_LIMITS, **limits}, services)


def execute(dsn: str, statement: str, args=()) -> list[tuple]:
    with cursor(dsn) as cur:
        cur.execute(statement, args)
        return cur.fetchall() if cur.description else []


# --- backups ----------------------------------------------------------------------------------


@pytest.fixture
def verified_backup(app_head_dsn, monkeypatch, tmp_path, local_stack) -> dict:
    """A small seeded app database as connection `app_db`, backed up to moto S3 and verified."""
    from devstack.demo_data import seed
    from execplatform.operators.backup_operators import PostgresBackupOperator, VerifyBackupOperator

    seed(app_head_dsn, scale=0.01)
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    done = PostgresBackupOperator(
        task_id="dump",
        bucket=BACKUP_BUCKET,
        prefix=f"test/{uuid.uuid4().hex}",
        work_dir=str(tmp_path / "work"),
    ).execute({})
    VerifyBackupOperator(task_id="verify", backup_id=done["backup_id"]).execute({})
    return {"dsn": app_head_dsn, **done}


def _scratch_databases(dsn: str) -> int:
    return execute(dsn, "SELECT count(*) FROM pg_database WHERE datname LIKE 'audit_restore_%%'")[0][0]


def test_the_newest_backup_restores_now(verified_backup, services):
    dsn = verified_backup["dsn"]
    evidence = gate(dsn, "backup_restores_now", services)
    assert evidence.passed, evidence
    tasks = execute(dsn, "SELECT count(*) FROM execution_tasks")[0][0]
    assert evidence.observed["backup_id"] == verified_backup["backup_id"]
    assert evidence.observed["tables"]["execution_tasks"] == tasks > 0 and evidence.observed["problems"] == []
    assert _scratch_databases(dsn) == 0, "the scratch database is dropped"
    assert not gate(dsn, "backup_restores_now", services, backup_restore_max_minutes=0).passed  # configurable


def test_a_backup_that_no_longer_restores_fails(verified_backup, services, tmp_path):
    from include.backup.archive import sha256_file

    dsn = verified_backup["dsn"]
    client = services.s3()
    bucket, _, prefix = verified_backup["location"].removeprefix("s3://").partition("/")
    # rows differ: someone rewrote what the dump recorded, and the catalog's checksum of it
    expected = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}expected.json")["Body"].read())
    expected["row_counts"]["public.execution_tasks"] += 1
    client.put_object(Bucket=bucket, Key=f"{prefix}expected.json", Body=json.dumps(expected).encode())
    local = tmp_path / "expected.json"
    local.write_text(json.dumps(expected))
    execute(
        dsn,
        "UPDATE backups SET manifest = jsonb_set(manifest, '{expected.json}', to_jsonb(%s::text)) WHERE id = "
        "%s",
        (sha256_file(local), verified_backup["backup_id"]),
    )
    evidence = gate(dsn, "backup_restores_now", services)
    assert not evidence.passed and "execution_tasks" in evidence.observed["problems"][0]

    # a data file corrupted in S3: the restore is refused, naming the file
    data_key = next(
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        if o["Key"].endswith(".dat.gz")
    )
    client.put_object(Bucket=bucket, Key=data_key, Body=b"not a dump")
    evidence = gate(dsn, "backup_restores_now", services)
    assert not evidence.passed and "ChecksumMismatch" in evidence.observed["error"]
    assert data_key.rsplit("/", 1)[1] in evidence.observed["error"]
    assert _scratch_databases(dsn) == 0

    execute(dsn, "UPDATE backups SET status = 'deleted'")
    evidence = gate(dsn, "backup_restores_now", services)
    assert not evidence.passed and evidence.observed == "no verified backup exists"


# --- model ------------------------------------------------------------------------------------

NOW = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def trained_template(pg_server, app_head_template, local_stack):
    """A seeded database whose first model was trained and promoted by the real jobs, kept as
    a template: training is the slow part, so the model tests copy it rather than retrain."""
    from devstack.demo_data import seed
    from execplatform.steps.audit_steps import AirflowServices

    name = f"app_trained_{uuid.uuid4().hex[:8]}"
    _admin(pg_server, f'CREATE DATABASE "{name}" OWNER app TEMPLATE "{app_head_template}"')
    dsn = pg_server.app_dsn(name)
    seed(dsn, scale=offers_fixtures.SEED_SCALE)
    s3, snapshot = AirflowServices().s3(), snapshot_uri(f"audit-{name}")
    with cursor(dsn) as cur:
        jobs.extract(cur, s3, snapshot, NOW)
    with cursor(dsn) as cur:
        trained = jobs.train(cur, s3, snapshot_uri=snapshot, bucket=MODEL_BUCKET, valid_days=21)
    with cursor(dsn) as cur:
        evaluation = jobs.evaluate(
            cur,
            s3,
            snapshot_uri=snapshot,
            version_id=trained["version_id"],
            valid_from=trained["valid_from"],
        )
        assert jobs.promote_or_keep(cur, evaluation, registry.Gates())["promoted"]
    yield name
    _admin(pg_server, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def trained_dsn(pg_server, trained_template):
    name = f"app_{uuid.uuid4().hex[:12]}"
    _admin(pg_server, f'CREATE DATABASE "{name}" OWNER app TEMPLATE "{trained_template}"')
    yield pg_server.app_dsn(name)
    _admin(pg_server, f'DROP DATABASE "{name}" WITH (FORCE)')


def _admin(server, statement: str) -> None:
    admin = psycopg2.connect(server.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(statement)
    admin.close()


def _promote_a_copy(dsn: str, s3) -> int:
    """A new champion: the current champion's artifact under a new version and key, promoted
    (the template's first artifact stays untouched for the other tests)."""
    with cursor(dsn) as cur:
        old = registry.champion(cur, m.MODEL_NAME)
        number = registry.next_version(cur, m.MODEL_NAME)
        uri = (
            registry.version_prefix(MODEL_BUCKET, m.MODEL_NAME, number)
            + f"model-{uuid.uuid4().hex[:8]}.skops"
        )
        registry.put_object(s3, uri, registry.get_object(s3, old.artifact_uri))
        cur.execute("SELECT trained_from, trained_to FROM model_versions WHERE id = %s", (old.id,))
        trained_from, trained_to = cur.fetchone()
        new = registry.register(
            cur,
            m.MODEL_NAME,
            version=number,
            artifact_uri=uri,
            artifact_sha256=old.artifact_sha256,
            metrics=old.metrics,
            trained_from=trained_from,
            trained_to=trained_to,
            data_fingerprint="copy",
            code_version="copy",
        )
        registry.store_plots(cur, new.id, registry.stored_plots(cur, old.id))
        registry.promote(cur, m.MODEL_NAME, new.id)
    return new.id


def test_the_champion_and_its_predecessor_verify_and_score_on_fresh_data(app_head_dsn, trained_dsn, services):
    for name in ("model_champion_artifacts_verify", "model_auc_on_fresh_data"):
        before = gate(app_head_dsn, name, services)
        assert before.passed and before.observed == NO_MODEL_YET  # no model trained: nothing to vouch for yet
    # the first training under way (CI saw an audit run meanwhile): a candidate, never a champion yet
    execute(
        app_head_dsn,
        "INSERT INTO model_versions (model_name, version) VALUES ('offer_redemption', 1)",
    )
    for name in ("model_champion_artifacts_verify", "model_auc_on_fresh_data"):
        assert gate(app_head_dsn, name, services).observed == NO_MODEL_YET

    first = execute(trained_dsn, "SELECT id FROM model_versions WHERE status = 'champion'")[0][0]
    second = _promote_a_copy(trained_dsn, services.s3())
    artifacts = gate(trained_dsn, "model_champion_artifacts_verify", services)
    assert artifacts.passed, artifacts
    assert (
        artifacts.observed["champion"]["version_id"] == second
        and artifacts.observed["previous"]["version_id"] == first
    )
    auc = gate(trained_dsn, "model_auc_on_fresh_data", services)
    assert auc.passed, auc
    assert (
        auc.observed["version_id"] == second
        and auc.observed["rows"] >= DEFAULT_LIMITS["model_fresh_min_rows"]
    )
    assert auc.observed["auc"] >= DEFAULT_LIMITS["model_min_auc"]


def test_a_tampered_artifact_a_lost_champion_or_a_weak_model_fails(trained_dsn, services):
    s3 = services.s3()
    previous = _promote_a_copy(trained_dsn, s3)
    champion = _promote_a_copy(trained_dsn, s3)

    assert not gate(trained_dsn, "model_auc_on_fresh_data", services, model_min_auc=0.999).passed
    assert not gate(trained_dsn, "model_auc_on_fresh_data", services, model_fresh_min_rows=10**9).passed

    # the previous champion's artifact altered in S3: a rollback would not load
    with cursor(trained_dsn) as cur:
        uri = registry.get(cur, previous).artifact_uri
    registry.put_object(s3, uri, registry.get_object(s3, uri) + b"\0")
    evidence = gate(trained_dsn, "model_champion_artifacts_verify", services)
    assert not evidence.passed and evidence.observed["champion"]["verified"]
    assert (
        evidence.observed["previous"]["version_id"] == previous
        and not evidence.observed["previous"]["verified"]
    )
    assert "ArtifactRefused" in evidence.observed["previous"]["error"]

    execute(trained_dsn, "UPDATE model_versions SET status = 'retired' WHERE id = %s", (champion,))
    for name in ("model_champion_artifacts_verify", "model_auc_on_fresh_data"):
        evidence = gate(trained_dsn, name, services)
        assert not evidence.passed and "no champion" in evidence.observed


# --- Stripe and ROI ---------------------------------------------------------------------------

SEGMENTS = ("new", "casual", "regular", "vip")


def _published_offers(dsn: str) -> int:
    """A model version with an id of its own (localstripe lives for the whole session) whose
    offers are published to Stripe by the real operator."""
    from execplatform.operators.stripe_operators import PublishOffersOperator

    version_id = random.randint(10**9, 2 * 10**9)
    with cursor(dsn) as cur:
        cur.execute(
            "INSERT INTO model_versions (id, model_name, version, status) OVERRIDING SYSTEM VALUE "
            "VALUES (%s, 'audit_test', 1, 'candidate')",
            (version_id,),
        )
        cur.execute("SELECT id, code FROM offers WHERE discount_pct > 0 ORDER BY id LIMIT 4")
        for segment, (offer_id, code) in zip(SEGMENTS, cur.fetchall(), strict=True):
            coupon = jobs.coupon_id(version_id, segment, code)
            cur.execute(
                "INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id, "
                "stripe_coupon_id) VALUES (%s, %s, %s, %s, %s)",
                (version_id, segment, offer_id, f"prod_{coupon}", coupon),
            )
    PublishOffersOperator(task_id="publish", model_version_id=version_id).execute({})
    return version_id


def test_every_published_offer_is_in_stripe_exactly_once(offers_dsn, services):
    empty = gate(offers_dsn, "stripe_offers_published_once", services)
    assert empty.passed and empty.observed["published"] == 0
    _published_offers(offers_dsn)
    evidence = gate(offers_dsn, "stripe_offers_published_once", services)
    assert evidence.passed, evidence
    assert evidence.observed["published"] == 4


def test_a_retired_offer_is_gone_from_stripe_and_publishing_it_again_restores_it(offers_dsn, services):
    """A rolled-back version's offers: their coupons deleted (nobody can redeem them), which the
    gate checks; a re-run deletes nothing more; publishing the version again (it is rolled back
    to) makes them anew."""
    from execplatform.operators.stripe_operators import PublishOffersOperator
    from execplatform.steps.offer_steps import retire_offers

    version_id = _published_offers(offers_dsn)
    retire = "UPDATE offer_publications SET retired_at = now() WHERE model_version_id = %s"
    execute(offers_dsn, retire, (version_id,))  # marked retired, coupons left live: the gate sees it
    problems = gate(offers_dsn, "stripe_offers_published_once", services).observed["problems"]
    assert len(problems) == 4 and all(p.endswith(": retired, still in Stripe") for p in problems), problems
    execute(
        offers_dsn,
        "UPDATE offer_publications SET retired_at = NULL WHERE model_version_id = %s",
        (version_id,),
    )

    assert retire_offers(version_id) == {"model_version_id": version_id, "retired": 4, "deleted": 4}
    evidence = gate(offers_dsn, "stripe_offers_published_once", services)
    assert evidence.passed and (evidence.observed["published"], evidence.observed["retired"]) == (0, 4), (
        evidence
    )
    assert retire_offers(version_id)["retired"] == 0  # a re-run: nothing left to retire
    execute(
        offers_dsn,
        "UPDATE offer_publications SET retired_at = NULL WHERE model_version_id = %s",
        (version_id,),
    )
    assert retire_offers(version_id)["deleted"] == 0, "a coupon already gone counts as deleted (404)"

    PublishOffersOperator(task_id="publish", model_version_id=version_id).execute({})
    evidence = gate(offers_dsn, "stripe_offers_published_once", services)
    assert evidence.passed and (evidence.observed["published"], evidence.observed["retired"]) == (4, 0), (
        evidence
    )


def test_a_missing_duplicated_or_different_offer_in_stripe_fails(offers_dsn, services):
    from execplatform.hooks.stripe_hook import StripeHook

    version_id = _published_offers(offers_dsn)
    client = StripeHook().get_conn()
    (vip_coupon, vip_code), (new_coupon,) = (
        execute(
            offers_dsn,
            "SELECT p.stripe_coupon_id, o.code FROM offer_publications p JOIN offers o ON o.id = p.offer_id "
            "WHERE p.model_version_id = %s AND p.segment = 'vip'",
            (version_id,),
        )[0],
        execute(
            offers_dsn,
            "SELECT stripe_coupon_id FROM offer_publications WHERE model_version_id = %s AND segment = 'new'",
            (version_id,),
        )[0],
    )
    # a second coupon for the same offer under another id (a publish that ignored the deterministic id)
    client.v1.coupons.create(
        {
            "id": f"dup-{vip_coupon}",
            "percent_off": 10,
            "duration": "once",
            "metadata": {"model_version_id": str(version_id), "segment": "vip", "offer_code": vip_code},
        }
    )
    evidence = gate(offers_dsn, "stripe_offers_published_once", services)
    assert not evidence.passed and evidence.observed["problems"] == [
        f"coupons of model version {version_id} segment vip offer {vip_code} also in Stripe as "
        f"['dup-{vip_coupon}']"
    ]
    client.v1.coupons.delete(f"dup-{vip_coupon}")
    assert gate(offers_dsn, "stripe_offers_published_once", services).passed

    client.v1.coupons.delete(new_coupon)  # a published offer gone from Stripe
    execute(offers_dsn, "UPDATE offers SET discount_pct = discount_pct + 1 WHERE code = %s", (vip_code,))
    problems = gate(offers_dsn, "stripe_offers_published_once", services).observed["problems"]
    assert f"coupons {new_coupon}: 0 in Stripe, expected 1" in problems
    assert any(p.startswith(f"coupons {vip_coupon}: percent_off") for p in problems)


CARD = {
    "type": "card",
    "card": {"number": "4242424242424242", "exp_month": 1, "exp_year": 2031, "cvc": "321"},
}


def _charge(
    client, user_id: int, amount: int, coupon: str | None = None, method: dict = CARD, **extra
) -> dict:
    """A Stripe charge of app user `user_id`, who redeemed `coupon` when one is given."""
    source = client.v1.payment_methods.create(method).id
    metadata = {"user_id": str(user_id), **({"coupon": coupon} if coupon else {})}
    params = {"amount": amount, "currency": "usd", "source": source, "metadata": metadata}
    return client.v1.charges.create({**params, **extra}).to_dict()


@pytest.fixture
def synced_payments(offers_dsn) -> list[str]:
    """Charges made in Stripe and synced into the ledger by the real operator; the cursor has
    moved past them (a later charge, a second later, was synced too)."""
    from execplatform.hooks.stripe_hook import StripeHook
    from execplatform.operators.stripe_operators import SyncStripePaymentsOperator

    client = StripeHook().get_conn()
    made = [_charge(client, user_id, 1000 + user_id)["id"] for user_id in range(1, 6)]
    time.sleep(1.1)  # Stripe's clock has one-second resolution: the next charge is in a later second
    _charge(client, 6, 999)
    SyncStripePaymentsOperator(task_id="sync").execute({})
    return made


def test_the_payments_ledger_reconciles_with_stripe(offers_dsn, services, synced_payments):
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed, evidence
    assert evidence.observed["stripe"]["charges"] == evidence.observed["ledger"]["payments"] >= 5
    assert evidence.observed["stripe"]["amount_cents"] == evidence.observed["ledger"]["amount_cents"]


def test_a_payment_missing_invented_or_altered_in_the_ledger_fails(offers_dsn, services, synced_payments):
    lost, altered = synced_payments[0], synced_payments[1]
    execute(offers_dsn, "DELETE FROM payments WHERE stripe_payment_id = %s", (lost,))
    execute(
        offers_dsn,
        "UPDATE payments SET amount_cents = amount_cents + 100 WHERE stripe_payment_id = %s",
        (altered,),
    )
    execute(
        offers_dsn,
        "INSERT INTO payments (stripe_payment_id, user_id, amount_cents, status, created_at) "
        "VALUES ('ch_invented', 1, 5000, 'succeeded', now() - interval '1 hour')",
    )
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert not evidence.passed
    assert (
        evidence.observed["missing_in_ledger"],
        evidence.observed["mismatched"],
        evidence.observed["not_in_stripe"],
    ) == ([lost], [altered], ["ch_invented"])


def _sync_twice_and_compare(offers_dsn) -> dict:
    """roi_sync's operator run twice; the second run must change nothing."""
    from execplatform.operators.stripe_operators import SyncStripePaymentsOperator

    operator = SyncStripePaymentsOperator(task_id="sync")
    tables = ("SELECT * FROM payments ORDER BY id", "SELECT * FROM payment_disputes ORDER BY 1")
    first = operator.execute({})
    synced = [execute(offers_dsn, query) for query in tables]
    second = operator.execute({})
    assert second["inserted"] == second["updated"] == 0, second
    assert second["disputes_inserted"] == second["disputes_updated"] == 0, second
    assert [execute(offers_dsn, query) for query in tables] == synced  # nothing doubles
    return first


def _live_offer(offers_dsn, users: int):
    """A champion whose published offer (with a discount) is assigned to `users` users of one
    segment an hour ago. Returns (version id, its Stripe coupon, the users, the discount %)."""
    segment, ids = execute(
        offers_dsn,
        "SELECT segment, (array_agg(id ORDER BY id))[1:%s] FROM users GROUP BY segment"
        " ORDER BY segment LIMIT 1",
        (users,),
    )[0]
    offer_id, code, pct = execute(
        offers_dsn, "SELECT id, code, discount_pct FROM offers WHERE discount_pct > 0 ORDER BY id LIMIT 1"
    )[0]
    version_id = random.randint(10**6, 10**9)
    coupon = jobs.coupon_id(version_id, segment, code)
    with cursor(offers_dsn) as cur:
        cur.execute(
            "INSERT INTO model_versions (id, model_name, version, status) OVERRIDING SYSTEM VALUE"
            " VALUES (%s, 'money_test', 1, 'champion')",
            (version_id,),
        )
        cur.execute(
            "INSERT INTO offer_publications (model_version_id, segment, offer_id, stripe_product_id,"
            " stripe_coupon_id) VALUES (%s, %s, %s, %s, %s)",
            (version_id, segment, offer_id, f"prod_{coupon}", coupon),
        )
        for user_id in ids:
            cur.execute(
                "INSERT INTO offer_assignments (model_version_id, user_id, segment, offer_id, holdout,"
                " assigned_at) VALUES (%s, %s, %s, %s, false, now() - interval '1 hour')",
                (version_id, user_id, segment, offer_id),
            )
    return version_id, coupon, ids, float(pct)


def _attributed_revenue(offers_dsn, version_id: int) -> int:
    with cursor(offers_dsn) as cur:
        (roi,) = jobs.compute_roi(cur, version_id)
    return roi.attributed_revenue_cents


def test_refunds_and_late_succeeding_or_failing_charges_reconcile(offers_dsn, services):
    """A charge refunded in part after it was synced, an authorised charge captured later (the
    closest localstripe has to a pending card charge that succeeds: an uncaptured charge is not
    final), and a SEPA debit that is pending and then fails (localstripe's async path, 0.5 s):
    after the sync, `payments` and ROI match Stripe to the cent and the gate passes."""
    from execplatform.hooks.stripe_hook import StripeHook

    client = StripeHook().get_conn()
    version_id, coupon, users, pct = _live_offer(offers_dsn, 3)

    def charge(user_id: int, amount: int, method: dict = CARD, **extra) -> dict:
        return _charge(client, user_id, amount, coupon, method, **extra)

    declined_debit = {"type": "sepa_debit", "sepa_debit": {"iban": "DE62370400440532013001"}}
    refunded = charge(users[0], 5000)
    authorised = charge(users[1], 3000, capture=False)
    debit = charge(users[2], 2000, declined_debit)
    assert (authorised["status"], authorised["captured"], debit["status"]) == ("succeeded", False, "pending")

    first = _sync_twice_and_compare(offers_dsn)
    assert first["pending"] >= 1  # the authorised charge, and the debit if it had not failed yet
    (position,) = execute(
        offers_dsn, "SELECT position FROM sync_cursors WHERE name = %s", (jobs.CHARGES_CURSOR,)
    )[0]
    assert position < authorised["created"]  # held before the charge that is not final
    ids = [refunded["id"], authorised["id"], debit["id"]]
    ledger = (
        "SELECT stripe_payment_id, amount_cents, refunded_cents, status FROM payments"
        " WHERE stripe_payment_id = ANY(%s) ORDER BY amount_cents DESC"
    )
    assert execute(offers_dsn, ledger, (ids,))[0] == (refunded["id"], 5000, 0, "succeeded")

    time.sleep(1.1)  # the refund and capture come later; one more charge moves the cursor past all three
    client.v1.refunds.create({"charge": refunded["id"], "amount": 1500})
    client.v1.charges.capture(authorised["id"])
    charge(users[0], 700)
    _sync_twice_and_compare(offers_dsn)

    stripe = {c: client.v1.charges.retrieve(c) for c in ids}
    assert [(stripe[c].status, stripe[c].amount_refunded) for c in ids] == [
        ("succeeded", 1500),
        ("succeeded", 0),
        ("failed", 0),
    ]
    assert execute(offers_dsn, ledger, (ids,)) == [
        (refunded["id"], 5000, 1500, "succeeded"),
        (authorised["id"], 3000, 0, "succeeded"),
        (debit["id"], 2000, 0, "failed"),
    ]
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed, evidence
    # the newest refund's charge waits for a later refund, as the newest charge for a later charge
    assert evidence.observed["stripe"]["refunded_since_sync"] == 1

    with cursor(offers_dsn) as cur:
        (roi,) = jobs.compute_roi(cur, version_id)
    net = 5000 - 1500 + 3000 + 700  # the failed debit brings nothing, the refund is taken off
    assert roi.attributed_revenue_cents == net
    assert roi.discount_cost_cents == round(net * pct / (100 - pct))

    # refunded in full after the sync: the gate leaves it to the next sync (with the charge of the
    # newest refund that sync read, as above), which takes it
    time.sleep(1.1)  # in a later second than the refund before
    client.v1.refunds.create({"charge": authorised["id"]})
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed and evidence.observed["stripe"]["refunded_since_sync"] == 2, evidence
    _sync_twice_and_compare(offers_dsn)
    assert execute(offers_dsn, ledger, (ids,))[1] == (authorised["id"], 3000, 3000, "refunded")
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed, evidence
    stripe_refunded, ledger_refunded = (evidence.observed[k]["refunded_cents"] for k in ("stripe", "ledger"))
    assert stripe_refunded == ledger_refunded == 1500  # the partial refund; the full one waits
    assert _attributed_revenue(offers_dsn, version_id) == net - 3000


def test_disputes_withhold_until_won_and_reconcile(offers_dsn, services):
    """Charges disputed after they were synced: an open dispute withholds its amount (ROI's net
    revenue drops by exactly it), a won one gives it back, a lost one keeps it; a partial refund
    then a dispute of the rest; a hostile dispute (above what the refunds left) is quarantined
    and the rest synced. Twice synced, nothing doubles; the gate passes, and fails when a
    synced dispute or a charge's withheld amount differs from Stripe's."""
    from execplatform.hooks.stripe_hook import StripeHook

    client = StripeHook().get_conn()
    version_id, coupon, users, _ = _live_offer(offers_dsn, 3)
    won, lost, rest, hostile = (
        _charge(client, user_id, amount, coupon)["id"]
        for user_id, amount in zip(users + users[:1], (5000, 3000, 4000, 2000), strict=True)
    )
    client.v1.refunds.create({"charge": rest, "amount": 1000})
    client.v1.refunds.create({"charge": hostile, "amount": 1500})
    _sync_twice_and_compare(offers_dsn)
    net = 5000 + 3000 + (4000 - 1000) + (2000 - 1500)
    assert _attributed_revenue(offers_dsn, version_id) == net

    disputes = {
        charge: stripe_test_helper(client, "disputes", charge=charge, **amount)["id"]
        for charge, amount in ((won, {}), (lost, {}), (rest, {}), (hostile, {"amount": 2000}))
    }
    first = _sync_twice_and_compare(offers_dsn)
    # the hostile one is quarantined (with the session's other tests' disputes, of charges unknown here)
    assert first["disputes_inserted"] == 3 and first["disputes_quarantined"] >= 1, first
    (reason,) = execute(
        offers_dsn,
        "SELECT reason FROM offer_quarantine WHERE source = 'stripe_disputes' AND source_key = %s",
        (disputes[hostile],),
    )[0]
    assert reason == (
        f"amount 2000 above the 500 left of charge {hostile} (2000 paid, 1500 refunded, 0 withheld by"
        " other disputes)"
    )
    ledger = (
        "SELECT p.stripe_payment_id, p.disputed_cents, d.status FROM payments p"
        " LEFT JOIN payment_disputes d ON d.stripe_charge_id = p.stripe_payment_id"
        " WHERE p.stripe_payment_id = ANY(%s) ORDER BY p.amount_cents"
    )
    ids = [hostile, lost, rest, won]  # by amount
    assert execute(offers_dsn, ledger, (ids,)) == [
        (hostile, 0, None),
        (lost, 3000, "needs_response"),
        (rest, 3000, "needs_response"),  # the 3000 its refund left
        (won, 5000, "needs_response"),
    ]
    assert _attributed_revenue(offers_dsn, version_id) == net - 11000  # exactly what is withheld
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed, evidence
    assert evidence.observed["disputes"]["withheld_cents"] == 11000
    assert evidence.observed["disputes"]["quarantined"] >= 1

    # settled after the sync: the gate leaves the changed open disputes to the next sync, which
    # reads every open one again by id, whatever its cursor
    stripe_test_helper(client, f"disputes/{disputes[won]}/settle", outcome="won")
    client.v1.disputes.close(disputes[lost])  # accepted: lost
    client.v1.disputes.update(disputes[rest], {"submit": True})  # evidence: under review
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed and evidence.observed["disputes"]["changed_since_sync"] == 3, evidence
    first = _sync_twice_and_compare(offers_dsn)
    assert first["disputes_updated"] == 3, first
    assert execute(offers_dsn, ledger, (ids,)) == [
        (hostile, 0, None),
        (lost, 3000, "lost"),
        (rest, 3000, "under_review"),
        (won, 0, "won"),  # the money is back
    ]
    assert _attributed_revenue(offers_dsn, version_id) == net - 6000
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert evidence.passed and evidence.observed["disputes"]["changed_since_sync"] == 0, evidence
    assert evidence.observed["disputes"]["withheld_cents"] == 6000

    # a final dispute that differs from Stripe's, and a charge withholding what Stripe does not
    execute(
        offers_dsn,
        "UPDATE payment_disputes SET status = 'won' WHERE stripe_dispute_id = %s",
        (disputes[lost],),
    )
    execute(offers_dsn, "UPDATE payments SET disputed_cents = 100 WHERE stripe_payment_id = %s", (won,))
    evidence = gate(offers_dsn, "stripe_payments_reconcile", services)
    assert not evidence.passed
    assert evidence.observed["disputes"]["mismatched"] == [disputes[lost], f"{won}: disputed_cents"]


# --- security ---------------------------------------------------------------------------------


@pytest.fixture
def worker_role(app_head_dsn, pg_server, monkeypatch) -> str:
    """The workers' role provisioned as the stack does it: by a superuser, then its grants by
    the tables' owner; `app_db` is this database (the workers' sessions open on it)."""
    from include.migrations.db_roles import ensure_worker_role, grant_worker_privileges

    admin = psycopg2.connect(pg_server.superuser_dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        ensure_worker_role(cur, member="app")
    admin.close()
    with cursor(app_head_dsn) as cur:
        assert grant_worker_privileges(cur) == [
            "execution_tasks",
            "task_batch_metrics",
            "task_bottleneck_reports",
            "worker_sessions",
            "fsar_reports",
        ]
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    return app_head_dsn


def test_the_worker_role_can_only_do_dml_on_its_tables(worker_role, services):
    evidence = gate(worker_role, "security_worker_role_is_dml_only", services)
    assert evidence.passed, evidence
    assert "SELECT on execution_tasks" in evidence.observed["held"]
    session = evidence.observed["worker_session"]
    assert (session["role"], session["login"]) == ("app_worker", "app")
    assert session["attempts_refused"] > 10  # the DDL attempts and every other table's read


def test_a_worker_role_that_can_read_payments_or_create_tables_fails(worker_role, services):
    execute(worker_role, "GRANT SELECT (amount_cents) ON payments TO app_worker")  # even one column
    evidence = gate(worker_role, "security_worker_role_is_dml_only", services)
    assert not evidence.passed
    assert evidence.observed["problems"] == ["SELECT on payments", "read payments: allowed"]

    execute(
        worker_role,
        "REVOKE ALL ON payments FROM app_worker; GRANT CREATE ON SCHEMA public TO app_worker",
    )
    evidence = gate(worker_role, "security_worker_role_is_dml_only", services)
    assert evidence.observed["problems"] == ["CREATE on the schema public", "CREATE TABLE: allowed"]
    assert execute(worker_role, "SELECT to_regclass('public.audit_worker_probe')") == [(None,)]  # rolled back


def test_the_gate_fails_when_a_drain_connects_as_the_owner(worker_role, services):
    """The role's grants are right, yet a drain that opens its sessions as the schema's owner
    (as every drain did before they switched to the workers' role) fails the gate, which reads
    the roles the drains record; a drain as the workers' role, the way DrainQueueOperator runs
    it, passes."""
    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from include.execution.drain import drain
    from include.execution.task_handlers import Services

    drain(worker_role, services=Services(), owner="task_batch/manual__1/drain[0]")  # the owner's DSN
    evidence = gate(worker_role, "security_worker_role_is_dml_only", services)
    assert not evidence.passed
    assert evidence.observed["recorded_sessions"] == ["app (login app)"]
    [problem] = evidence.observed["problems"]
    assert problem.startswith("a worker ran as 'app' (login 'app', task_batch/manual__1/drain[0], last seen")

    execute(worker_role, "DELETE FROM worker_sessions")
    drain(AppDatabaseHook().worker_dsn(), services=Services(), owner="task_batch/2/drain[0]")
    evidence = gate(worker_role, "security_worker_role_is_dml_only", services)
    assert evidence.passed, evidence
    assert evidence.observed["recorded_sessions"] == ["app_worker (login app)"]


def test_the_gate_opens_a_session_the_way_the_workers_do(worker_role, services, monkeypatch):
    """Where the workers' sessions would open as the owner, the gate says so, and what such a
    session may do; without a way to open one, it cannot vouch for them and fails."""
    monkeypatch.setattr(type(services), "worker_dsn", lambda self: worker_role)  # the owner's DSN
    evidence = gate(worker_role, "security_worker_role_is_dml_only", services)
    problems = evidence.observed["problems"]
    assert not evidence.passed
    assert problems[0] == "the workers' sessions run as 'app' (login 'app'), not 'app_worker'"
    assert {"CREATE TABLE: allowed", "read payments: allowed", "read users: allowed"} <= set(problems)
    evidence = gate(worker_role, "security_worker_role_is_dml_only", None)
    assert evidence.observed["problems"] == ["not checked: no way to open a worker session (no services)"]


def test_the_compose_init_step_provisions_the_role_and_its_grants(
    app_head_dsn, pg_server, monkeypatch, capsys
):
    from execplatform.steps.audit_steps import AirflowServices
    from include.migrations.db_roles import main

    superuser = pg_server.superuser_dsn(parse_dsn(app_head_dsn)["dbname"])  # compose: app is the superuser
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(superuser))
    assert main() == 0 and main() == 0  # idempotent
    assert "app_worker: granted on execution_tasks" in capsys.readouterr().out
    assert execute(
        app_head_dsn,
        "SELECT has_table_privilege('app_worker', 'execution_tasks', 'UPDATE'), "
        "has_table_privilege('app_worker', 'payments', 'SELECT')",
    ) == [(True, False)]
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    assert gate(app_head_dsn, "security_worker_role_is_dml_only", AirflowServices()).passed


def _stripe_key() -> str:
    return json.loads(os.environ["AIRFLOW_CONN_STRIPE_DEFAULT"])["password"]


def test_task_logs_without_secrets_pass(app_head_dsn, services):
    folder = services.task_log_folder()
    log = folder / "dag_id=roi_sync" / "run_id=manual" / "task_id=sync_payments" / "attempt=1.log"
    log.parent.mkdir(parents=True)
    log.write_text("connecting to stripe with key ***\n" * 1000)
    evidence = gate(app_head_dsn, "security_no_secrets_in_task_logs", services)
    assert evidence.passed, evidence
    assert evidence.observed["files_scanned"] == 1
    assert {"connection stripe_default password", "connection app_db password"} <= set(
        evidence.observed["secrets_checked"]
    )


def test_a_secret_in_a_recent_task_log_fails_without_showing_it(app_head_dsn, services):
    folder = services.task_log_folder()
    key = _stripe_key()
    log = folder / "dag_id=roi_sync" / "attempt=1.log"
    log.parent.mkdir(parents=True)
    # across the scanner's 1 MiB read boundary, so a leak split between two reads is found too
    log.write_bytes(b"x" * ((1 << 20) - 5) + f"api_key={key}\n".encode())
    evidence = gate(app_head_dsn, "security_no_secrets_in_task_logs", services)
    assert not evidence.passed
    assert evidence.observed["leaks"] == [
        {"secret": "connection stripe_default password", "file": "dag_id=roi_sync/attempt=1.log"}
    ]
    assert key not in json.dumps(evidence.observed) + str(evidence) + evidence.query

    old = (datetime.now() - timedelta(hours=DEFAULT_LIMITS["log_scan_hours"] + 1)).timestamp()
    os.utime(log, (old, old))  # beyond the scan window: not a recent log
    assert gate(app_head_dsn, "security_no_secrets_in_task_logs", services).passed
    assert not gate(app_head_dsn, "security_no_secrets_in_task_logs", services, log_scan_hours=1000).passed
    log.rename(folder / "moved.log")
    folder.rename(folder.with_name("gone"))
    assert not gate(
        app_head_dsn, "security_no_secrets_in_task_logs", services
    ).passed  # no folder: cannot vouch


def test_a_candidate_worse_than_the_champion_is_refused_before_promotion(trained_dsn, services):
    """The model gates run on the candidate before promotion (offer_model_retrain's
    promote_or_keep): a model trained on shuffled labels passes loosened sanity floors but not
    the gates, so it is rejected and the champion never changes (nothing to roll back)."""
    import gzip
    import io

    from include.audit.gates import model_candidate_gates

    s3 = services.s3()
    snapshot, shuffled = (
        snapshot_uri(f"fresh-{uuid.uuid4().hex[:6]}"),
        snapshot_uri(f"shuffled-{uuid.uuid4().hex[:6]}"),
    )
    with cursor(trained_dsn) as cur:
        champion = registry.champion(cur, m.MODEL_NAME).id
        jobs.extract(cur, s3, snapshot, NOW)
    frame = jobs.read_snapshot(s3, snapshot)
    frame["redeemed"] = frame["redeemed"].sample(frac=1.0, random_state=7).to_numpy()  # no signal left
    buffer = io.BytesIO()
    frame.to_csv(buffer, index=False)
    registry.put_object(s3, shuffled, gzip.compress(buffer.getvalue()), "application/gzip")
    with cursor(trained_dsn) as cur:
        trained = jobs.train(cur, s3, snapshot_uri=shuffled, bucket=MODEL_BUCKET, valid_days=21)
    with cursor(trained_dsn) as cur:
        evaluation = jobs.evaluate(
            cur, s3, snapshot_uri=shuffled, version_id=trained["version_id"], valid_from=trained["valid_from"]
        )
    loose = registry.Gates(margin_auc=-1, min_auc=0, max_log_loss=10, max_brier=1, min_prediction_std=0)
    assert registry.decide(evaluation["challenger"], evaluation["champion"], loose)[
        0
    ]  # the old rule: promote

    seen: list = []

    def gates(cur, version_id):
        evidence = model_candidate_gates(cur, DEFAULT_LIMITS, services, version_id, margin_auc=0.0)
        seen.extend(evidence)
        return [str(e) for e in evidence if not e.passed]

    with cursor(trained_dsn) as cur:
        decision = jobs.promote_or_keep(cur, evaluation, loose, before_promotion=gates)
        status = registry.get(cur, trained["version_id"]).status
        assert registry.champion(cur, m.MODEL_NAME).id == champion
    by_gate = {e.gate: e for e in seen}
    assert by_gate["model_candidate_artifact_verifies"].passed
    worse = by_gate["model_candidate_not_worse_than_champion"]
    assert not worse.passed and worse.observed["auc"] < worse.observed["champion_auc"], worse
    assert not by_gate["model_candidate_auc_on_fresh_data"].passed  # a coin toss is under the floor
    assert not decision["promoted"] and decision["champion_id"] == champion
    assert decision["reason"].startswith("refused before promotion by the model gates")
    assert "model_candidate_not_worse_than_champion" in decision["reason"]
    assert status == "rejected"

    # the champion itself, as a candidate, passes every gate: the gates can pass
    with cursor(trained_dsn) as cur:
        assert all(e.passed for e in model_candidate_gates(cur, DEFAULT_LIMITS, services, champion)), seen
