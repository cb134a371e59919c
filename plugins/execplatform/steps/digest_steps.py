"""adversarial_audit's report steps: the indicator plots and the stakeholders' daily digest email."""

from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import SMTP

logger = logging.getLogger(__name__)

RECIPIENTS_VARIABLE = "audit_digest_recipients"


def recipients(value: str | list[str] | None = None) -> list[str]:
    """Who gets the digest: `value` (a DAG param), else the Airflow Variable
    `audit_digest_recipients`, else $AUDIT_DIGEST_TO; comma-separated lists allowed."""
    if not value:
        from airflow.sdk import Variable

        value = Variable.get(
            RECIPIENTS_VARIABLE, default=os.environ.get("AUDIT_DIGEST_TO", "management@localhost")
        )
    items = value.split(",") if isinstance(value, str) else value
    return [a.strip() for a in items if a and a.strip()]


def report_folder(day: date) -> Path:
    base = os.environ.get("AUDIT_REPORT_DIR") or str(
        Path(os.environ.get("AIRFLOW_HOME", ".")) / "audit_reports"
    )
    return Path(base) / day.isoformat()


def send_digest(
    conn_id: str,
    day: date,
    audit_run_id: int | None,
    *,
    to: str | list[str] | None = None,
    smtp_conn_id: str = SMTP,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Plot every indicator series, log the digest as a table and email it with the plots attached."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    from include.audit.digest import gather, plain_table, render, write_plots

    folder = folder or report_folder(day)
    with AppDatabaseHook(conn_id).cursor() as cur:
        digest = gather(cur, day, audit_run_id)
        plots = write_plots(cur, folder)
    logger.info("%s\nplots: %s", plain_table(digest), folder)
    subject, body = render(digest, plots)
    addresses = recipients(to)
    with SmtpHook(smtp_conn_id=smtp_conn_id) as smtp:
        smtp.send_email_smtp(to=addresses, subject=subject, html_content=body, files=[str(p) for p in plots])
    return {
        "to": addresses,
        "subject": subject,
        "plots": len(plots),
        "failed_gates": digest.failed_gates,
    }
