"""Adversarial probes in a sandbox database: every hostile input is refused or quarantined with a
reason, and production is byte-for-byte unchanged (schema dump, every table's row checksum)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg2
import pytest

from include import probes
from include.migrations import current
from tests.include.offers_fixtures import cursor

pytestmark = pytest.mark.stack

AUDIT_DAG = Path(__file__).resolve().parents[2] / "dags" / "adversarial_audit.py"


def _databases(dsn: str) -> set[str]:
    with cursor(dsn) as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'probe_sandbox_%'")
        return {name for (name,) in cur.fetchall()}


def _audit_params():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(AUDIT_DAG)).dags["adversarial_audit"].params


@pytest.fixture
def production(app_head_dsn) -> str:
    """Production stand-in: an app database at head with every table seeded."""
    from include.seed import seed

    seed(app_head_dsn, scale=0.01)
    return app_head_dsn


def test_every_probe_is_refused_or_quarantined_and_production_is_unchanged(production):
    offers_dsn = production
    marker = f"probe{uuid.uuid4().hex[:10]}"
    before = probes.production_state(offers_dsn)
    sandboxes_before = _databases(offers_dsn)
    with probes.sandbox(offers_dsn, current(offers_dsn)) as sandbox_dsn:
        results = probes.run_all(sandbox_dsn, marker) + probes.param_probes(_audit_params(), "adversarial_audit")
        with cursor(sandbox_dsn) as cur:  # the probes did reach the sandbox's tables
            assert probes.marker_hits(cur, marker) == {"execution_tasks": 7, "offer_quarantine": 6, "payments": 1}
    assert probes.report(results).count("\n") == len(results) - 1

    assert [str(r) for r in results if not r.held] == []
    by_name = {r.probe: r for r in results}
    assert len(by_name) == len(results) > 40
    assert by_name["handler_oversized_prompt"].reason.startswith("PermanentError: payload.prompt has 5000000")
    assert "payload.inputs.count must be an integer" in by_name["handler_count_is_a_boolean"].reason
    assert "execution_tasks_ai_model_format" in by_name["enqueue_injected_ai_model"].reason
    assert "execution_tasks_task_type_check" in by_name["enqueue_injected_task_type"].reason
    assert "NUL character" in by_name["enqueue_nul_character"].reason
    assert by_name["charge_negative_amount"].reason.startswith("negative or missing amount -500")
    assert by_name["charge_coupon_is_injection"].outcome == "quarantined"
    assert by_name["training_negative_amount"].reason == "negative amount"
    assert {r.outcome for r in results} == {"refused", "quarantined", "inert"}
    assert all(r.outcome == "refused" for r in results if r.probe.startswith("param_"))

    assert probes.state_differences(before, probes.production_state(offers_dsn)) == []
    assert _databases(offers_dsn) == sandboxes_before, "the sandbox is dropped"
    with cursor(offers_dsn) as cur:
        assert probes.marker_hits(cur, marker) == {}


def test_the_proof_sees_a_changed_row_and_a_marked_row(app_head_dsn):
    before = probes.production_state(app_head_dsn)
    with cursor(app_head_dsn) as cur:
        cur.execute("INSERT INTO execution_tasks (task_type, payload) VALUES ('idea', '{\"m\": \"leak-xyz\"}')")
        assert probes.marker_hits(cur, "leak-xyz") == {"execution_tasks": 1}
    differences = probes.state_differences(before, probes.production_state(app_head_dsn))
    assert len(differences) == 1 and differences[0].startswith("table execution_tasks: rows [0,")
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE users ADD COLUMN nickname text")
    conn.close()
    assert "the schema dump changed" in probes.state_differences(before, probes.production_state(app_head_dsn))


def test_an_entry_point_that_lets_bad_input_through_is_reported_broken():
    result = probes._refusal("lenient", "f", lambda: 1, (ValueError,))
    assert (result.outcome, result.held) == ("ACCEPTED", False) and str(result).startswith("BROKEN")


def test_entry_points_not_migrated_in_yet_are_skipped_not_failed(app_dsn):
    """At the baseline (no ai_model, no offer tables) the queue and payment probes cannot run."""
    assert probes.applicable(app_dsn) == {"queue": False, "offers": False}
    results = probes.run_all(app_dsn, "baseline")
    assert results and all(r.held for r in results)
    assert {r.entry_point for r in results} == {"task_handlers.validate_payload", "task_handlers.resolve_ai_model",
                                                "offers.model.quarantine_reasons"}
