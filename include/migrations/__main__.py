"""`python -m include.migrations ensure-baseline|current|sql REVISION|lint`.

`ensure-baseline` and `current` act on the app DB named by $AIRFLOW_CONN_APP_DB (docker
compose's airflow-init uses the first); `sql` prints the exact SQL a revision runs, for review;
`lint` runs squawk over every revision after the baseline. Schema changes after the baseline
go through the db_migrate DAG.
"""

from __future__ import annotations

import argparse
import os
import sys

from include.migrations import (
    BASELINE_REVISION,
    all_revisions,
    current,
    dsn_from_connection_json,
    ensure_baseline,
    offline_sql,
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m include.migrations", description=__doc__)
    parser.add_argument("command", choices=["ensure-baseline", "current", "sql", "lint"])
    parser.add_argument("revision", nargs="?", help="for sql: the revision to print")
    parser.add_argument("--conn-env", default="AIRFLOW_CONN_APP_DB", help="env var with the connection JSON")
    parser.add_argument("--pg-major", type=int, default=18, help="for lint: the server's major version")
    args = parser.parse_args()
    if args.command == "sql":
        if not args.revision:
            parser.error("sql needs a revision, e.g. 0002")
        print(offline_sql(args.revision))
        return 0
    if args.command == "lint":
        from include.migrations.lint import lint

        revisions = [r for r in all_revisions() if r.revision != BASELINE_REVISION]
        findings = lint(revisions, args.pg_major)
        for finding in findings:
            print(finding)
        return 1 if findings else 0
    if not os.environ.get(args.conn_env):
        print(f"{args.conn_env} is not set: no app database to migrate", file=sys.stderr)
        return 2
    dsn = dsn_from_connection_json(os.environ[args.conn_env])
    if args.command == "ensure-baseline":
        print("baseline applied" if ensure_baseline(dsn) else f"already at revision {current(dsn)}")
    else:
        print(current(dsn) or "unversioned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
