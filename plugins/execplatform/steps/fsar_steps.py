"""FSAR reports' steps: the block check that execution runs first, filing a report (the table, S3
and the security events), the audit's report, the intake of reports from outside, and closing one.

The library is include.audit.fsar (the format), include.audit.fsar_store (the table, the block,
S3) and include.audit.verdict (an audit's report)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import APP_DB, AWS

if TYPE_CHECKING:
    from include.audit.fsar import FsarReport
    from include.audit.fsar_store import Blocking, FsarArchive

logger = logging.getLogger(__name__)


def fsar_archive(aws_conn_id: str = AWS) -> FsarArchive:
    """Reports in S3: ``$BACKUP_BUCKET`` (as the backups and recovery events) under
    ``$FSAR_PREFIX`` (default ``fsar``), read when called."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from include.audit.fsar_store import FsarArchive

    client = S3Hook(aws_conn_id=aws_conn_id).get_conn()
    bucket = os.environ.get("BACKUP_BUCKET", "execplatform-backups")
    return FsarArchive(client, bucket, os.environ.get("FSAR_PREFIX", "fsar"))


# -- the block ---------------------------------------------------------------------------------


def check_block(app_conn_id: str = APP_DB) -> Blocking | None:
    """The open report that blocks execution, or None. The first caller to see a report's block
    sends its alert (error: email), once per report however many runs it stops."""
    from execplatform.notifiers.alert_notifier import send_alert
    from include.audit.fsar_store import blocking_report, mark_block_alerted

    with AppDatabaseHook(app_conn_id).cursor() as cur:
        blocking = blocking_report(cur)
        first = blocking is not None and mark_block_alerted(cur, blocking.id)
    if first:
        send_alert("error", str(blocking))
    return blocking


def stop_if_blocked(ti=None, app_conn_id: str = APP_DB) -> None:
    """End the task, skipped, naming the report, while one blocks execution (its downstream tasks
    are skipped too); XCom `blocked_by` names it."""
    from airflow.sdk.exceptions import AirflowSkipException

    blocking = check_block(app_conn_id)
    if blocking is None:
        return
    logger.warning("%s", blocking)
    if ti is not None:
        ti.xcom_push(
            "blocked_by", {"id": blocking.id, "severity": blocking.severity, "source": blocking.source}
        )
    raise AirflowSkipException(str(blocking))


def refuse_while_blocked(action: str, app_conn_id: str = APP_DB) -> None:
    """Fail, without retries, an action that execution's block stops (publishing offers,
    promoting a model)."""
    from airflow.sdk.exceptions import AirflowFailException

    blocking = check_block(app_conn_id)
    if blocking is not None:
        raise AirflowFailException(f"{action} refused: {blocking}")


# -- filing and closing ------------------------------------------------------------------------


def file_report(
    report: FsarReport,
    *,
    source: str,
    filed_by: str,
    audit_run_id: int | None = None,
    gates: Sequence[str] = (),
    app_conn_id: str = APP_DB,
    aws_conn_id: str = AWS,
) -> dict[str, Any]:
    """Keep a report in `fsar_reports` and S3 (JSON and Markdown); a new blocking report is an
    `execution_blocked` security event."""
    from include.audit.fsar_store import store
    from include.observability.security_events import log_security_event

    archive = fsar_archive(aws_conn_id)
    s3_prefix = archive.report_prefix(report.id)
    with AppDatabaseHook(app_conn_id).cursor() as cur:
        stored = store(
            cur,
            report,
            source=source,
            filed_by=filed_by,
            audit_run_id=audit_run_id,
            gates=gates,
            s3_prefix=s3_prefix,
        )
        if stored and report.block_execution:
            log_security_event(
                cur,
                "execution_blocked",
                "error",
                actor=filed_by,
                report=report.id,
                report_severity=report.severity,
                source=source,
                gates=list(gates),
            )
    state = {"status": "open", "source": source, "filed_by": filed_by, "gates": list(gates)}
    archive.put(report, {**state, "audit_run_id": audit_run_id})
    logger.info(
        "FSAR report %s %s (severity %d, block_execution %s): %s",
        report.id,
        "stored" if stored else "already stored",
        report.severity,
        report.block_execution,
        s3_prefix,
    )
    return {
        "id": report.id,
        "severity": report.severity,
        "block_execution": report.block_execution,
        "stored": stored,
        "s3": s3_prefix,
    }


