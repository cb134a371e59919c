"""squawk over the offline SQL of pending revisions, with reviewed, named exceptions.

A revision may carry `squawk_exceptions = {"rule-name": "why it is safe, and who reviewed it"}`;
those rules are excluded for that revision only. Every other finding blocks the migration.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from include.migrations import Revision, Settings, offline_sql


@dataclass(frozen=True)
class Finding:
    revision: str
    rule: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"revision {self.revision}, line {self.line}: {self.rule}: {self.message}"


def squawk_binary() -> str:
    found = Path(sys.executable).with_name("squawk")
    return str(found) if found.exists() else (shutil.which("squawk") or "squawk")


def lint(revisions: list[Revision], pg_major: int, settings: Settings | None = None) -> list[Finding]:
    """Findings that block; excepted rules are left out (and logged by the caller)."""
    findings = []
    with tempfile.TemporaryDirectory(prefix="squawk-") as tmp:
        for rev in revisions:
            path = Path(tmp) / f"{rev.revision}.sql"
            path.write_text(offline_sql(rev.revision, settings=settings))
            argv = [squawk_binary(), f"--pg-version={pg_major}.0", "--reporter=json", str(path)]
            if rev.squawk_exceptions:
                argv.append("--exclude=" + ",".join(sorted(rev.squawk_exceptions)))
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            if out.returncode not in (0, 1) or not out.stdout.strip().startswith("["):
                raise RuntimeError(
                    f"squawk failed on revision {rev.revision}: {out.stderr.strip() or out.stdout}"
                )
            findings += [
                Finding(rev.revision, f["rule_name"], f["line"] + 1, f["message"])
                for f in json.loads(out.stdout)
            ]
    return findings
