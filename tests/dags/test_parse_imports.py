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
]

PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("dag_under_test", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in set(sys.argv[2:]))))
"""


@pytest.mark.parametrize("dag_file", sorted(ROOT.glob("dags/*.py")), ids=lambda p: p.name)
def test_dag_file_imports_nothing_heavy_at_parse_time(dag_file, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(dag_file), *HEAVY],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == [], f"{dag_file.name} imports {imported} at parse time"


def test_the_probe_sees_a_heavy_import(tmp_path):
    """The check above can fail: a DAG file with a top-level pandas import is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text("import pandas\n")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(bad), *HEAVY],
        env={"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pandas" in json.loads(out.stdout.strip().splitlines()[-1])