def close_report(
    report_id: str,
    *,
    closed_by: str,
    resolution: str,
    audit_run_id: int | None = None,
    app_conn_id: str = APP_DB,
    aws_conn_id: str = AWS,
) -> dict[str, Any] | None:
    """Close an open report; closing one that blocked is an `execution_unblocked` security event,
    and a person's closing of an audit's blocking report (before an audit passed its gates) also a
    `block_overridden` one. None when the report was not open."""
    from include.audit.fsar_store import close
    from include.observability.security_events import log_security_event

    with AppDatabaseHook(app_conn_id).cursor() as cur:
        closed = close(cur, report_id, closed_by=closed_by, resolution=resolution, audit_run_id=audit_run_id)
        if closed is None:
            return None
        details = {"report": report_id, "resolution": resolution, "audit_run_id": audit_run_id}
        if closed.blocked:
            log_security_event(cur, "execution_unblocked", "warning", actor=closed_by, **details)
        if closed.blocked and audit_run_id is None and closed.source == "audit":
            log_security_event(
                cur, "block_overridden", "warning", actor=closed_by, gates=list(closed.gates), **details
            )
    state = {"status": "closed", "closed_by": closed_by, "resolution": resolution}
    try:  # the table decides; the S3 copy follows it (a stack restart may have lost moto's copy)
        fsar_archive(aws_conn_id).update_state(report_id, {**state, "closed_by_audit_run_id": audit_run_id})
    except Exception as exc:
        logger.warning("FSAR report %s closed in the table; its S3 copy not updated: %s", report_id, exc)
    logger.info("FSAR report %s closed by %s: %s", report_id, closed_by, resolution)
    return {"id": report_id, "closed_by": closed_by, "was_blocking": closed.blocked}


# -- the audit's report ------------------------------------------------------------------------


def issue_audit_report(
    app_conn_id: str,
    audit_run_id: int,
    dag_run_id: str,
    gates: Sequence[str],
    steps: Sequence[str] = (),
    unfinished: Sequence[str] = (),
) -> dict[str, Any]:
    """The FSAR report of an audit run (include.audit.verdict) from its findings of `gates` and
    the `steps` after them (`unfinished`: those that did not finish), filed; then every open audit
    report whose named gates all passed in this run is closed, recorded with this audit's id. A
    passing audit's own report (severity 0) is closed at once. Each failed gate is a `gate_failed`
    security event."""
    from include.audit.fsar_store import passed_reports
    from include.audit.verdict import Failure, audit_report
    from include.observability.security_events import log_security_event

    with AppDatabaseHook(app_conn_id).cursor() as cur:
        cur.execute(
            "SELECT gate, passed, observed, threshold FROM audit_findings WHERE audit_run_id = %s",
            (audit_run_id,),
        )
        findings = {gate: (passed, observed, limit) for gate, passed, observed, limit in cur.fetchall()}
        failures = [
            Failure(gate, findings[gate][1], findings[gate][2])
            if gate in findings
            else Failure(gate, finished=False)
            for gate in gates
            if not findings.get(gate, (False,))[0]
        ]
        failures += [Failure(step, finished=False) for step in unfinished]
        for failure in failures:  # every failed gate of the audit, as the audit saw it
            log_security_event(
                cur,
                "gate_failed",
                "warning",
                actor="adversarial_audit",
                gate=failure.gate,
                audit_run_id=audit_run_id,
                finished=failure.finished,
            )
    report = audit_report(audit_run_id, dag_run_id, failures)
    named = [f.gate for f in failures]
    filed = file_report(
        report,
        source="audit",
        filed_by=dag_run_id,
        audit_run_id=audit_run_id,
        gates=named,
        app_conn_id=app_conn_id,
    )
    if not failures:
        close_report(
            report.id,
            closed_by="adversarial_audit",
            resolution=f"audit {audit_run_id} passed every gate",
            audit_run_id=audit_run_id,
            app_conn_id=app_conn_id,
        )
    passed = [name for name in (*gates, *steps) if name not in named]
    with AppDatabaseHook(app_conn_id).cursor() as cur:
        candidates = passed_reports(cur, audit_run_id, passed)
    closed = []
    for report_id, gates_named in candidates:
        resolution = f"audit {audit_run_id} passed every gate this report named: {', '.join(gates_named)}"
        if close_report(
            report_id,
            closed_by="adversarial_audit",
            resolution=resolution,
            audit_run_id=audit_run_id,
            app_conn_id=app_conn_id,
        ):
            closed.append(report_id)
    return {**filed, "failed_gates": named, "closed_reports": closed}


