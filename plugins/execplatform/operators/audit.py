"""The steps of adversarial_audit: run a gate against `app_db`, record its evidence, report."""

from __future__ import annotations

import logging
from typing import Any

from execplatform.operators.backup import app_cursor

logger = logging.getLogger(__name__)


def start(conn_id: str, run_id: str) -> int:
    from include.audit import start_audit

    with app_cursor(conn_id) as cur:
        return start_audit(cur, run_id)


def check_gate(conn_id: str, audit_run_id: int, gate: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Run one gate; its evidence is recorded whatever the verdict, and a failure is hard."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audit import DEFAULT_LIMITS, GATES, record

    with app_cursor(conn_id) as cur:
        evidence = GATES[gate](cur, {**DEFAULT_LIMITS, **{k: v for k, v in limits.items() if k in DEFAULT_LIMITS}})
        record(cur, audit_run_id, evidence)
    logger.info("%s\nquery: %s", evidence, evidence.query)
    if not evidence.passed:
        raise AirflowFailException(str(evidence))
    return {"gate": gate, "observed": evidence.observed}


def report(conn_id: str, audit_run_id: int, gates: list[str]) -> dict[str, Any]:
    """The audit's table in the log; fails naming every failed gate (critical alert)."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audit import finish_audit

    with app_cursor(conn_id) as cur:
        failed = finish_audit(cur, audit_run_id, gates)
        cur.execute("SELECT gate, passed, observed, threshold FROM audit_findings WHERE audit_run_id = %s "
                    "ORDER BY gate", (audit_run_id,))  # fmt: skip
        rows = cur.fetchall()
    table = "\n".join(f"{'PASS' if ok else 'FAIL'}  {gate:<36} observed={observed} limit={limit}"
                      for gate, ok, observed, limit in rows)  # fmt: skip
    logger.info("audit %s:\n%s", audit_run_id, table)
    if failed:
        raise AirflowFailException(f"adversarial audit {audit_run_id} failed gates: {', '.join(failed)}")
    return {"audit_run_id": audit_run_id, "gates": len(rows)}
