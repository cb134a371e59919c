"""Adversarial probes in a sandbox database: every hostile input is refused or quarantined with a
reason, and production is byte-for-byte unchanged (schema dump, every table's row checksum)."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from include.audit import probes
from include.execution.executor_client import ExecutorClient
from include.migrations import current
from tests.offers_fixtures import cursor
from tests.project import ROOT

DAGS = ROOT / "dags"


def _databases(dsn: str) -> set[str]:
    with cursor(dsn) as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE 'probe_sandbox_%'")
        return {name for (name,) in cur.fetchall()}


@pytest.fixture(scope="module")
def every_dag_params():
    return probes.dag_params(DAGS)


@pytest.fixture
def production(app_head_dsn) -> str:
    """Production stand-in: an app database at head with every table seeded."""
    from devstack.demo_data import seed

    seed(app_head_dsn, scale=0.01)
    return app_head_dsn


def test_every_probe_is_refused_or_quarantined_and_production_is_unchanged(
    production, executor, every_dag_params
):
    offers_dsn = production
    url, admin = executor
    marker = f"probe{uuid.uuid4().hex[:10]}"
    before = probes.production_state(offers_dsn)
    sandboxes_before = _databases(offers_dsn)
    with probes.sandbox(offers_dsn, current(offers_dsn)) as sandbox_dsn:
        # the hostile executor's trickle is cut at this client's deadline
        client = ExecutorClient(url, retries=0, timeout_seconds=2, max_response_bytes=4 * 1024 * 1024)
        results = probes.run_all(sandbox_dsn, marker, client) + probes.param_probes(*every_dag_params)
        client.close()
        with cursor(sandbox_dsn) as cur:  # the probes did reach the sandbox's tables
            assert probes.marker_hits(cur, marker) == {
                "execution_tasks": 7,
                "offer_quarantine": 6,
                "payments": 1,
            }
    assert probes.report(results).count("\n") == len(results) - 1

    assert [str(r) for r in results if not r.held] == []
    by_name = {r.probe: r for r in results}
    assert len(by_name) == len(results) > 40 + 300  # the entry points', and every DAG param's
    unknown_model = by_name["executor_unknown_ai_model"]
    assert (unknown_model.outcome, unknown_model.entry_point) == (
        "refused",
        "task_handlers.execute_on_executor",
    )
    assert f"HTTP 404 on GET /v1/models/gpt-9-nonexistent-{marker}" in unknown_model.reason
    assert f"unknown ai_model 'gpt-9-nonexistent-{marker}'" in unknown_model.reason
    stats = admin.get("/admin/stats").json()
    assert stats["refused_models"] == {f"gpt-9-nonexistent-{marker}": 1} and stats["requests"] == 0
    assert "does not match '^(head|[0-9a-f]{4,32})$'" in by_name["param_db_migrate.target_revision_0"].reason
    assert by_name["handler_oversized_prompt"].reason.startswith("PermanentError: payload.prompt has 5000000")
    assert "payload.inputs.count must be an integer" in by_name["handler_count_is_a_boolean"].reason
    assert "execution_tasks_ai_model_format" in by_name["enqueue_injected_ai_model"].reason
    assert "execution_tasks_task_type_check" in by_name["enqueue_injected_task_type"].reason
    assert "NUL character" in by_name["enqueue_nul_character"].reason
    assert by_name["charge_negative_amount"].reason.startswith("negative or missing amount -500")
    assert by_name["charge_coupon_is_injection"].outcome == "quarantined"
    assert by_name["training_negative_amount"].reason == "negative amount"
    assert by_name["charge_status_not_final"].outcome == "held"
    assert by_name["charge_refund_over_amount"].reason.startswith("amount_refunded 1500 outside 0-1000")
    assert {r.outcome for r in results} == {"refused", "quarantined", "held", "inert"}
    # hostile values added with issue 27: each refused where it enters
    assert "max_attempts must be an integer from 1 to 100" in by_name["enqueue_huge_max_attempts"].reason
    assert "execution_tasks_ai_model_format" in by_name["enqueue_path_in_ai_model"].reason
    paths = [r for r in results if r.probe.startswith("handler_unknown_ai_model_")][3:]
    assert len(paths) == len(probes.PATH_MODELS) and all(r.outcome == "refused" for r in paths)
    assert "over the 4194304-byte limit" in by_name["executor_oversized_answer"].reason
    assert "over the 4194304-byte limit" in by_name["executor_oversized_unsized_answer"].reason
    assert "no complete answer within 2 s" in by_name["executor_trickle_answer"].reason
    hostile = {repr(v) for v in probes.HOSTILE_PARAM_VALUES}
    assert {"nan", "inf", "-inf", repr(10**12)} <= hostile
    for index in range(len(probes.HOSTILE_PARAM_VALUES)):  # NaN, infinities, 10**12 on every number
        assert by_name[f"param_task_batch.report_window_hours_{index}"].outcome == "refused"
        assert by_name[f"param_db_migrate.statement_timeout_ms_{index}"].outcome == "refused"
    assert all(r.outcome == "refused" for r in results if r.probe.startswith("param_"))

    assert probes.state_differences(before, probes.production_state(offers_dsn)) == []
    assert _databases(offers_dsn) == sandboxes_before, "the sandbox is dropped"
    with cursor(offers_dsn) as cur:
        assert probes.marker_hits(cur, marker) == {}


def test_the_proof_sees_a_changed_row_and_a_marked_row(app_head_dsn):
    before = probes.production_state(app_head_dsn)
    with cursor(app_head_dsn) as cur:
        cur.execute(
            "INSERT INTO execution_tasks (task_type, payload) VALUES ('idea', '{\"m\": \"leak-xyz\"}')"
        )
        assert probes.marker_hits(cur, "leak-xyz") == {"execution_tasks": 1}
    differences = probes.state_differences(before, probes.production_state(app_head_dsn))
    assert len(differences) == 1 and differences[0].startswith("table execution_tasks: rows [0,")
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE users ADD COLUMN nickname text")
    conn.close()
    assert "the schema dump changed" in probes.state_differences(
        before, probes.production_state(app_head_dsn)
    )


def test_an_entry_point_that_lets_bad_input_through_is_reported_broken():
    result = probes._refusal("lenient", "f", lambda: 1, (ValueError,))
    assert (result.outcome, result.held) == ("ACCEPTED", False) and str(result).startswith("BROKEN")


def test_entry_points_not_migrated_in_yet_are_skipped_not_failed(app_dsn, executor):
    """At the baseline (no ai_model, no offer tables) the queue and payment probes cannot run."""
    assert probes.applicable(app_dsn) == {"queue": False, "offers": False}
    client = ExecutorClient(executor[0], retries=0, timeout_seconds=2)
    results = probes.run_all(app_dsn, "baseline", client)
    client.close()
    assert results and all(r.held for r in results)
    assert {r.entry_point for r in results} == {
        "task_handlers.validate_payload",
        "task_handlers.resolve_ai_model",
        "task_handlers.execute_on_executor",
        "executor_client.ExecutorClient",
        "offers.model.quarantine_reasons",
    }


def test_the_hostile_executor_probes_fail_a_client_that_reads_everything_and_waits_forever(monkeypatch):
    """Without its cap and its deadline, the client takes the oversized answers whole and waits
    for the trickle to end: the probes say so."""
    from include.execution import executor_client

    monkeypatch.setattr(
        executor_client.ExecutorClient, "_read_body", lambda self, response, *_: response.read()
    )
    monkeypatch.setattr(executor_client._Deadlines, "watch", lambda self, sock, deadline: 0)  # no deadline
    monkeypatch.setattr(executor_client._Deadlines, "release", lambda self, key: False)
    client = ExecutorClient("http://127.0.0.1:9", timeout_seconds=0.1, max_response_bytes=1024)
    results = {r.probe: r for r in probes.hostile_executor_probes(client, "lenient")}
    assert {r.outcome for r in results.values()} == {"ACCEPTED"}
    assert "not JSON" in results["executor_oversized_answer"].reason
    [missing] = {r.outcome for r in probes.hostile_executor_probes(None, "none")}
    assert missing == "UNCHECKED"


def test_the_unknown_model_probe_fails_when_the_executor_accepts_it_or_cannot_be_asked(executor):
    url, admin = executor
    admin.post("/admin/faults", json={"models": ["gpt-9-nonexistent-lenient"]})  # an executor that serves it
    client = ExecutorClient(url, retries=0)
    [accepted] = probes.executor_probes(client, "lenient")
    assert (accepted.outcome, accepted.held) == ("ACCEPTED", False)
    assert admin.get("/admin/stats").json()["executions"] == 1  # it ran: what the probe exists to catch
    client.close()
    wrong = ExecutorClient(f"{url}/not-the-api", retries=0)  # refused, but not for the model
    [other] = probes.executor_probes(wrong, "other")
    wrong.close()
    assert "no route" in other.reason and (other.outcome, other.held) == ("UNCHECKED", False)

    [missing] = probes.executor_probes(None, "none")
    assert (missing.outcome, missing.held) == ("UNCHECKED", False)
    assert "no task executor is configured (connection task_executor)" in missing.reason
    down = ExecutorClient("http://127.0.0.1:9", retries=0)
    [unreachable] = probes.executor_probes(down, "down")
    down.close()
    assert unreachable.outcome == "UNCHECKED" and "executor unreachable" in unreachable.reason


def _dag_files_params() -> dict[tuple[str, str], object]:
    """Every param of every DAG, read file by file (not through probes.dag_params)."""
    from airflow.dag_processing.dagbag import DagBag

    found = {}
    for path in sorted(DAGS.glob("*.py")):
        bag = DagBag(dag_folder=str(path))
        assert bag.import_errors == {} and bag.dags, f"{path.name} defines no DAG"
        for dag_id, dag in bag.dags.items():
            found.update({(dag_id, name): param for name, param in dag.params.items()})
    return found


def test_the_param_probes_cover_every_param_of_every_dag_and_each_refuses(every_dag_params):
    """A new DAG param cannot escape the probes: each gets every hostile value, and must refuse it."""
    expected = _dag_files_params()
    results = probes.param_probes(*every_dag_params)
    probed = {}
    for result in results:
        dag_id, _, rest = result.probe.removeprefix("param_").partition(".")
        name, _, index = rest.rpartition("_")
        probed.setdefault((dag_id, name), set()).add(int(index))
    assert set(probed) == set(expected) and len(expected) >= 36
    assert all(indexes == set(range(len(probes.HOSTILE_PARAM_VALUES))) for indexes in probed.values())
    assert {d for d, _ in expected} >= {
        "db_migrate",
        "db_restore",
        "db_backup",
        "offer_feedback",
        "offer_model_retrain",
        "task_batch",
        "adversarial_audit",
    }
    assert [str(r) for r in results if r.outcome != "refused"] == []


def test_the_param_probes_report_a_param_that_takes_a_hostile_value_and_a_dag_file_that_does_not_import(
    tmp_path,
):
    (tmp_path / "lenient_dag.py").write_text(
        "from airflow.sdk import Param, dag\n"
        "@dag(schedule=None, params={'note': Param('x', type='string'), 'n': Param(1, type='integer')})\n"
        "def lenient():\n    pass\n"
        "lenient()\n"
    )
    (tmp_path / "broken_dag.py").write_text(
        "from airflow.sdk import dag\nraise RuntimeError('cannot parse')\n"
    )
    results = {r.probe: r for r in probes.param_probes(*probes.dag_params(tmp_path))}
    assert results["param_file_broken_dag.py"].outcome == "UNCHECKED"
    assert "cannot parse" in results["param_file_broken_dag.py"].reason
    assert results["param_lenient.note_0"].outcome == "ACCEPTED"  # a free string takes SQL
    assert results["param_lenient.n_8"].outcome == "ACCEPTED"  # no minimum: -10**12 goes through
    assert results["param_lenient.n_0"].outcome == "refused"


@pytest.mark.parametrize(
    ("dag_id", "name", "values"),
    [
        ("db_migrate", "target_revision", ["head", "0099"]),  # and every revision file's id, below
        ("db_restore", "backup_id", ["latest", "12"]),
        ("db_restore", "target_database", [None, "", "restore_browser_0a1b2c3d", "app"]),
        ("db_restore", "confirm", [None, "", "app"]),
        # tests/dags/test_offer_dags.py forces a promotion
        (
            "offer_model_retrain",
            "margin_auc",
            [-1.0, 0.002],
        ),
    ],
)
def test_the_values_each_dag_is_run_with_still_pass_its_params(every_dag_params, dag_id, name, values):
    import copy
    import re

    if name == "target_revision":
        values = values + re.findall(
            r'^revision = "([^"]+)"',
            "".join(p.read_text() for p in (ROOT / "include" / "migrations" / "versions").glob("*.py")),
            re.MULTILINE,
        )
    param = every_dag_params[0][dag_id][name]
    assert [copy.deepcopy(param).resolve(v) for v in values] == values
