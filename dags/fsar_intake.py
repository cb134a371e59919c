"""
### FSAR intake: reports from outside, and their resolution by a person

**Owner:** platform team. **Schedule:** manual only (Trigger DAG w/ config).

FSAR proposal reports are the platform's remediation work orders: `adversarial_audit` issues one
per run; this DAG takes those written by people or other systems, and lets a person close one.
While an open report has `block_execution: true`, execution stops: `task_batch` claims nothing,
offers are not published to Stripe and no model is promoted; `db_backup`, `db_restore`,
`db_migrate` and `adversarial_audit` stay available.

1. **intake**: the report in `report_text` (the form's multi-line field; the Markdown format is
   in docs/audit.md), and with `read_inbox` every `*.md` file under
   `s3://$BACKUP_BUCKET/$FSAR_PREFIX/inbox/` (default prefix `fsar`). Each is parsed strictly: a
   malformed one is refused with an error naming the field and the line, and nothing of it is
   stored (an inbox file moves to `refused/` with `<name>.error.txt`; a malformed `report_text`
   fails the task). An accepted report goes to `fsar_reports` and to S3 as JSON and Markdown
   (`$FSAR_PREFIX/reports/<id>.json|.md`), filed by the user who triggered the run (or `s3:<key>`);
   a blocking one is an `execution_blocked` security event.
2. **to_resolve**: with `resolve_report` (a report id), checks that the report is open.
3. **approve_resolution**: in the UI (Required Actions) a person chooses **Approve** with a
   required **reason**, or **Reject** (the report stays open). In production the user who filed
   an external report cannot resolve it (a `permission_denied` security event); outside
   production (`PLATFORM_NON_PRODUCTION`) one person may.
4. **close_report**: closes it with the approver and reason; when it blocked, an
   `execution_unblocked` security event (and `block_overridden` for an audit's report that no
   audit has passed yet). The next `task_batch` drains again.

A report an audit issued also closes by itself when a later audit passes every gate it named.

**Idempotent:** yes. The same report filed again changes nothing (its id is its key; another
report under a used id is refused); inbox files are moved out of the inbox once read; closing
a closed report fails without changing it.

**When it fails:** `intake`'s log names the field and line of a malformed report: fix the text and
trigger again. `to_resolve` fails for an unknown or already closed report id. A refused
resolution (the filer, or no reason) leaves the report open: trigger again with another approver
or a reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from execplatform.dag_defaults import default_args
from execplatform.notifiers.alert_notifier import run_metrics_callbacks
from execplatform.operators.approval_operator import ReportResolutionOperator
from include.ids import FSAR_REPORT_ID


@dag(
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "audit"],
    params={
        "report_text": Param(
            "",
            type="string",
            format="multiline",
            maxLength=200_000,
            # Markdown, parsed strictly by include.audit.fsar (a pattern could not say more)
            pattern=r"^(|\s*# FSAR Proposal Report[\s\S]*)$",
            description="an FSAR proposal report (Markdown); empty to file none",
        ),
        "read_inbox": Param(True, type="boolean", description="also file the reports under the S3 inbox"),
        "resolve_report": Param(
            "",
            type="string",
            pattern=rf"^({FSAR_REPORT_ID})?$",
            description="the id of an open report to resolve (a person approves it with a reason)",
        ),
    },
    **run_metrics_callbacks(),
    default_args=default_args(on_retry=None),
)
def fsar_intake():
    @task
    def intake(params=None, dag_run=None) -> dict:
        from execplatform.steps.fsar_steps import intake_reports

        filed_by = dag_run.triggering_user_name or f"run {dag_run.run_id}"
        return intake_reports(params["report_text"], params["read_inbox"], filed_by)

    @task.short_circuit
    def to_resolve(params=None) -> str | None:
        from execplatform.steps.fsar_steps import report_to_resolve

        return report_to_resolve(params["resolve_report"])

    approve = ReportResolutionOperator(
        task_id="approve_resolution",
        report_id="{{ params.resolve_report }}",
        subject="Resolve FSAR report {{ params.resolve_report }}?",
        body="Approving closes the report with your reason: if it blocked execution, task_batch drains "
        "again and offers and models are published again. The report is on the ops dashboard's Audits "
        "page and in S3.",
        defaults="Reject",
        response_timeout=timedelta(days=7),
    )

    @task
    def close_report(params=None, ti=None) -> dict:
        from execplatform.steps.fsar_steps import resolve_report

        return resolve_report(params["resolve_report"], ti.xcom_pull(task_ids="approve_resolution"))

    intake() >> to_resolve() >> approve >> close_report()


fsar_intake()
