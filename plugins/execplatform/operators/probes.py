"""adversarial_audit's probes: hostile input through the real entry points inside a scratch
database, then proof that production did not move (schema dump equal, no probe value in it)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from execplatform.operators.backup import app_cursor, libpq_dsn

logger = logging.getLogger(__name__)

GATE = "adversarial_probes"


def run_probes(conn_id: str, audit_run_id: int | None, dag_params: Any = None, dag_id: str = "adversarial_audit"):
    """Every probe must be refused, quarantined or inert, and production's schema dump unchanged
    and free of the probes' marker; the evidence goes to audit_findings as gate `adversarial_probes`.

    Production's rows are not checksummed here: live writers change them during the run. The
    tests prove the row checksums on a quiet database; here the marker search stands in."""
    from airflow.sdk.exceptions import AirflowFailException

    from include import probes
    from include.audit import Evidence, record
    from include.migrations import current
    from include.migrations.runner import schema_dump

    dsn = libpq_dsn(conn_id)
    marker = f"probe{uuid.uuid4().hex[:12]}"
    schema_before = schema_dump(dsn)
    with probes.sandbox(dsn, current(dsn)) as sandbox_dsn:
        skipped = [group for group, present in probes.applicable(sandbox_dsn).items() if not present]
        results = probes.run_all(sandbox_dsn, marker)
    if skipped:
        logger.warning("probes skipped, their schema is not migrated in yet: %s", ", ".join(skipped))
    results += probes.param_probes(dict(dag_params.items()) if dag_params else {}, dag_id)
    schema_changed = schema_dump(dsn) != schema_before
    with app_cursor(conn_id) as cur:
        leaked = probes.marker_hits(cur, marker)
        broken = [r.probe for r in results if not r.held]
        problems = broken + (["production schema changed"] if schema_changed else []) + \
            [f"{n} row(s) of {t} carry the probe marker" for t, n in leaked.items()]
        observed = {"probes": len(results), "broken": broken, "schema_changed": schema_changed, "leaked": leaked,
                    "skipped": skipped, "outcomes": {r.probe: r.outcome for r in results}}
        if audit_run_id is not None:
            record(cur, audit_run_id, Evidence(GATE, not problems, observed, "every probe held; production unchanged",
                                               f"{len(results)} probes in a scratch database, marker {marker}"))
    logger.info("adversarial probes (marker %s):\n%s", marker, probes.report(results))
    if problems:
        raise AirflowFailException(f"adversarial probes failed: {'; '.join(problems)}")
    return {"probes": len(results), "outcomes": sorted({r.outcome for r in results})}
