"""The parse benchmark's twin of each DAG file is that DAG in plain Airflow: the same schedule kind,
params, tasks (by the nearest Airflow class of each) and edges, and nothing of the project; so
`dag_parse_vs_airflow` (ours against the twin) is what the project adds to Airflow's own cost."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_dag_parse", ROOT / "bench" / "bench_dag_parse.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("dag_file", sorted(ROOT.glob("dags/*.py")), ids=lambda p: p.stem)
def test_the_twin_has_the_dag_files_shape_in_plain_airflow(dag_file, tmp_path):
    shape = bench.dag_shape(dag_file)
    twin = tmp_path / f"twin_{dag_file.name}"
    twin.write_text(bench.twin_source(shape))

    assert shape["tasks"]
    assert bench.dag_shape(twin) == shape
    imports = [line for line in twin.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert imports and all(line.split()[1].split(".")[0] in ("datetime", "airflow") for line in imports)


def test_a_twin_missing_an_edge_is_seen(tmp_path):
    """The comparison above can fail: a twin without one of the DAG's edges has another shape."""
    shape = bench.dag_shape(ROOT / "dags" / "db_migrate.py")
    cut = {**shape, "tasks": {**shape["tasks"], "apply": [shape["tasks"]["apply"][0], []]}}
    twin = tmp_path / "twin.py"
    twin.write_text(bench.twin_source(cut))
    assert bench.dag_shape(twin) != shape
