"""adversarial_audit's probes: hostile input through the real entry points inside a scratch
database, then proof that production did not move (schema dump equal, no probe value in it)."""

from __future__ import annotations

import logging
import uuid
from contextlib import closing, nullcontext
from pathlib import Path

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import TASK_EXECUTOR

logger = logging.getLogger(__name__)

GATE = "adversarial_probes"


def run_probes(
    conn_id: str,
    audit_run_id: int | None,
    dags_folder: str | Path,
    executor_conn_id: str = TASK_EXECUTOR,
):
    """Every probe must be refused, quarantined or inert, and production's schema dump unchanged
    and free of the probes' marker; the evidence goes to audit_findings as gate `adversarial_probes`.

    The executor probe asks the `executor_conn_id` connection's executor (built as task_batch
    builds it); the param probes cover every DAG in `dags_folder` (the audit DAG's own folder).

    Production's rows are not checksummed here: live writers change them during the run. The
    tests prove the row checksums on a quiet database; here the marker search stands in."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.audit import probes
    from include.audit.gates import Evidence, record
    from include.migrations import current
    from include.migrations.runner import schema_dump

    dsn = AppDatabaseHook(conn_id).dsn()
    marker = f"probe{uuid.uuid4().hex[:12]}"
    schema_before = schema_dump(dsn)
    executor = _executor(executor_conn_id)
    with (
        closing(executor) if executor else nullcontext(),
        probes.sandbox(dsn, current(dsn)) as sandbox_dsn,
    ):
        skipped = [group for group, present in probes.applicable(sandbox_dsn).items() if not present]
        results = probes.run_all(sandbox_dsn, marker, executor)
    if skipped:
        logger.warning("probes skipped, their schema is not migrated in yet: %s", ", ".join(skipped))
    results += probes.param_probes(*probes.dag_params(dags_folder))
    schema_changed = schema_dump(dsn) != schema_before
    with AppDatabaseHook(conn_id).cursor() as cur:
        leaked = probes.marker_hits(cur, marker)
        broken = [r.probe for r in results if not r.held]
        problems = (
            broken
            + (["production schema changed"] if schema_changed else [])
            + [f"{n} row(s) of {t} carry the probe marker" for t, n in leaked.items()]
        )
        observed = {
            "probes": len(results),
            "broken": broken,
            "schema_changed": schema_changed,
            "leaked": leaked,
            "skipped": skipped,
            "outcomes": {r.probe: r.outcome for r in results},
        }
        if audit_run_id is not None:
            record(
                cur,
                audit_run_id,
                Evidence(
                    GATE,
                    not problems,
                    observed,
                    "every probe held; production unchanged",
                    f"{len(results)} probes in a scratch database, marker {marker}",
                ),
            )
    logger.info("adversarial probes (marker %s):\n%s", marker, probes.report(results))
    if problems:
        raise AirflowFailException(f"adversarial probes failed: {'; '.join(problems)}")
    return {"probes": len(results), "outcomes": sorted({r.outcome for r in results})}


def _executor(conn_id: str):
    """The task executor's client, as task_batch builds it; None when the connection is not defined
    (the executor probe then reports itself UNCHECKED)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from execplatform.hooks.task_executor_hook import TaskExecutorHook

    try:
        return TaskExecutorHook(conn_id).get_conn()
    except AirflowNotFoundException:
        logger.warning("connection %s is not defined: the unknown-ai_model probe cannot run", conn_id)
        return None
