"""The layout's rules, checked: production code never imports the local stack or the demo data,
and every module's name is unique across the layers (a file can be opened by name)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from tests.project import ROOT

PRODUCTION = ("dags", "plugins", "include")

IMPORT_ALL_WITHOUT_DEVSTACK = """
import importlib, json, pathlib, runpy, sys
sys.modules["devstack"] = None  # as in a production image, where devstack/ is not there
root = pathlib.Path(sys.argv[1])
failed = {}
for base, prefix in ((root / "include", "include"), (root / "plugins" / "execplatform", "execplatform")):
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        if "versions" in parts or parts[-1] in ("__main__", "env"):
            continue  # Alembic loads revisions and env.py itself
        name = ".".join((prefix, *parts)).removesuffix(".__init__")
        try:
            importlib.import_module(name)
        except BaseException as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
for path in sorted((root / "dags").glob("*.py")):
    try:
        runpy.run_path(str(path))
    except BaseException as exc:
        failed[str(path.name)] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def test_production_code_imports_without_the_local_stack(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_WITHOUT_DEVSTACK, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert failed == {}, f"production modules that need devstack (or fail to import): {failed}"


def test_the_check_sees_an_import_of_the_local_stack(tmp_path):
    """The probe itself can fail: a module that imports devstack is reported."""
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "__init__.py").write_text("")
    (tmp_path / "include" / "leaky.py").write_text("import devstack.demo_data\n")
    (tmp_path / "plugins" / "execplatform").mkdir(parents=True)
    (tmp_path / "dags").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_WITHOUT_DEVSTACK, str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "include.leaky" in json.loads(out.stdout.strip().splitlines()[-1])


def test_module_names_are_unique_across_the_layers():
    names = Counter(
        path.name
        for layer in (*PRODUCTION, "devstack")
        for path in (ROOT / layer).rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py") and "versions" not in path.parts
    )
    assert [name for name, count in names.items() if count > 1] == []
