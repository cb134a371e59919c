"""Parse time of each project DAG file against a trivial one-task DAG file (the peer).

Each measurement runs in a fresh interpreter: Airflow's SDK is imported first (both pay for it
alike), then the file is executed and its CPU time taken (`time.process_time()`: parsing is
CPU-bound, and CPU time leaves out the time the process waited for a core, so the ratio holds on
a machine that is busy with other work). Median of REPEATS runs, ours and the peer interleaved;
prints `dag_parse[<file>]: ratio=X (ours/peer)`. Goal: every ratio at most 1.5.
"""

from __future__ import annotations

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


def parse_seconds(path: Path, env: dict[str, str]) -> float:
    runs = []
    for _ in range(REPEATS):
        out = subprocess.run(
            [sys.executable, "-c", TIMER, str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


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
            # interleaved, so drift in machine load hits both sides of the ratio alike
            ours, theirs = parse_seconds(dag_file, env), parse_seconds(peer, env)
            print(
                f"dag_parse[{dag_file.stem}]: ratio={ours / theirs:.2f} (ours/peer) "
                f"ours={ours * 1000:.1f}ms peer={theirs * 1000:.1f}ms"
            )


if __name__ == "__main__":
    main()
