"""Every DAG file imports cleanly and carries what an operator of the UI relies on."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_dag_file_defines_a_dag(dagbag):
    files_with_dags = {Path(d.fileloc).name for d in dagbag.dags.values()}
    assert files_with_dags == {p.name for p in DAGS_DIR.glob("*.py")}


def test_dag_ids_are_from_the_design(dagbag):
    from include.ids import DAG_IDS  # the contract's DAG ids, which the alarms watch

    assert "platform_healthcheck" in dagbag.dags
    assert set(dagbag.dags) <= set(DAG_IDS)


def _as_list(callbacks) -> list:
    return callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []


def test_every_dag_publishes_its_run_outcome(dagbag):
    from execplatform.notifiers.alert_notifier import RunMetricsNotifier

    for dag_id, dag in dagbag.dags.items():
        for outcome in ("on_success_callback", "on_failure_callback"):
            callbacks = _as_list(getattr(dag, outcome))
            assert any(isinstance(c, RunMetricsNotifier) for c in callbacks), f"{dag_id} lacks {outcome}"


def test_every_dag_is_documented_tagged_owned_retried_and_alerting(dagbag):
    from execplatform.notifiers.alert_notifier import PlatformAlertNotifier

    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and "Owner" in dag.doc_md, f"{dag_id} has no doc_md naming its owner"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"
            callbacks = _as_list(task.on_failure_callback)
            assert any(isinstance(c, PlatformAlertNotifier) for c in callbacks), (
                f"{dag_id}.{task.task_id} does not alert on failure through PlatformAlertNotifier"
            )


RUNBOOK_SECTIONS = ("**Owner:**", "**Schedule:**", "**Idempotent", "**When it fails:**")


def test_every_dag_doc_is_a_runbook(dagbag):
    """The Docs tab answers who owns the DAG, when it runs, whether a re-run is safe, and what to
    do when it fails."""
    for dag_id, dag in dagbag.dags.items():
        missing = [s for s in RUNBOOK_SECTIONS if s not in (dag.doc_md or "")]
        assert not missing, f"{dag_id}'s doc_md lacks {missing}"


def test_template_fields_name_attributes_of_their_operator(dagbag):
    """A misspelt template field is silently not rendered; every one must be an attribute."""
    import inspect

    from airflow.sdk.definitions.mappedoperator import MappedOperator

    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            if isinstance(task, MappedOperator):  # its operator exists only when it runs
                # the arguments of every __init__ along the class's MRO (a decorated task's
                # passes most of them on through **kwargs)
                parameters = {
                    name
                    for cls in task.operator_class.__mro__
                    if "__init__" in vars(cls)
                    for name in inspect.signature(cls.__init__).parameters
                }
                missing = [f for f in task.template_fields if f not in parameters]
            else:
                missing = [f for f in task.template_fields if not hasattr(task, f)]
            assert not missing, f"{dag_id}.{task.task_id}: template fields {missing} are no attributes"


MAX_STATEMENTS_PER_TASK = 6  # wiring, not logic: a task body calls into the library or a step


def _statements(node) -> int:
    import ast

    body = [s for s in node.body if not isinstance(s, ast.Import | ast.ImportFrom)]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return len(body)


@pytest.mark.parametrize("dag_file", sorted(DAGS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_dag_files_are_thin(dag_file):
    """DAG files read like a table of contents: each task body calls a step in
    `execplatform.steps` or the library, and DAG files never import one another."""
    import ast

    tree = ast.parse(dag_file.read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in {p.stem for p in DAGS_DIR.glob("*.py")}}

    def is_dag(decorator) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return isinstance(target, ast.Name) and target.id == "dag"

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.FunctionDef)
            and node.decorator_list
            and not any(map(is_dag, node.decorator_list))
        ):
            assert _statements(node) <= MAX_STATEMENTS_PER_TASK, (
                f"{dag_file.name}: {node.name} has {_statements(node)} statements; move its logic to a step"
            )


def test_every_number_param_has_a_maximum_and_refuses_what_is_not_finite(dagbag):
    """NaN compares false with every bound, so a `minimum` alone never refused it; a number
    without a maximum took 10**12 (OverflowError in a timedelta, a SET over INT_MAX, one
    UPDATE of a billion rows)."""
    import math

    from airflow.sdk.exceptions import ParamValidationError

    def types(param) -> set[str]:
        kind = param.schema.get("type")
        return set(kind) if isinstance(kind, list) else {kind}

    numbers = {
        f"{dag_id}.{name}": param
        for dag_id, dag in dagbag.dags.items()
        for name, param in dag.params.items()
        if {"number", "integer"} & types(param)
    }
    assert len(numbers) > 30  # every DAG's, the audit's gate limits included
    unbounded = sorted(name for name, param in numbers.items() if "maximum" not in param.schema)
    assert unbounded == []
    for name, param in numbers.items():
        for value in (math.nan, math.inf, -math.inf, 10**12, param.schema["maximum"] + 1):
            with pytest.raises(ParamValidationError):
                copy.deepcopy(param).resolve(value)
        assert copy.deepcopy(param).resolve(param.value) == param.value, name
