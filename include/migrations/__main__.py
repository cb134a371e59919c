"""`python -m include.migrations ensure-baseline|current`: the app DB named by $AIRFLOW_CONN_APP_DB.

Used by docker compose's airflow-init; schema changes after the baseline go through db_migrate.
"""

from __future__ import annotations

import argparse
import os
import sys

from include.migrations import current, dsn_from_connection_json, ensure_baseline


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m include.migrations", description=__doc__)
    parser.add_argument("command", choices=["ensure-baseline", "current"])
    parser.add_argument("--conn-env", default="AIRFLOW_CONN_APP_DB", help="env var with the connection JSON")
    args = parser.parse_args()
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
