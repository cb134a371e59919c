"""The stack's connections outside environment variables: as the file `airflow connections import`
reads, and in (moto's) Secrets Manager read by Airflow's SecretsManagerBackend during a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devstack.stack import (
    SECRETS_PREFIXES,
    aws_client,
    connections,
    secrets_backend_env,
    write_connections_file,
)
from tests.project import DAGS_DIR, ROOT

SERVERS = ("postgres", "rehearsal_postgres", "moto", "stripe", "smtp", "redis", "executor")
FAKE_PORTS = {server: 40001 + i for i, server in enumerate(SERVERS)}
FAKE_SECRET = {"app_db_password": "app-db-generated", "stripe_secret_key": "sk_test_generated"}


def test_the_connections_file_reads_back_through_airflows_parser(tmp_path):
    """`airflow connections import` parses the file with load_connections_dict: every connection
    comes back with the stack's fields and extras."""
    from airflow.secrets.local_filesystem import load_connections_dict

    path = write_connections_file(tmp_path / "connections.json", FAKE_PORTS, FAKE_SECRET)
    assert path.stat().st_mode & 0o077 == 0  # it holds the stack's passwords
    parsed = load_connections_dict(str(path))
    expected = connections(FAKE_PORTS, FAKE_SECRET)
    assert sorted(parsed) == sorted(expected)
    for conn_id, fields in expected.items():
        conn = parsed[conn_id]
        got = {f: getattr(conn, f) for f in ("conn_type", "host", "port", "login", "password", "schema")}
        assert _set_fields({**got, "extra": conn.extra_dejson}) == fields, conn_id


def _set_fields(conn: dict) -> dict:
    """A connection's fields that have a value, its extra as a dict: as connections() gives them."""
    if isinstance(conn.get("extra"), str):
        conn = {**conn, "extra": json.loads(conn["extra"])}
    return {k: v for k, v in conn.items() if v not in (None, "", {})}


HEALTHCHECK_RUN = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.db import initdb

initdb()
dag = DagBag(dag_folder=sys.argv[1]).dags["platform_healthcheck"]
run = dag.test()
print(json.dumps({"run_id": run.run_id, "states": {ti.task_id: ti.state for ti in run.get_task_instances()}}))
"""


def _airflow(args, env, **kwargs):
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def test_a_healthcheck_run_uses_a_connection_kept_only_in_secrets_manager(local_stack, tmp_path):
    """app_db exists only in moto's Secrets Manager (no AIRFLOW_CONN_APP_DB, a fresh metadata
    database): the run's probe of it succeeds and writes its row through it. Then the stack's
    connections file goes into that metadata database through the real `airflow connections import`."""
    stack_connections = connections(local_stack.ports, local_stack.secret)
    app_db = stack_connections["app_db"]
    secrets = aws_client("secretsmanager", stack_connections["aws_default"])
    secrets.create_secret(
        Name=f"{SECRETS_PREFIXES['connections_prefix']}/app_db", SecretString=json.dumps(app_db)
    )

    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_APP_DB"}
    env |= secrets_backend_env(local_stack.ports, local_stack.secret)
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__FERNET_KEY": local_stack.secret["fernet_key"],  # imported passwords are encrypted
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
    }
    out = _airflow([sys.executable, "-c", HEALTHCHECK_RUN, str(DAGS_DIR / "platform_healthcheck.py")], env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["states"]["probe_app_db"] == "success", result

    import psycopg2

    with psycopg2.connect(local_stack.app_dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT ok FROM healthcheck_results WHERE run_id = %s AND conn_id = 'app_db'", (result["run_id"],)
        )
        assert cur.fetchall() == [(True,)]

    path = write_connections_file(tmp_path / "connections.json", local_stack.ports, local_stack.secret)
    airflow = str(Path(sys.executable).parent / "airflow")
    imported = _airflow([airflow, "connections", "import", str(path)], env)
    assert imported.returncode == 0, imported.stderr[-3000:]
    exported = _airflow([airflow, "connections", "export", str(tmp_path / "exported.json")], env)
    assert exported.returncode == 0, exported.stderr[-800:]
    stored = json.loads((tmp_path / "exported.json").read_text())  # from the metadata DB only
    assert {conn_id: _set_fields(conn) for conn_id, conn in stored.items()} == connections(
        local_stack.ports, local_stack.secret
    )
