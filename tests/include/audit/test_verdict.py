"""An audit's verdict as an FSAR report: the documented rule (severity the sum of the failed
gates' weights, at most 100; blocking when any failed gate blocks), every gate's policy, and a
report that the format reads back (fast tier)."""

from __future__ import annotations

import pytest

from include.audit import fsar
from include.audit.gates import GATE_POLICY, GATES
from include.audit.verdict import Failure, audit_report, blocks, severity


def test_every_gate_and_every_gate_step_declares_its_weight_blocking_and_remediation():
    from tests.project import DAGS_DIR

    step_gates = {"adversarial_probes", "alarm_delivery"}
    assert step_gates <= set(GATE_POLICY) and set(GATES) <= set(GATE_POLICY)
    assert set(GATE_POLICY) == set(GATES) | step_gates  # no policy for a gate that is gone
    assert '"adversarial_probes", "alarm_delivery"' in (DAGS_DIR / "adversarial_audit.py").read_text()
    for gate, policy in GATE_POLICY.items():
        assert 1 <= policy.weight <= 100 and isinstance(policy.blocks, bool), gate
        assert len(policy.remediation) > 30, f"{gate}: a remediation says what to run or change"


def test_severity_is_the_sum_of_the_failed_weights_capped_and_any_blocking_gate_blocks():
    backup = Failure("backup_fresh_and_restored", {"age_hours": 51}, 26)  # 40, blocks
    pending = Failure("migrations_not_pending_too_long", ["0011"], 7)  # 20, does not
    assert (severity([pending]), blocks([pending])) == (20, False)
    assert (severity([backup, pending]), blocks([backup, pending])) == (60, True)
    assert severity([Failure(g) for g in GATE_POLICY]) == 100
    assert (severity([Failure("daily_digest", finished=False)]), blocks([Failure("x", finished=False)])) == (
        10,
        False,
    )
    assert (severity([]), blocks([])) == (0, False)


@pytest.mark.parametrize(
    "failures",
    [
        [],
        [Failure("queue_dead_without_error", 3, 0)],
        [
            Failure(
                "model_champion_artifacts_verify",
                {"previous": {"version_id": 7}, "champion": "`x`\n## Risks"},
                "ok",
            ),
            Failure("daily_digest", finished=False),
        ],
    ],
    ids=["passing", "one", "evidence-with-markdown"],
)
def test_the_audit_report_names_each_failed_gate_and_round_trips(failures):
    report = audit_report(41, "scheduled__2026-12-01T05:00:00+00:00", failures)
    assert fsar.parse(fsar.render(report)) == report
    assert report.id == audit_report(41, "scheduled__2026-12-01T05:00:00+00:00", []).id  # per DAG run
    assert (report.severity, report.block_execution) == (severity(failures), blocks(failures))
    for failure in failures:
        assert f"`{failure.gate}`" in report.proposal
    if not failures:
        assert report.severity == 0 and "passed every gate" in report.proposal
    if any(f.gate == "model_champion_artifacts_verify" for f in failures):
        assert "roll back the offer model to version 7" in report.proposal
