"""The steps of adversarial_audit: run a gate against `app_db`, record its evidence, report."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import APP_DB, AWS, STRIPE

logger = logging.getLogger(__name__)


def start(conn_id: str, run_id: str) -> int:
    from include.audit.gates import start_audit

    with AppDatabaseHook(conn_id).cursor() as cur:
        return start_audit(cur, run_id)


# extra fields that hold secrets (the words Airflow's secrets masker hides by default)
SENSITIVE_EXTRA_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "authorization",
)


class AirflowServices:
    """`include.audit.gates.Services` from Airflow connections: S3 through the Amazon provider's
    hook, Stripe through `StripeHook`, scratch databases on the app database's server."""

    def __init__(
        self,
        app_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        stripe_conn_id: str = STRIPE,
        log_folder: str | None = None,
    ) -> None:
        self.app_conn_id = app_conn_id
        self.aws_conn_id = aws_conn_id
        self.stripe_conn_id = stripe_conn_id
        self.log_folder = log_folder

    def s3(self):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()

    def stripe_objects(self, kind: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        from execplatform.hooks.stripe_hook import StripeHook

        return StripeHook(stripe_conn_id=self.stripe_conn_id).iter_objects(kind, params)

    @contextmanager
    def fetched_backup(self, entry) -> Iterator[Path]:
        import tempfile

        from execplatform.steps.backup_steps import fetch_backup

        with tempfile.TemporaryDirectory(prefix="audit-restore-") as tmp:
            yield fetch_backup(entry, self.aws_conn_id, Path(tmp))

    @contextmanager
    def scratch_database(self, name: str) -> Iterator[str]:

        database = f"{name}_{uuid.uuid4().hex[:8]}"
        AppDatabaseHook(self.app_conn_id).create_database(database)
        try:
            yield AppDatabaseHook(self.app_conn_id).dsn(database)
        finally:
            AppDatabaseHook(self.app_conn_id).drop_database(database)

    def secrets(self) -> dict[str, str]:
        from airflow.configuration import conf
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        from include.audit.gates import SECRET_SETTINGS
        from include.ids import CONNECTION_IDS, REHEARSAL_DB

        found = {}
        for conn_id in (*CONNECTION_IDS, REHEARSAL_DB):
            try:
                conn = BaseHook.get_connection(conn_id)
            except AirflowNotFoundException:
                continue  # a deployment without that service
            if conn.password:
                found[f"connection {conn_id} password"] = conn.password
            for key, value in (conn.extra_dejson or {}).items():
                if (
                    isinstance(value, str)
                    and value
                    and any(word in key.lower() for word in SENSITIVE_EXTRA_WORDS)
                ):
                    found[f"connection {conn_id} extra {key}"] = value
        for section, key in SECRET_SETTINGS:
            if value := conf.get(section, key, fallback=None):
                found[f"setting [{section}] {key}"] = value
        return found

    def task_log_folder(self) -> Path:
        from airflow.configuration import conf

        return Path(self.log_folder or conf.get("logging", "base_log_folder")).expanduser()

    def worker_dsn(self) -> str:
        """As DrainQueueOperator and the reaper open their sessions."""
        return AppDatabaseHook(self.app_conn_id).worker_dsn()


def check_gate(conn_id: str, audit_run_id: int, gate: str, limits: dict[str, Any]) -> dict[str, Any]:
    """Run one gate; its evidence is recorded whatever the verdict, and a failure is hard."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audit.gates import DEFAULT_LIMITS, GATES, LIMIT_MAXIMA, record
    from include.bounds import OutOfBounds, bounded

    limits = {**DEFAULT_LIMITS, **{k: v for k, v in limits.items() if k in DEFAULT_LIMITS}}
    try:
        limits = {k: bounded(k, v, low=0, high=LIMIT_MAXIMA[k]) for k, v in limits.items()}
    except OutOfBounds as exc:
        raise AirflowFailException(f"gate {gate}: {exc}") from None
    with AppDatabaseHook(conn_id).cursor() as cur:
        evidence = GATES[gate](cur, limits, AirflowServices(app_conn_id=conn_id))
        record(cur, audit_run_id, evidence)
    logger.info("%s\nquery: %s", evidence, evidence.query)
    if not evidence.passed:
        raise AirflowFailException(str(evidence))
    return {"gate": gate, "observed": evidence.observed}


def report(
    conn_id: str,
    audit_run_id: int,
    gates: list[str],
    unfinished: Sequence[str] = (),
    steps: Sequence[str] = (),
) -> dict[str, Any]:
    """The audit's table in the log and its FSAR report (which blocks execution when a blocking
    gate failed, and closes the earlier reports whose gates all passed now); fails naming every
    failed gate and every step that did not finish (critical alert)."""
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.fsar_steps import issue_audit_report
    from include.audit.gates import finish_audit

    with AppDatabaseHook(conn_id).cursor() as cur:
        failed = finish_audit(cur, audit_run_id, gates)
        cur.execute(
            "SELECT gate, passed, observed, threshold FROM audit_findings WHERE audit_run_id = %s "
            "ORDER BY gate",
            (audit_run_id,),
        )
        rows = cur.fetchall()
        cur.execute("SELECT dag_run_id FROM audit_runs WHERE id = %s", (audit_run_id,))
        dag_run_id = cur.fetchone()[0]
    table = "\n".join(
        f"{'PASS' if ok else 'FAIL'}  {gate:<36} observed={observed} limit={limit}"
        for gate, ok, observed, limit in rows
    )
    logger.info("audit %s:\n%s", audit_run_id, table)
    issued = issue_audit_report(
        conn_id,
        audit_run_id,
        dag_run_id,
        gates,
        steps=[s for s in steps if s not in gates],
        unfinished=[s for s in unfinished if s not in gates],
    )
    problems = [f"failed gates: {', '.join(failed)}"] if failed else []
    problems += [f"steps that did not finish: {', '.join(unfinished)}"] if unfinished else []
    if problems:
        blocked = "; execution is blocked until it closes" if issued["block_execution"] else ""
        raise AirflowFailException(
            f"adversarial audit {audit_run_id} {'; '.join(problems)} (FSAR report {issued['id']}, "
            f"severity {issued['severity']}{blocked})"
        )
    return {"audit_run_id": audit_run_id, "gates": len(rows), "fsar_report": issued}
