"""The task workers' database role: DML on the queue's tables and nothing else.

`app` owns the app schema (migrations run as it, so it can run any DDL). The task-batch
workers need much less: the queue and its metrics. `app_worker` holds exactly that, and every
session a worker opens runs as it (`WORKER_SESSION_OPTIONS`, libpq's `options`, applied by
`AppDatabaseHook.worker_dsn()`): it cannot alter the schema nor read payments, users, backups or
audits. Set at connect, the role is also what a `RESET ROLE` returns to.

The role is cluster-wide and created by a superuser (`ensure_worker_role`: the local stack on
every start, `python -m include.migrations.db_roles` in docker compose and production). Its
grants live in the app database and are applied by the tables' owner
(`grant_worker_privileges`): after every revision, in the revision's own transaction
(include/migrations/env.py), so a table a migration adds to `WORKER_GRANTS` has its grants the
moment it exists; and on every start of the local stack. Both are idempotent.

The adversarial audit's `security_worker_role_is_dml_only` gate checks this from the outside:
the role's privileges, a session opened the way the workers open theirs, and the roles the
workers recorded in `worker_sessions` (include.execution.task_queue.TaskQueue.record_session).
"""

from __future__ import annotations

WORKER_ROLE = "app_worker"
# libpq `options` of every worker session: the role is switched at connect, before any statement
WORKER_SESSION_OPTIONS = f"-c role={WORKER_ROLE}"

# table -> the privileges the workers need on it (see include/execution/task_queue.py and drain.py)
WORKER_GRANTS: dict[str, tuple[str, ...]] = {
    "execution_tasks": ("SELECT", "INSERT", "UPDATE"),
    "task_batch_metrics": ("SELECT", "INSERT", "UPDATE"),
    "task_bottleneck_reports": ("SELECT", "INSERT", "DELETE"),
    "worker_sessions": ("SELECT", "INSERT", "UPDATE"),  # revision 0009
    "fsar_reports": ("SELECT",),  # revision 0010: the block check in each claim
}


def ensure_worker_role(superuser_cur, member: str) -> None:
    """Create the NOLOGIN role if missing, strip any attribute beyond that, and let `member`
    (the app's login role) switch to it."""
    from psycopg2 import sql

    superuser_cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_ROLE,))
    verb = "ALTER" if superuser_cur.fetchone() else "CREATE"
    superuser_cur.execute(
        sql.SQL(
            verb + " ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        ).format(sql.Identifier(WORKER_ROLE))
    )
    superuser_cur.execute(
        sql.SQL("GRANT {} TO {}").format(sql.Identifier(WORKER_ROLE), sql.Identifier(member))
    )


def grant_worker_privileges(owner_cur) -> list[str]:
    """Grant the workers' privileges on the tables that exist (run as their owner); returns those
    tables. Only what the role lacks is granted (a GRANT locks its table, so one that changes
    nothing is not sent); nothing at all where the role does not exist (a server without it, such
    as a rehearsal server: the audit's gate fails where it matters)."""
    from psycopg2 import sql

    owner_cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_ROLE,))
    if owner_cur.fetchone() is None:
        return []
    granted = []
    for table, privileges in WORKER_GRANTS.items():
        owner_cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))
        if not owner_cur.fetchone()[0]:
            continue  # a later revision creates it
        owner_cur.execute(
            "SELECT p FROM unnest(%s::text[]) AS p WHERE NOT has_table_privilege(%s, %s::regclass, p)",
            (list(privileges), WORKER_ROLE, f"public.{table}"),
        )
        missing = [row[0] for row in owner_cur.fetchall()]
        if missing:
            owner_cur.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in missing),
                    sql.Identifier("public", table),
                    sql.Identifier(WORKER_ROLE),
                )
            )
        granted.append(table)
    return granted


def main() -> int:
    """`python -m include.migrations.db_roles`: provision the role and its grants on the app database of
    $AIRFLOW_CONN_APP_DB, whose login must be able to create roles (docker compose: the app
    database's superuser; the local stack provisions it itself)."""
    import os
    import sys

    import psycopg2

    from include.migrations import dsn_from_connection_json

    if not os.environ.get("AIRFLOW_CONN_APP_DB"):
        print("AIRFLOW_CONN_APP_DB is not set: no app database", file=sys.stderr)  # noqa: T201 (command line)
        return 2
    conn = psycopg2.connect(dsn_from_connection_json(os.environ["AIRFLOW_CONN_APP_DB"]))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            ensure_worker_role(cur, member=cur.fetchone()[0])
            print(f"{WORKER_ROLE}: granted on {', '.join(grant_worker_privileges(cur)) or 'no table yet'}")  # noqa: T201
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
