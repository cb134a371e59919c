"""Parse time of each project DAG file against a trivial one-task DAG file (the peer), and against
its twin: the same DAG in plain Airflow.

The twin has the file's params (the same schemas), schedule kind (a scheduled DAG's params are
validated at parse), tasks and dependencies, each task the nearest Airflow class of ours with a
no-op body (`@task`, `@task.branch`, `@task.short_circuit`, `ApprovalOperator`, `EmptyOperator`
for an operator of ours on `BaseOperator`, `@task` expanded for a mapped task), and nothing of the
project. Ours against the twin is what the project adds to what Airflow charges for that DAG.

Each measurement runs in a fresh interpreter: Airflow's SDK is imported first (all pay for it
alike), then the file is executed and its CPU time taken (`time.process_time()`: parsing is
CPU-bound, and CPU time leaves out the time the process waited for a core, so the ratio holds on
a machine that is busy with other work). Median of REPEATS runs, the three interleaved; prints
`dag_parse[<file>]: ratio=X (ours/peer)` (goal: at most 1.5) and
`dag_parse_vs_airflow[<file>]: ratio=Y (ours/twin)`.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 9

PEER_DAG = """
from datetime import datetime
from airflow.sdk import dag, task

@dag(schedule=None, start_date=datetime(2026, 1, 1), tags=["peer"])
def trivial():
    @task
    def noop():
        return None
    noop()

trivial()
"""

TIMER = """
import importlib.util, sys, time
import airflow.sdk  # noqa: F401  (shared cost, not measured)
start = time.process_time()
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(time.process_time() - start)
"""


# the Airflow classes a twin's task can be, by the name of the nearest one in a task's class
AIRFLOW_KINDS = {
    "_PythonDecoratedOperator": "task",
    "_BranchPythonDecoratedOperator": "branch",
    "_ShortCircuitDecoratedOperator": "short_circuit",
    "ApprovalOperator": "approval",
}
PROJECT_PACKAGES = ("execplatform", "include", "dag_under_test")


def dag_shape(path: str | Path) -> dict:
    """What the twin of the DAG file at `path` needs: its schedule kind, params and tasks (each
    task's kind and upstream task ids), from the DAG the file registers when it is loaded."""
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    DagContext.autoregistered_dags.clear()
    DagContext.current_autoregister_module_name = "dag_under_test"
    spec = importlib.util.spec_from_file_location("dag_under_test", path)
    sys.modules["dag_under_test"] = module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        ((dag, _),) = DagContext.autoregistered_dags
    finally:
        DagContext.current_autoregister_module_name = None
        del sys.modules["dag_under_test"]

    def kind(task) -> str:
        if hasattr(task, "expand_input"):
            return "mapped"
        airflow_class = next(c for c in type(task).__mro__ if not c.__module__.startswith(PROJECT_PACKAGES))
        return AIRFLOW_KINDS.get(airflow_class.__name__, "empty")

    return {
        "scheduled": dag.timetable.can_be_scheduled,
        "params": {name: dag.params.get_param(name).serialize() for name in dag.params},
        "tasks": {t.task_id: [kind(t), sorted(t.upstream_task_ids)] for t in dag.tasks},
    }


# a fresh interpreter's shape of one DAG file
SHAPE = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from bench_dag_parse import dag_shape
print(json.dumps(dag_shape(sys.argv[1])))
"""

# a twin's task of each kind, and the import a kind needs
NOOP = "@{decorator}(task_id={{id!r}})\ndef t{{n}}({arg}):\n    pass\ntasks[{{id!r}}] = t{{n}}{call}"
TWIN_TASK = {
    "task": NOOP.format(decorator="task", arg="", call="()"),
    "branch": NOOP.format(decorator="task.branch", arg="", call="()"),
    "short_circuit": NOOP.format(decorator="task.short_circuit", arg="", call="()"),
    "mapped": NOOP.format(decorator="task", arg="x", call=".expand(x=[1, 2])"),
    "approval": "tasks[{id!r}] = ApprovalOperator(task_id={id!r}, subject='approve?')",
    "empty": "tasks[{id!r}] = EmptyOperator(task_id={id!r})",
}
TWIN_IMPORT = {
    "approval": "from airflow.providers.standard.operators.hitl import ApprovalOperator",
    "empty": "from airflow.providers.standard.operators.empty import EmptyOperator",
}


def twin_source(shape: dict) -> str:
    """The source of a DAG file with `shape`'s params, schedule kind, tasks and edges, in plain
    Airflow."""
    kinds = {kind for kind, _ in shape["tasks"].values()}
    lines = [
        "from datetime import datetime",
        "from airflow.sdk import DAG, Param, task",
        *(TWIN_IMPORT[kind] for kind in sorted(kinds & TWIN_IMPORT.keys())),
        "params = {",
        *(
            f"    {name!r}: Param({p['value']!r}, description={p['description']!r}, **{p['schema']!r}),"
            for name, p in shape["params"].items()
        ),
        "}",
        f"schedule = {'@daily' if shape['scheduled'] else None!r}",
        "with DAG('twin', schedule=schedule, start_date=datetime(2026, 1, 1), catchup=False, params=params):",
        "    tasks = {}",
    ]
    for n, (task_id, (kind, _)) in enumerate(shape["tasks"].items()):
        lines += ["    " + line for line in TWIN_TASK[kind].format(id=task_id, n=n).splitlines()]
    for task_id, (_, upstream) in shape["tasks"].items():
        lines += [f"    tasks[{up!r}] >> tasks[{task_id!r}]" for up in upstream]
    return "\n".join(lines) + "\n"


def run_script(script: str, path: Path, env: dict[str, str]) -> str:
    """The last line `script` prints about `path`, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def parse_seconds(path: Path, env: dict[str, str]) -> float:
    return statistics.median(float(run_script(TIMER, path, env)) for _ in range(REPEATS))


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
        peer = Path(home) / "trivial_dag.py"
        peer.write_text(PEER_DAG)
        for dag_file in sorted((ROOT / "dags").glob("*.py")):
            twin = Path(home) / f"twin_{dag_file.name}"
            twin.write_text(twin_source(json.loads(run_script(SHAPE, dag_file, env))))
            # interleaved, so drift in machine load hits every side of a ratio alike
            ours, theirs, plain = (
                parse_seconds(dag_file, env),
                parse_seconds(peer, env),
                parse_seconds(twin, env),
            )
            print(
                f"dag_parse[{dag_file.stem}]: ratio={ours / theirs:.2f} (ours/peer) "
                f"ours={ours * 1000:.1f}ms peer={theirs * 1000:.1f}ms"
            )
            print(
                f"dag_parse_vs_airflow[{dag_file.stem}]: ratio={ours / plain:.2f} (ours/twin) "
                f"twin={plain * 1000:.1f}ms twin/peer={plain / theirs:.2f}"
            )


if __name__ == "__main__":
    main()
