"""FSAR reports on the real servers: filed into the table and S3 (moto), the block they put on the
drain (as the workers' role), on publishing and promotion and on db_migrate, the audit's report and
its closing by a later audit, the intake's refusals, and a person's resolution."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import psycopg2
import pytest

from include.audit import fsar
from tests.airflow_api import postgres_connection
from tests.offers_fixtures import cursor
from tests.pg import query
from tests.project import FIXTURES

BLOCKING = (FIXTURES / "fsar" / "external_schema_drift.md").read_text()


@pytest.fixture
def app_db(app_head_dsn, local_stack, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", postgres_connection(app_head_dsn))
    monkeypatch.setenv("FSAR_PREFIX", f"test-fsar/{uuid.uuid4().hex}")
    monkeypatch.setenv("BACKUP_PREFIX", f"test-fsar-events/{uuid.uuid4().hex}")
    return app_head_dsn


def rows(dsn: str, sql: str, args=()) -> list[tuple]:
    return query(dsn, sql, args) or []


def events(dsn: str, kind: str) -> list[dict]:
    return [
        d
        for (d,) in rows(
            dsn, "SELECT details FROM security_events WHERE event_type = %s ORDER BY id", (kind,)
        )
    ]


def a_report(text: str = BLOCKING, **changes) -> fsar.FsarReport:
    return replace(fsar.parse(text), id=fsar.new_id(), **changes)


def enqueue(dsn: str, n: int) -> list[int]:
    from include.execution.task_queue import TaskQueue

    with TaskQueue(dsn) as queue:
        return queue.enqueue_many(
            [{"task_type": "idea", "payload": {"n": i}, "ai_model": "gpt-4.1"} for i in range(n)]
        )


def drain_as_the_workers(dsn: str):
    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from include.execution.drain import drain
    from include.execution.task_handlers import REQUIRED_INPUTS, Services

    return drain(
        AppDatabaseHook("app_db").worker_dsn(),  # the DML-only role must be able to read the block
        services=Services(),
        handlers=dict.fromkeys(REQUIRED_INPUTS, lambda task, services: {"ok": True}),
        batch_size=10,
        concurrency=2,
        budget_seconds=60,
    )


def a_new_process_sees_the_block() -> str:
    """The block as a new interpreter (another worker, or this one after a restart) sees it: the
    report its claim (of no task: a claim of 0 rows still checks the block) found blocking."""
    import subprocess
    import sys

    from execplatform.hooks.app_db_hook import AppDatabaseHook
    from tests.project import ROOT

    code = (
        "import sys; from include.execution.task_queue import TaskQueue; "
        "q = TaskQueue(sys.argv[1]); q.claim(0); print(q.blocked_by or 'none'); q.close()"
    )
    worker_dsn = AppDatabaseHook("app_db").worker_dsn()
    seen = subprocess.run(
        [sys.executable, "-c", code, worker_dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return seen.stdout.strip()


def test_a_blocking_report_stops_execution_until_it_is_resolved(app_db):
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from execplatform.steps.fsar_steps import (
        check_block,
        close_report,
        fsar_archive,
        intake_reports,
        refuse_while_blocked,
        stop_if_blocked,
    )

    ids = enqueue(app_db, 25)
    report = a_report()
    filed = intake_reports(fsar.render(report), read_inbox=False, filed_by="alice")
    assert [f["id"] for f in filed["filed"]] == [report.id] and filed["filed"][0]["stored"]
    [(status, source, filed_by, names_schema, markdown)] = rows(
        app_db,
        "SELECT status, source, filed_by, names_schema, markdown FROM fsar_reports WHERE id = %s",
        (report.id,),
    )
    assert (status, source, filed_by, names_schema) == ("open", "external", "alice", True)
    assert fsar.parse(markdown) == report
    archive = fsar_archive()
    assert fsar.from_json(archive.read_json(report.id)["report"]) == report
    assert fsar.parse(archive.read(f"{archive.prefix}/reports/{report.id}.md")) == report
    assert [e["report"] for e in events(app_db, "execution_blocked")] == [report.id]

    summary = drain_as_the_workers(app_db)
    assert (summary.stopped_by, summary.blocked_by, summary.batches) == ("blocked", report.id, 0)
    assert a_new_process_sees_the_block() == report.id  # it lives in the database, not in memory
    assert rows(
        app_db, "SELECT count(*) FROM execution_tasks WHERE status <> 'queued' AND id = ANY(%s)", (ids,)
    ) == [(0,)]

    with pytest.raises(AirflowSkipException, match=report.id):
        stop_if_blocked()
    with pytest.raises(AirflowFailException, match=f"publishing offers refused: .*{report.id}"):
        refuse_while_blocked("publishing offers")
    assert check_block().id == report.id
    alerts = rows(
        app_db, "SELECT message, occurrences FROM alerts WHERE message LIKE %s", (f"%{report.id}%",)
    )
    assert alerts == [(alerts[0][0], 1)], alerts  # three runs saw the block, one alert was sent

    assert close_report(report.id, closed_by="bob", resolution="repaired by hand")["was_blocking"]
    assert close_report(report.id, closed_by="bob", resolution="again") is None
    assert events(app_db, "execution_unblocked")[-1]["report"] == report.id
    assert archive.read_json(report.id)["status"] == "closed"
    assert check_block() is None and a_new_process_sees_the_block() == "none"
    summary = drain_as_the_workers(app_db)
    assert summary.stopped_by == "empty" and summary.by_type["idea"].succeeded == 25


def test_a_report_filed_during_a_drain_stops_its_next_claim(app_db):
    from execplatform.steps.fsar_steps import file_report
    from include.execution.drain import drain
    from include.execution.task_handlers import REQUIRED_INPUTS, Services

    enqueue(app_db, 40)
    report = a_report()

    def handler(task, services, filed=[]):  # noqa: B006 (files once, from the first task run)
        if not filed:
            filed.append(file_report(report, source="external", filed_by="monitor"))
        return {"ok": True}

    summary = drain(
        app_db,
        services=Services(),
        handlers=dict.fromkeys(REQUIRED_INPUTS, handler),
        batch_size=5,
        concurrency=1,
    )
    assert (summary.stopped_by, summary.blocked_by) == ("blocked", report.id)
    done = rows(app_db, "SELECT count(*) FROM execution_tasks WHERE status = 'succeeded'")[0][0]
    assert 0 < done < 40 and rows(
        app_db, "SELECT count(*) FROM execution_tasks WHERE status = 'running'"
    ) == [(0,)]


def test_a_malformed_report_is_refused_and_nothing_of_it_is_stored(app_db):
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.fsar_steps import fsar_archive, intake_reports

    archive = fsar_archive()
    good, bad = a_report(), fsar.render(a_report()).replace("- severity: 85", "- severity: 101")
    archive.s3.put_object(
        Bucket=archive.bucket, Key=f"{archive.prefix}/inbox/a-good.md", Body=fsar.render(good).encode()
    )
    archive.s3.put_object(Bucket=archive.bucket, Key=f"{archive.prefix}/inbox/b-bad.md", Body=bad.encode())
    with pytest.raises(
        AirflowFailException, match=r"line 4, field severity: '101' is not an integer from 0 to 100"
    ):
        intake_reports(bad, read_inbox=True, filed_by="alice")
    assert rows(app_db, "SELECT id, filed_by FROM fsar_reports") == [
        (good.id, f"s3:{archive.prefix}/inbox/a-good.md")
    ]
    assert archive.inbox() == []
    error = archive.read(f"{archive.prefix}/refused/b-bad.md.error.txt")
    assert "line 4, field severity" in error
    assert len(events(app_db, "input_refused")) == 0  # logged only: the database is not where it is kept
    # the same report filed again changes nothing; another under its id is refused
    assert (
        intake_reports(fsar.render(good), read_inbox=False, filed_by="alice")["filed"][0]["stored"] is False
    )
    with pytest.raises(AirflowFailException, match="already used by another report"):
        intake_reports(fsar.render(replace(good, severity=3)), read_inbox=False, filed_by="alice")


def _audit(dsn: str, run_id: str, failing: dict[str, object]) -> int:
    from include.audit.gates import GATES, Evidence, record, start_audit

    with cursor(dsn) as cur:
        audit_run_id = start_audit(cur, run_id)
        for gate in GATES:
            observed = failing.get(gate, 0)
            record(cur, audit_run_id, Evidence(gate, gate not in failing, observed, 0, "SELECT 1"))
    return audit_run_id


def test_an_audit_report_blocks_and_a_later_passing_audit_closes_it(app_db):
    from execplatform.steps.fsar_steps import check_block, issue_audit_report
    from include.audit.gates import GATES

    first = _audit(
        app_db, "manual__first", {"queue_dead_without_error": 3, "migrations_not_pending_too_long": ["0011"]}
    )
    issued = issue_audit_report("app_db", first, "manual__first", list(GATES))
    assert (issued["severity"], issued["block_execution"]) == (60, True)  # 40 + 20, one of them blocks
    assert issued["failed_gates"] == ["queue_dead_without_error", "migrations_not_pending_too_long"]
    report = fsar.parse(
        rows(app_db, "SELECT markdown FROM fsar_reports WHERE id = %s", (issued["id"],))[0][0]
    )
    assert "`queue_dead_without_error` (weight 40, blocks execution)" in report.proposal
    assert "run `db_migrate`" in report.proposal and report.task_type == "self_improvement"
    assert check_block().id == issued["id"]
    assert {e["gate"] for e in events(app_db, "gate_failed")} == set(issued["failed_gates"])
    # the run re-issued (cleared and run again) replaces its report, under the same id
    assert issue_audit_report("app_db", first, "manual__first", list(GATES))["id"] == issued["id"]

    # repaired in part: the report stays open while a gate it names still fails
    second = _audit(app_db, "manual__second", {"migrations_not_pending_too_long": ["0011"]})
    assert issue_audit_report("app_db", second, "manual__second", list(GATES))["closed_reports"] == []
    third = _audit(app_db, "manual__third", {})
    passed = issue_audit_report("app_db", third, "manual__third", list(GATES))
    assert (passed["severity"], passed["block_execution"]) == (0, False)
    assert set(passed["closed_reports"]) == {issued["id"], fsar.parse(fsar.render(report)).id} | {
        rows(app_db, "SELECT id FROM fsar_reports WHERE audit_run_id = %s", (second,))[0][0]
    }
    assert rows(
        app_db,
        "SELECT status, closed_by, closed_by_audit_run_id FROM fsar_reports WHERE id = %s",
        (issued["id"],),
    ) == [("closed", "adversarial_audit", third)]
    assert rows(app_db, "SELECT status, severity FROM fsar_reports WHERE audit_run_id = %s", (third,)) == [
        ("closed", 0)
    ]
    assert check_block() is None
    assert events(app_db, "execution_unblocked")[-1]["audit_run_id"] == third


def test_db_migrate_refuses_while_a_report_naming_the_schema_blocks_unless_it_is_the_remediation(app_db):
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.fsar_steps import file_report
    from execplatform.steps.migration_steps import refuse_while_the_schema_is_blocked

    elsewhere = a_report(proposal="Stripe coupons drifted from the offers.", task_type="idea")
    file_report(elsewhere, source="external", filed_by="alice")
    refuse_while_the_schema_is_blocked("app_db", "manual__m", None)  # blocks execution, not the schema

    schema = a_report()
    file_report(schema, source="external", filed_by="alice")
    with pytest.raises(AirflowFailException, match=f"remediation_report='{schema.id}'"):
        refuse_while_the_schema_is_blocked("app_db", "manual__m", None)
    refuse_while_the_schema_is_blocked("app_db", "manual__m", schema.id, applying=True)
    assert [e["report"] for e in events(app_db, "block_overridden")] == [schema.id]


@pytest.fixture
def resolve(app_db, monkeypatch):
    from execplatform.operators.approval_operator import ReportResolutionOperator
    from execplatform.steps.fsar_steps import file_report

    monkeypatch.delenv("PLATFORM_NON_PRODUCTION", raising=False)
    report = a_report()
    file_report(report, source="external", filed_by="alice")
    operator = ReportResolutionOperator(task_id="approve_resolution", report_id=report.id, subject="Resolve?")

    def answer(by: str, reason: str, chosen: str = "Approve"):
        context = {
            "dag_run": SimpleNamespace(triggering_user_name="carol"),
            "ti": SimpleNamespace(dag_id="fsar_intake", run_id="manual__1", task_id="approve_resolution"),
            "task": operator,
        }
        event = {
            "chosen_options": [chosen],
            "params_input": {"reason": reason},
            "responded_at": datetime.now(UTC),
            "responded_by_user": {"id": by, "name": by},
        }
        return operator.execute_complete(context, event)

    answer.report = report
    return answer


def test_a_person_resolves_with_a_reason_but_not_the_one_who_filed(resolve, app_db, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from execplatform.steps.fsar_steps import resolve_report

    with pytest.raises(AirflowFailException, match="alice filed FSAR report .* cannot also resolve it"):
        resolve("alice", "I fixed it")
    assert events(app_db, "permission_denied")[-1]["report"] == resolve.report.id
    with pytest.raises(AirflowFailException, match="without a reason"):
        resolve("bob", "   ")
    answer = resolve("bob", "the schema was repaired and verified")
    assert (answer["resolved_by"], answer["reason"]) == ("bob", "the schema was repaired and verified")
    assert resolve_report(resolve.report.id, answer)["was_blocking"]
    assert rows(
        app_db, "SELECT status, closed_by, resolution FROM fsar_reports WHERE id = %s", (resolve.report.id,)
    ) == [("closed", "bob", "the schema was repaired and verified")]
    monkeypatch.setenv("PLATFORM_NON_PRODUCTION", "true")
    assert resolve("alice", "demo")["resolved_by"] == "alice"  # outside production one person may


def test_the_workers_role_reads_the_block_and_nothing_more(app_db):
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    conn = psycopg2.connect(AppDatabaseHook("app_db").worker_dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, count(*) FROM fsar_reports")
            assert cur.fetchone() == ("app_worker", 0)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("UPDATE fsar_reports SET status = 'closed'")
    finally:
        conn.close()


def test_the_dashboard_and_the_digest_list_the_reports_open_first(app_db):
    from execplatform.steps.fsar_steps import close_report, file_report
    from include.audit import digest
    from include.observability.dashboard_panels import page_panels

    closed, blocking = a_report(), a_report(severity=70)
    file_report(closed, source="external", filed_by="alice")
    close_report(closed.id, closed_by="bob", resolution="done")
    file_report(blocking, source="external", filed_by="alice")
    with cursor(app_db) as cur:
        panel = page_panels(cur, "audits")[0]
        gathered = digest.gather(cur, datetime.now(UTC).date(), None)
    assert panel.title == "FSAR reports" and blocking.id in panel.note
    assert [(r[0], r[1]) for r in panel.rows] == [(blocking.id, "open"), (closed.id, "closed")]
    assert gathered.blocking_reports == [blocking.id]
    subject, body = digest.render(gathered)
    assert "execution BLOCKED by 1 FSAR report(s)" in subject and closed.id in body
    assert blocking.id in digest.plain_table(gathered)
