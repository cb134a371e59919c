"""An audit run's verdict as an FSAR proposal report (include.audit.fsar).

**The rule.** Each gate declares a weight and whether its failure blocks execution
(`include.audit.gates.GATE_POLICY`; an audit step that did not finish weighs
`UNFINISHED_STEP`'s 10 and blocks nothing). A report's severity is the sum of its failed gates'
weights, at most 100; it blocks execution when any failed gate blocks. A passing audit issues a
report of severity 0 that blocks nothing. The proposal names each failed gate with its evidence
(observed and limit) and its remediation; risks and mitigations are the platform's.

The report's id is derived from the audit's DAG run, so a re-run of that run re-issues the same
report from its new findings.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from include.audit import fsar
from include.audit.gates import GATE_POLICY, UNFINISHED_STEP, GatePolicy

REPORT_NAMESPACE = uuid.UUID("6a1f3c52-2b7e-4d0a-9f3e-5c8b1d2e4f60")  # audit report ids: uuid5(this, run)
TASK_TYPE = "self_improvement"  # the platform repairing itself

RISKS_BLOCKING = (
    fsar.Risk(
        "Execution",
        "while this report is open task_batch claims nothing, and offers and models are not published",
    ),
)
RISKS_FAILED = (
    fsar.Risk(
        "Integrity",
        "a failed gate means an invariant of the platform does not hold; work done on top of it may "
        "need repair",
    ),
    fsar.Risk(
        "Recovery", "each hour the invariant stays broken adds work that a restore or a rollback would undo"
    ),
)
RISKS_PASSED = (
    fsar.Risk("Blind spot", "a gate passes only what it checks; an invariant no gate checks can still break"),
)
MITIGATIONS_FAILED = (
    "the remediation DAGs stay available while execution is blocked: `db_backup`, `db_restore`, "
    "`db_migrate`, `adversarial_audit`",
    "this report closes itself when a later `adversarial_audit` passes every gate it names; a person may "
    "resolve it with a reason (`fsar_intake` with `resolve_report`)",
)
MITIGATIONS_PASSED = (
    "the audit runs daily and after every verified backup, applied migration and new champion",
)


@dataclass(frozen=True)
class Failure:
    """A failed gate (or an audit step that did not finish) and its evidence."""

    gate: str
    observed: Any = None
    limit: Any = None
    finished: bool = True  # False: a step that did not finish, so it left no finding


def policy(failure: Failure) -> GatePolicy:
    if not failure.finished:
        return UNFINISHED_STEP
    return GATE_POLICY.get(failure.gate, UNFINISHED_STEP)


def severity(failures: Sequence[Failure]) -> int:
    return min(100, sum(policy(f).weight for f in failures))


def blocks(failures: Sequence[Failure]) -> bool:
    return any(policy(f).blocks for f in failures)


def _inline(value: Any, limit: int = 300) -> str:
    """A value as one line of inline code (no backtick or line break can leave the span)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    text = " ".join(text.replace("`", "'").split())
    return f"`{text[:limit]}{'…' if len(text) > limit else ''}`"


def _previous_version(observed: Any) -> str:
    if isinstance(observed, Mapping) and isinstance(observed.get("previous"), Mapping):
        return str(observed["previous"].get("version_id", "N"))
    return "N (the previous champion: the ops dashboard's Models page)"


def remediation(failure: Failure) -> str:
    return policy(failure).remediation.format(previous=_previous_version(failure.observed))


def audit_report(
    audit_run_id: int, dag_run_id: str, failures: Sequence[Failure], issued_at: datetime | None = None
) -> fsar.FsarReport:
    """The FSAR report of audit `audit_run_id` with these failed gates (none: it passed)."""
    issued_at = issued_at or fsar.now_ms()
    if not failures:
        proposal = (
            f"adversarial audit {audit_run_id} (run {_inline(dag_run_id)}) passed every gate; "
            "nothing to remediate."
        )
    else:
        sections = [
            f"adversarial audit {audit_run_id} (run {_inline(dag_run_id)}) failed {len(failures)} "
            f"gate{'s' if len(failures) > 1 else ''}: severity {severity(failures)} by the sum of "
            "their weights"
            f"{', and execution is blocked' if blocks(failures) else ''}."
        ]
        for n, failure in enumerate(failures, start=1):
            rule = policy(failure)
            blocking = ", blocks execution" if rule.blocks else ""
            heading = f"### {n}. `{failure.gate}` (weight {rule.weight}{blocking})"
            evidence = (
                f"observed {_inline(failure.observed)}, limit {_inline(failure.limit)}"
                if failure.finished
                else "the step did not finish, so it left no finding"
            )
            sections.append(
                f"{heading}\n\n- **Evidence:** {evidence}\n- **Remediation:** {remediation(failure)}"
            )
        proposal = "\n\n".join(sections)
    blocking = blocks(failures)
    return fsar.FsarReport(
        id=f"fsar_{uuid.uuid5(REPORT_NAMESPACE, dag_run_id)}",
        timestamp=issued_at,
        severity=severity(failures),
        block_execution=blocking,
        task_type=TASK_TYPE,
        proposal=proposal,
        risks=(*(RISKS_BLOCKING if blocking else ()), *RISKS_FAILED) if failures else RISKS_PASSED,
        mitigations=MITIGATIONS_FAILED if failures else MITIGATIONS_PASSED,
    )
