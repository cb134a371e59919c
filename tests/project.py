"""Where the project's folders are, for tests at any depth of tests/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAGS_DIR = ROOT / "dags"
FIXTURES = ROOT / "tests" / "fixtures"
