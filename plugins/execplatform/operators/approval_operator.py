"""A human approval in the UI that, in production, must come from a second person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


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
            raise AirflowFailException(
                f"{approver.get('name') or approver.get('id')} triggered this run and cannot also approve "
                "it in production: another person must approve it (trigger the run again)"
            )
        return super().execute_complete(context, event)
