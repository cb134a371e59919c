"""
### Adversarial audit (hard gates)

**Owner:** platform team. **Schedule:** daily at 05:00 UTC, and after every verified backup,
every applied migration and every new offer-model champion (Assets `app_db_backup_verified`,
`app_db_migration_applied`, `offer_model_promoted`).

Each gate is one instance of the mapped task `check` (named by its gate in the UI) and checks one
invariant of the platform, recording its evidence (the query, the observed value, the limit) in
`audit_findings`. Each gate fails when:

- `queue_expired_leases`: a running task's lease expired more than `expired_lease_minutes` ago
- `queue_dead_without_error`: a dead task has no error kept
- `queue_valid_status`: a task has a status outside the queue's states (checked independently of
  the table's constraint)
- `queue_ai_model_after_migration`: a task created after revision 0002 was applied has no
  `ai_model`
- `backup_fresh_and_restored`: the newest verified backup is older than `backup_max_age_hours`,
  or its restore was not timed
- `backup_restores_now`: the newest verified backup, fetched now, fails its catalog SHA-256s, or
  its critical tables restored into a scratch database (dropped after) differ in rows or
  checksum from what the dump recorded, or it takes over `backup_restore_max_minutes`
- `migrations_match_files`: an applied revision's file changed since it was applied
- `migrations_not_pending_too_long`: a revision has been pending for more than
  `pending_revision_days`
- `model_champion_artifacts_verify`: a version was promoted once but no champion is left, or the
  champion's or the previous champion's artifact fails its SHA-256 or the skops allowlist (not
  applicable before the first promotion)
- `model_auc_on_fresh_data`: the champion's AUC on the last `model_fresh_days` of impressions it
  never trained on is below `model_min_auc`, or there are fewer than `model_fresh_min_rows` such
  rows (not applicable before the first promotion)
- `stripe_offers_published_once`: a published offer's product or coupon is missing in Stripe,
  there twice, or differs from the offer (metadata, discount)
- `stripe_payments_reconcile`: over `payments_reconcile_days`, a charge the sync passed is
  neither in `payments` nor quarantined, differs from its ledger row, or a ledger row is not in
  Stripe
- `security_api_requires_login`: Airflow's REST API (`[api] base_url`) answers a request without
  a token
- `security_worker_role_is_dml_only`: the workers' role `app_worker` holds a privilege beyond
  its DML grants; a session opened as the drains open theirs runs as another role or can
  create, alter or read beyond them (tried for real, rolled back); or a drain recorded running
  as another role (`worker_sessions`, the last `worker_session_hours`)
- `security_no_secrets_in_task_logs`: a secret of the project's connections or Airflow's
  settings appears in a task log of the last `log_scan_hours` (the evidence names the source and
  file, never the value)

A failed gate does not retry (`AirflowFailException`). `report` runs last, after the steps
below. It issues the run's **FSAR report** (`fsar_reports`, and JSON and Markdown in S3): its
severity is the sum of the failed gates' weights (at most 100), and it blocks execution when a
failed gate blocks (`GATE_POLICY` in `include/audit/gates.py`: the weights, which gates block,
and the remediation each proposes); a passing audit issues severity 0. While a report blocks,
`task_batch` claims nothing and offers and models are not published. The report closes itself
when a later audit passes every gate it names (this one closes those earlier reports whose gates
all passed now), or when a person resolves it (`fsar_intake`). Then `report` fails the run with
a **critical** alert naming every failed gate (the probes' and the alarms' included), every step
that did not finish, and the report. It is the run's only leaf, since Airflow derives a run's
state from its leaves.

**Idempotent:** a re-run re-checks and replaces that run's findings.

**When it fails:** the failed gate's log and `audit_findings` hold the evidence, and the FSAR
report proposes the remediation. Fix the invariant (or, if the limit is wrong, the limit), then
clear the failed gate's instance of `check` and `report`, or trigger the audit again: a pass
closes the report.

**After the gates** (each runs whatever the gates' outcome):

- `leading_indicators`: the last complete day's indicators (and the 6 days before, to fill a
  gap) into `indicator_values`; an alert for every new CUSUM trend change (kept in
  `indicator_changes`, alerted once) and every PSI over its sample-size threshold: error (email)
  for trust and model-quality indicators, warning for the rest (`CHANGE_ALERT_LEVELS`).
- `adversarial_probes`: hostile input through the real entry points in a scratch database
  (dropped after), an unknown `ai_model` to the `task_executor` connection's executor, and
  hostile values to every param of every DAG in this folder; fails if any probe is accepted or
  could not run, production's schema dump changed, or a probe value is found in production.
  Evidence in `audit_findings` (gate `adversarial_probes`).
- `alarm_delivery`: a synthetic critical failure must reach the alerts table, CloudWatch, email
  and Sentry within 120 s; fails naming each channel that did not (gate `alarm_delivery`).
- `daily_digest`: gates, trend changes, ROI, backup freshness and a PNG per indicator (under
  `$AUDIT_REPORT_DIR`, default `$AIRFLOW_HOME/audit_reports/<day>`) mailed through `smtp_default`
  to the Variable `audit_digest_recipients` (comma-separated), else `$AUDIT_DIGEST_TO`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import (
    AssetOrTimeSchedule,
    CronTriggerTimetable,
    TriggerRule,
    dag,
    task,
)

from execplatform.dag_defaults import (
    APP_DB,
    BACKUP_VERIFIED,
    MIGRATION_APPLIED,
    MODEL_PROMOTED,
    default_args,
    number_param,
    schedule_for,
)
from execplatform.notifiers.alert_notifier import alert_callbacks, run_metrics_callbacks
from include.audit.gates import DEFAULT_LIMITS, GATES, LIMIT_MAXIMA

INDICATOR_DAYS = 7  # a day missed by a skipped run fills in on the next
ALARM_DEADLINE_SECONDS = 120
# after the gates
STEPS = (
    "leading_indicators",
    "adversarial_probes",
    "alarm_delivery",
    "daily_digest",
)
STEP_GATES = ("adversarial_probes", "alarm_delivery")  # steps that record a gate's finding


def _audited_day():
    """Indicators cover the last complete UTC day."""
    from datetime import UTC

    return (datetime.now(UTC) - timedelta(days=1)).date()


@dag(
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(schedule_for("adversarial_audit", "0 5 * * *"), timezone="UTC"),
        assets=BACKUP_VERIFIED | MIGRATION_APPLIED | MODEL_PROMOTED,
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["platform", "audit"],
    params={
        name: number_param(value, minimum=0, maximum=LIMIT_MAXIMA[name], description=f"gate limit {name}")
        for name, value in DEFAULT_LIMITS.items()
    },
    **run_metrics_callbacks(),
    default_args=default_args(on_failure="critical"),
)
def adversarial_audit():
    @task
    def start(run_id=None) -> int:
        from execplatform.steps.audit_steps import start

        return start(APP_DB, run_id)

    # one mapped task instance per gate, named by the gate in the UI; `report` pages once
    @task(map_index_template="{{ task.op_kwargs['gate'] }}", **alert_callbacks(on_failure="warning"))
    def check(gate: str, audit_run_id: int, params=None) -> dict:
        from execplatform.steps.audit_steps import check_gate

        return check_gate(APP_DB, audit_run_id, gate, params)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(audit_run_id: int, ti=None) -> dict:
        """The verdict, last and the run's only leaf (Airflow derives a run's state from its
        leaves): every gate's finding, the probes' and the alarms' included, and every step done."""
        from execplatform.steps.audit_steps import report

        unfinished = [step for step in STEPS if ti.xcom_pull(task_ids=step) is None]
        return report(APP_DB, audit_run_id, [*GATES, *STEP_GATES], unfinished, steps=STEPS)

    audit_run_id = start()
    gates = check.partial(audit_run_id=audit_run_id).expand(gate=list(GATES))

    # after the gates: leading indicators, probes, the alarms themselves, the digest, the verdict
    @task(trigger_rule=TriggerRule.ALL_DONE)
    def leading_indicators() -> dict:
        from execplatform.steps.indicator_steps import record_indicators

        return record_indicators(APP_DB, _audited_day(), days=INDICATOR_DAYS)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def adversarial_probes(audit_run_id: int, dag=None) -> dict:
        from pathlib import Path

        from execplatform.steps.probe_steps import run_probes

        return run_probes(APP_DB, audit_run_id, dags_folder=Path(dag.fileloc).parent)  # every DAG's params

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def alarm_delivery(audit_run_id: int) -> dict:
        from execplatform.steps.alarm_delivery_steps import audit_alarms

        return audit_alarms(APP_DB, audit_run_id, deadline_seconds=ALARM_DEADLINE_SECONDS)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def daily_digest(audit_run_id: int) -> dict:
        from execplatform.steps.digest_steps import send_digest

        return send_digest(APP_DB, _audited_day(), audit_run_id)

    after_gates = [
        leading_indicators(),
        adversarial_probes(audit_run_id),
        alarm_delivery(audit_run_id),
    ]
    for step in after_gates:
        gates >> step
    after_gates >> daily_digest(audit_run_id) >> report(audit_run_id)


adversarial_audit()
