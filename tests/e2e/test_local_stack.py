"""The commands as a user types them: `make up`, `make env`, `airflow ...`, `make down`, `make run` + Ctrl-C.

Runs the real api-server, scheduler, dag-processor and triggerer on free ports, in a state
folder of the test's own, so it never touches a developer's running stack.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import psycopg2
import pytest

from devstack.stack import ROOT, StackInfo
from tests.airflow_api import api, token_for, wait_for


@pytest.fixture(scope="module")
def stack_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("airflow-stack")
    yield folder
    info = StackInfo.read(folder)
    if info and info.alive():  # a failed test must not leave the stack running
        os.kill(info.pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def user_env(stack_folder) -> dict[str, str]:
    """A shell's environment: nothing of the test session's own Airflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(STACK_STATE_DIR=str(stack_folder), STACK_API_PORT="0")
    return env


@pytest.fixture
def background(stack_folder, user_env):
    """Starts a shell command that runs while the test goes on, its output in the stack folder;
    whatever still runs when the test ends is killed with its children."""
    started: list[subprocess.Popen] = []

    def start(command: str) -> tuple[subprocess.Popen, Path]:
        log = stack_folder / f"background-{len(started)}.log"
        with open(log, "w") as out:
            started.append(
                subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=ROOT,
                    env=user_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return started[-1], log

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sh(command: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(processes: list[psutil.Process]) -> None:
    time.sleep(1)
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {[(p.pid, p.name()) for p in alive]}"


def test_make_up_env_airflow_cli_rest_and_make_down(stack_folder, user_env, background):
    up = sh("make up", user_env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Login:" in up.stdout
    info = StackInfo.read(stack_folder)
    processes = descendants(info.pid)
    assert len(processes) >= 8  # postgres, redis, moto, stripe, smtp and Airflow's four

    airflow = 'eval "$(make -s env)" && airflow '
    wait_for(
        lambda: "platform_healthcheck" in sh(airflow + "dags list -o json", user_env).stdout,
        120,
        "airflow dags list to show platform_healthcheck",
    )

    run = sh(airflow + "dags test platform_healthcheck", user_env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    app = json.loads(info.env()["AIRFLOW_CONN_APP_DB"])
    with psycopg2.connect(
        host=app["host"],
        port=app["port"],
        dbname=app["schema"],
        user=app["login"],
        password=app["password"],
    ) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT ON (conn_id) conn_id, ok FROM healthcheck_results "
                "ORDER BY conn_id, checked_at DESC"
            )
            assert dict(cur.fetchall()) == {
                c: True
                for c in (
                    "app_db",
                    "aws_default",
                    "redis_default",
                    "smtp_default",
                    "stripe_default",
                )
            }

    # `dags test db_backup`, the longest command, runs while the commands below do: it shares no
    # DAG with them (a `dags test` and the scheduler on one DAG's runs can deadlock). It starts
    # once db_backup's first scheduled run (started with the stack) has ended, so that neither
    # run's retention deletes the other's backup: the newest backup, checked below, is its own
    token = token_for(info.login)
    backup_runs = f"{info.login['url']}/api/v2/dags/db_backup/dagRuns"
    wait_for(
        lambda: (
            (runs := api(backup_runs, token)["dag_runs"])
            and all(r["state"] in ("success", "failed") for r in runs)
        ),
        300,
        "db_backup's scheduled run to end",
    )
    backup, backup_log = background(airflow + "dags test db_backup")

    # the documented ways to look at what the DAGs recorded
    rows = sh(
        ".venv/bin/python -m devstack psql -tAc 'SELECT count(*) FROM healthcheck_results'",
        user_env,
    )
    assert rows.returncode == 0 and int(rows.stdout.strip()) >= 5, rows.stderr
    metrics = sh("make -s metrics", user_env)
    assert "ExecPlatform/Healthcheck/ProbeSucceeded [ConnId=aws_default]" in metrics.stdout, metrics.stderr

    # the real scheduler and executor: trigger through REST API v2 and follow the run
    base = f"{info.login['url']}/api/v2/dags/platform_healthcheck/dagRuns"
    run_id = api(base, token, {"logical_date": None, "conf": {"reason": "e2e"}})["dag_run_id"]
    state = wait_for(
        lambda: (s := api(f"{base}/{run_id}", token)["state"]) in ("success", "failed") and s,
        240,
        f"run {run_id} to finish",
    )
    assert state == "success"

    # a verified backup in moto, from the DAG as a user runs it
    assert backup.wait(300) == 0, backup_log.read_text()[-3000:]
    with psycopg2.connect(
        host=app["host"],
        port=app["port"],
        dbname=app["schema"],
        user=app["login"],
        password=app["password"],
    ) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT status, location, restore_seconds > 0 FROM backups ORDER BY id DESC LIMIT 1")
            status, location, restored = cur.fetchone()
    assert (status, restored) == ("verified", True) and location.startswith("s3://execplatform-backups/")

    # every run's outcome reaches CloudWatch through the DAG-level callback (the dag-processor
    # runs it): the scheduled first run and this one at least
    def succeeded_runs() -> float:
        line = next(
            (
                ln
                for ln in sh("make -s metrics", user_env).stdout.splitlines()
                if ln.startswith("ExecPlatform/DagRunSucceeded [DagId=platform_healthcheck,")
            ),
            "",
        )
        return float(line.rsplit("=", 1)[1]) if line else 0.0

    wait_for(lambda: succeeded_runs() >= 2, 120, "DagRunSucceeded datapoints for both runs")

    down = sh("make down", user_env)
    assert down.returncode == 0, down.stderr
    assert_all_gone(processes)
    refused = sh("make -s env", user_env)
    assert refused.returncode != 0 and "No local stack is running" in refused.stderr


def test_make_run_prints_a_login_and_ctrl_c_leaves_nothing_behind(stack_folder, user_env):
    make = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=user_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in make.stdout], daemon=True).start()
    output: list[str] = []

    def read_until(marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in output):
            try:
                output.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {marker!r} within {timeout:.0f}s:\n{''.join(output)}") from None

    try:
        read_until("Login:", 300)
        url = next(line.split()[-1] for line in output if "Airflow UI:" in line)
        username, _, password = next(line for line in output if "Login:" in line).split()[-3:]
        token = token_for({"url": url, "username": username, "password": password})
        dags = wait_for(
            lambda: [d["dag_id"] for d in api(f"{url}/api/v2/dags", token)["dags"]],
            120,
            "the DAG list",
        )
        assert "platform_healthcheck" in dags
        processes = descendants(make.pid)

        os.killpg(make.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        read_until("Local stack stopped.", 120)
        # make re-raises the SIGINT its recipe got, as a shell would report 130
        assert make.wait(60) in (0, 2, -signal.SIGINT)
        assert_all_gone(processes)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
