"""The approval step of db_migrate and db_restore: in production, a second person; every answer
kept as a security event in S3 (moto) and the log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest


@pytest.fixture
def approve(local_stack, monkeypatch):
    from execplatform.operators.approval_operator import SecondPersonApprovalOperator

    monkeypatch.setenv("BACKUP_PREFIX", f"test-approval/{uuid.uuid4().hex}")
    monkeypatch.delenv("PLATFORM_NON_PRODUCTION", raising=False)
    operator = SecondPersonApprovalOperator(task_id="approve", subject="Apply?", defaults="Reject")

    def answer(chosen: str, by: str, triggered_by: str = "alice"):
        context = {
            "dag_run": SimpleNamespace(triggering_user_name=triggered_by),
            "ti": SimpleNamespace(dag_id="db_migrate", run_id="manual__1", task_id="approve"),
            "task": operator,
        }
        event = {
            "chosen_options": [chosen],
            "params_input": {},
            "responded_at": datetime.now(UTC),
            "responded_by_user": {"id": by, "name": by},
        }
        return operator.execute_complete(context, event)

    return answer


def events() -> list[dict]:
    from execplatform.steps.backup_steps import backup_catalog

    return backup_catalog().events()


def test_in_production_the_user_who_triggered_a_run_cannot_approve_it(approve):
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="alice triggered this run and cannot also approve it"):
        approve("Approve", by="alice")
    [event] = events()
    assert event["event"] == "approval" and event["details"]["refused_as_own_run"] is True
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    with AppDatabaseHook().cursor() as cur:  # the refusal is a permission_denied security event too
        cur.execute(
            "SELECT actor, details->>'action' FROM security_events WHERE event_type = 'permission_denied' "
            "ORDER BY id DESC LIMIT 1"
        )
        assert cur.fetchone() == ("alice", "approve db_migrate")
    assert approve("Approve", by="bob")["chosen_options"] == ["Approve"]
    assert [e["actor"] for e in events()] == ["bob", "alice"]


def test_outside_production_one_person_may_trigger_and_approve(approve, monkeypatch):
    monkeypatch.setenv("PLATFORM_NON_PRODUCTION", "true")
    assert approve("Approve", by="alice")["chosen_options"] == ["Approve"]
    assert events()[0]["details"]["refused_as_own_run"] is False
