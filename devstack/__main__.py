"""`python -m devstack <command>`: what the Makefile's targets of the same names do (run, up, down, env,
psql, metrics, connections-file)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.stack import (
    LocalStack,
    StackError,
    StackInfo,
    aws_client,
    load_secrets,
    state_dir,
    tail,
    write_connections_file,
)


def _api_port() -> int | None:
    value = os.environ.get("STACK_API_PORT")
    return int(value) if value else None  # 0: any free port


def _banner(info: StackInfo) -> str:
    lines = [f"Local stack ready (state in {info.folder}, logs in {info.folder}/logs)."]
    if info.login:
        lines += [
            f"  Airflow UI: {info.login['url']}",
            f"  Login:      {info.login['username']} / {info.login['password']}",
        ]
    lines.append('  CLI:        eval "$(make -s env)" && airflow dags list')
    return "\n".join(lines)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(folder: Path, with_airflow: bool) -> int:
    existing = StackInfo.read(folder)
    if existing and existing.alive():
        print(
            f"A stack already runs from {folder} (pid {existing.pid}); `make down` first.",
            file=sys.stderr,
        )
        return 1
    # explicitly: a process started in the background by a script inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler, so Ctrl-C would stop nothing
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    stack = LocalStack(folder, with_airflow=with_airflow, api_port=_api_port())
    code = 0
    try:
        stack.start()
        print(_banner(stack.info), "\nCtrl-C stops every process of the stack.", flush=True)
        while (exited := stack.supervisor.first_exited()) is None:
            time.sleep(1)
        print(
            f"{exited.name} exited with code {exited.proc.returncode}; stopping the stack.",
            file=sys.stderr,
        )
        code = 1
    except KeyboardInterrupt:
        print("\nStopping the local stack...", flush=True)
    except StackError as exc:
        print(f"The local stack failed to start: {exc}", file=sys.stderr)
        code = 1
    finally:
        # a second Ctrl-C must not cut the shutdown short and leave servers behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    print("Local stack stopped.", flush=True)
    return code


def up(folder: Path, with_airflow: bool, timeout: float = 300.0) -> int:
    existing = StackInfo.read(folder)
    if existing and existing.alive():
        print(_banner(existing))
        return 0
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    log = folder / "logs" / "stack.log"
    argv = [sys.executable, "-m", "devstack", "run"] + ([] if with_airflow else ["--no-airflow"])
    with open(log, "ab") as out:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(
                f"The local stack failed to start; last lines of {log}:\n{tail(log)}",
                file=sys.stderr,
            )
            return 1
        info = StackInfo.read(folder)
        if info and info.pid == child.pid and info.state == "ready":
            print(_banner(info))
            print("`make down` stops it.")
            return 0
        time.sleep(0.5)
    child.terminate()
    child.wait()
    print(f"The local stack did not become ready in {timeout:.0f}s; see {log}", file=sys.stderr)
    return 1


def down(folder: Path, timeout: float = 120.0) -> int:
    info = StackInfo.read(folder)
    if not info or not info.alive():
        print("No local stack is running.")
        (folder / "stack.json").unlink(missing_ok=True)
        return 0
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while info.alive() and time.monotonic() < deadline:
        time.sleep(0.3)
    if info.alive():
        # its servers get SIGKILL-proof notice through PR_SET_PDEATHSIG
        os.kill(info.pid, signal.SIGKILL)
    print("Local stack stopped.")
    return 0


def _running_stack(folder: Path) -> StackInfo | None:
    """The running stack's record, or None after telling the user how to start one."""
    info = StackInfo.read(folder)
    if info and info.alive():
        return info
    print("No local stack is running: start one with `make up`.", file=sys.stderr)
    return None


def env(folder: Path) -> int:
    info = _running_stack(folder)
    if info is None:
        return 1
    for key, value in sorted(info.env().items()):
        print(f"export {key}={shlex.quote(value)}")
    # the project's own `airflow` first, so the CLI and the stack are the same version
    print(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
    return 0


def psql(folder: Path, args: list[str]) -> int:
    """psql on the app database as the `app_db` connection's role (e.g. `SELECT * FROM alerts`)."""
    import json

    from include.backup.pg_programs import pg_bin

    info = _running_stack(folder)
    if info is None:
        return 1
    c = json.loads(info.env()["AIRFLOW_CONN_APP_DB"])
    env = {**os.environ, "PGPASSWORD": c["password"]}
    argv = [
        pg_bin("psql"),
        "-h",
        c["host"],
        "-p",
        str(c["port"]),
        "-U",
        c["login"],
        c["schema"],
        *args,
    ]
    os.execve(argv[0], argv, env)


def metrics(folder: Path) -> int:
    """The metrics CloudWatch (moto) holds, with their latest datapoints."""
    import json
    from datetime import UTC, datetime, timedelta

    info = _running_stack(folder)
    if info is None:
        return 1
    cloudwatch = aws_client("cloudwatch", json.loads(info.env()["AIRFLOW_CONN_AWS_DEFAULT"]))
    now = datetime.now(UTC)
    for metric in cloudwatch.list_metrics()["Metrics"]:
        stats = cloudwatch.get_metric_statistics(
            Namespace=metric["Namespace"],
            MetricName=metric["MetricName"],
            Dimensions=metric["Dimensions"],
            StartTime=now - timedelta(days=1),
            EndTime=now,
            Period=86400,
            Statistics=["Sum"],
        )["Datapoints"]
        dims = ",".join(f"{d['Name']}={d['Value']}" for d in metric["Dimensions"])
        total = sum(d["Sum"] for d in stats)
        print(f"{metric['Namespace']}/{metric['MetricName']} [{dims}] sum(24h)={total:g}")
    return 0


def connections_file(folder: Path) -> int:
    """The running stack's connections as a file for `airflow connections import`."""
    info = _running_stack(folder)
    if info is None:
        return 1
    path = write_connections_file(folder / "connections.json", info.ports, load_secrets(folder))
    print(f"{path}: import with `airflow connections import {path}`")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument(
        "command", choices=["run", "up", "down", "env", "psql", "metrics", "connections-file"]
    )
    parser.add_argument("--no-airflow", action="store_true", help="only the servers, not Airflow")
    args, rest = parser.parse_known_args()
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        return run(folder, not args.no_airflow)
    if args.command == "up":
        return up(folder, not args.no_airflow)
    if args.command == "down":
        return down(folder)
    if args.command == "psql":
        return psql(folder, rest)
    if args.command == "metrics":
        return metrics(folder)
    if args.command == "connections-file":
        return connections_file(folder)
    return env(folder)


if __name__ == "__main__":
    sys.exit(main())
