"""A human approval in the UI that, in production, must come from a second person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def _permission_denied(actor: str, **details: Any) -> None:
    """A `permission_denied` security event: logged, and stored while the app database takes it
    (a restore's approval may come while the database is being replaced)."""
    import logging

    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from include.observability.security_events import log_security_event

    try:
        with AppDatabaseHook().cursor() as cur:
            log_security_event(cur, "permission_denied", "warning", actor=actor, **details)
    except Exception as exc:
        log_security_event(None, "permission_denied", "warning", actor=actor, **details)
        logging.getLogger(__name__).warning("permission_denied not stored: %s", type(exc).__name__)


class SecondPersonApprovalOperator(ApprovalOperator):
    """
    Airflow's :class:`ApprovalOperator` (Approve or Reject, in the UI's Required Actions), with two
    rules for changes that cannot be taken back lightly (a migration, a restore over live data):

    - in production, an approval by the user who triggered the run is refused (the task fails,
      so nothing downstream runs); a deployment that says it is not production
      (``PLATFORM_NON_PRODUCTION=true``, see ``execplatform.dag_defaults.non_production``) lets one
      person do both, for demos and tests;
    - every answer, approval or rejection, is a security event kept in S3 beside the backups and
      in the log, where a restore of the database cannot roll it back.

    Takes the arguments of :class:`ApprovalOperator`.
    """

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.dag_defaults import non_production
        from execplatform.steps.backup_steps import record_recovery_event

        if "error" in event:  # no answer in time: the base class fails the task, naming why
            return super().execute_complete(context, event)
        chosen = event["chosen_options"][0]
        approver = event.get("responded_by_user") or {}
        triggered_by = context["dag_run"].triggering_user_name
        own_run = triggered_by in (approver.get("id"), approver.get("name"))
        refused = chosen == self.APPROVE and own_run and not non_production()
        record_recovery_event(
            "approval",
            "warning" if chosen == self.APPROVE and not refused else "info",
            actor=approver.get("name") or approver.get("id") or "unknown",
            dag_id=context["ti"].dag_id,
            run_id=context["ti"].run_id,
            answer=chosen,
            triggered_by=triggered_by,
            refused_as_own_run=refused,
        )
        if refused:
            _permission_denied(
                approver.get("name") or approver.get("id") or "unknown",
                action=f"approve {context['ti'].dag_id}",
                run_id=context["ti"].run_id,
                why="the user who triggered a run cannot also approve it in production",
            )
            raise AirflowFailException(
                f"{approver.get('name') or approver.get('id')} triggered this run and cannot also approve "
                "it in production: another person must approve it (trigger the run again)"
            )
        return super().execute_complete(context, event)


class ReportResolutionOperator(ApprovalOperator):
    """
    A person's resolution of an FSAR report, in the UI's Required Actions: **Approve** closes the
    report, with the **reason** the form requires; **Reject** leaves it open (the tasks after it
    are skipped). For an external report, in production, the user who filed it cannot resolve
    it (a `permission_denied` security event, and the task fails); a deployment that says it is
    not production (``PLATFORM_NON_PRODUCTION=true``) lets one person do both, as
    :class:`SecondPersonApprovalOperator` does.

    Returns the answer with ``reason`` and ``resolved_by`` for the step that closes the report.

    :param report_id: (templated) the report to resolve.
    """

    template_fields = (*ApprovalOperator.template_fields, "report_id")

    def __init__(self, *, report_id: str, app_conn_id: str | None = None, **kwargs: Any) -> None:
        from airflow.sdk import Param

        from include.ids import APP_DB

        kwargs.setdefault(
            "params",
            {
                # required: Approve without one fails (a default the schema refused would stop the form)
                "reason": Param("", type="string", maxLength=2000, description="why the report may close")
            },
        )
        super().__init__(**kwargs)
        self.report_id = report_id
        self.app_conn_id = app_conn_id or APP_DB

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from execplatform.dag_defaults import non_production
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.audit.fsar_store import report_row

        if "error" in event:  # no answer in time
            return super().execute_complete(context, event)
        chosen = event["chosen_options"][0]
        responder = event.get("responded_by_user") or {}
        who = responder.get("name") or responder.get("id") or "unknown"
        reason = str((event.get("params_input") or {}).get("reason") or "").strip()
        if chosen == self.APPROVE:
            if not reason:
                raise AirflowFailException(
                    f"{who} approved closing FSAR report {self.report_id} without a reason: a reason is "
                    "required (trigger the resolution again)"
                )
            with AppDatabaseHook(self.app_conn_id).cursor() as cur:
                row = report_row(cur, self.report_id)
            filer = row and row["source"] == "external" and row["filed_by"] in (responder.get("id"), who)
            if filer and not non_production():
                _permission_denied(
                    who,
                    action="resolve FSAR report",
                    report=self.report_id,
                    why="the user who filed an external report cannot resolve it",
                )
                raise AirflowFailException(
                    f"{who} filed FSAR report {self.report_id} and cannot also resolve it in production: "
                    "another person must"
                )
        answer = super().execute_complete(context, event)
        return {**(answer or {}), "reason": reason, "resolved_by": who} if chosen == self.APPROVE else answer
