"""Parsing a DAG file imports nothing heavy: the dag-processor parses every file every few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = [
    "pandas",
    "sklearn",
    "stripe",
    "boto3",
    "botocore",
    "psycopg",
    "psycopg2",
    "redis",
    "numpy",
    # the project's own runtime-only modules: the task bodies load their steps when they run, the
    # alert path its records when an alert fires
    "execplatform.steps",
    "include.observability.alerting",
]

# Each DAG file is loaded in a process of its own that imported only Airflow before it: Airflow
# once, then a fork per file (loading Airflow in a fresh process per file took 2 s a file). Every
# DAG file imports Airflow first, so each file's modules are what a fresh process would hold.
PROBE = """
import importlib.util, json, os, sys, traceback
heavy = set(sys.argv[1].split(","))
import airflow
for path in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            spec = importlib.util.spec_from_file_location("dag_under_test", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            found = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
        except BaseException:
            found = traceback.format_exc()
        print("PROBED", json.dumps([path, found]), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""
DAG_FILES = sorted(ROOT.glob("dags/*.py"))


def probe(files: list[Path], env: dict[str, str]) -> dict[str, list[str] | str]:
    """What each file imports of HEAVY when loaded (a list), or its traceback (a string)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(HEAVY), *map(str, files)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = dict(
        json.loads(line.removeprefix("PROBED "))
        for line in out.stdout.splitlines()
        if line.startswith("PROBED ")
    )
    assert set(found) == set(map(str, files)), out.stdout + out.stderr
    return found


@pytest.fixture(scope="module")
def parse_time_imports(tmp_path_factory) -> dict[str, list[str] | str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
        "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow-home")),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    return probe(DAG_FILES, env)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_nothing_heavy_at_parse_time(dag_file, parse_time_imports):
    imported = parse_time_imports[str(dag_file)]
    assert isinstance(imported, list), f"{dag_file.name} does not import:\n{imported}"
    assert imported == [], f"{dag_file.name} imports {imported} at parse time"


def test_the_probe_sees_a_heavy_import(tmp_path):
    """The check above can fail: a DAG file with a top-level pandas import is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text("import pandas\n")
    found = probe([bad], {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path)})
    assert "pandas" in found[str(bad)]