# -- fsar_intake --------------------------------------------------------------------------------


def intake_reports(
    report_text: str, read_inbox: bool, filed_by: str, aws_conn_id: str = AWS
) -> dict[str, Any]:
    """File the report in `report_text` (when not blank) and, with `read_inbox`, every report file
    waiting under the S3 inbox (`<FSAR_PREFIX>/inbox/*.md`). A malformed report is refused with
    the error naming its field and line, and nothing of it is stored: an inbox file moves to
    `refused/` with the error beside it (an `input_refused` security event), and a malformed
    `report_text` fails the task (without retries) once the inbox is read."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audit import fsar
    from include.audit.fsar_store import ReportRefused
    from include.observability.security_events import log_security_event

    filed: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    if read_inbox:
        archive = fsar_archive(aws_conn_id)
        for key in archive.inbox():
            try:
                report = fsar.parse(archive.read(key))
                filed.append(
                    file_report(report, source="external", filed_by=f"s3:{key}", aws_conn_id=aws_conn_id)
                )
            except (fsar.FsarFormatError, ReportRefused) as exc:
                logger.warning("report file %s refused: %s", key, exc)
                log_security_event(
                    None, "input_refused", "warning", actor=f"s3:{key}", what="FSAR report", error=str(exc)
                )
                refused.append(
                    {"source": key, "error": str(exc), "moved_to": archive.file_away(key, False, str(exc))}
                )
                continue
            archive.file_away(key, True)
    if report_text and report_text.strip():
        try:
            report = fsar.parse(report_text)
            filed.append(file_report(report, source="external", filed_by=filed_by, aws_conn_id=aws_conn_id))
        except (fsar.FsarFormatError, ReportRefused) as exc:
            log_security_event(
                None, "input_refused", "warning", actor=filed_by, what="FSAR report", error=str(exc)
            )
            raise AirflowFailException(f"report_text refused, nothing stored: {exc}") from None
    logger.info("filed %d report(s), refused %d", len(filed), len(refused))
    return {"filed": filed, "refused": refused}


def report_to_resolve(report_id: str | None, app_conn_id: str = APP_DB) -> str | None:
    """The open report `report_id` to ask a person about, or None when none is named; an unknown
    or closed report fails (without retries) before anyone is asked."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audit.fsar_store import report_row

    if not report_id:
        return None
    with AppDatabaseHook(app_conn_id).cursor() as cur:
        row = report_row(cur, report_id)
    if row is None:
        raise AirflowFailException(f"no FSAR report {report_id} to resolve")
    if row["status"] != "open":
        raise AirflowFailException(
            f"FSAR report {report_id} is closed already ({row['closed_by']}: {row['resolution']})"
        )
    return report_id


def resolve_report(report_id: str, answer: dict[str, Any], app_conn_id: str = APP_DB) -> dict[str, Any]:
    """Close the report as the approver answered (`ReportResolutionOperator`'s return value)."""
    from airflow.sdk.exceptions import AirflowFailException

    closed = close_report(
        report_id, closed_by=answer["resolved_by"], resolution=answer["reason"], app_conn_id=app_conn_id
    )
    if closed is None:
        raise AirflowFailException(f"FSAR report {report_id} was closed meanwhile; nothing changed")
    return closed
