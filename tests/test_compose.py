"""Static checks of the compose setup: docker-compose.yaml and the Airflow Dockerfile.

The compose file is loaded as Docker Compose loads it: YAML (anchors and ``<<`` merges
resolved), then interpolation with make test-compose's env file (tests/compose/test.env) as the
environment: the dev defaults (``${VAR:-default}``) are what gets checked, and the secrets,
which have none (``${VAR:?message}``), take the test's values; then validation against the
Compose specification by the ``compose-spec`` package, whose Rust parser rejects unknown keys
and wrongly typed values. No Docker daemon is needed (`make test-compose` runs the file).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
TEST_ENV = ROOT / "tests" / "compose" / "test.env"
REQUIREMENTS = ROOT / "requirements.txt"

AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
}
REQUIRED_SERVICES = AIRFLOW_SERVICES | {
    "postgres",
    "redis",
    "app-db",
    "moto",
    "localstripe",
    "smtp-sink",
}
ONE_SHOT_SERVICES = {"airflow-init"}
CONNECTIONS = {
    "APP_DB": "postgres",
    "AWS_DEFAULT": "aws",
    "STRIPE_DEFAULT": "stripe",
    "SMTP_DEFAULT": "smtp",
    "REDIS_DEFAULT": "redis",
    "TASK_EXECUTOR": "ai_executor",
}
PROJECT_MOUNTS = {
    "./dags": "/opt/airflow/dags",
    "./plugins": "/opt/airflow/plugins",
    "./include": "/opt/airflow/include",
}

# Compose interpolation: $$ (literal $), ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?message}, $VAR.
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?-|:\?)(?P<word>.*))?", re.DOTALL)


def harness_env() -> dict[str, str]:
    """make test-compose's env file: the values its stack runs with."""
    lines = TEST_ENV.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def _interpolate(value: Any, env: dict[str, str], found: dict[str, set[str]]) -> Any:
    """Substitute variables as Compose does with `env` set; record each variable's kind in
    `found`: "default" (has one), "required" (``:?``, no default) or "bare" (neither)."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env, found) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env, found) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            found["bare"].add(match["named"])
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ValueError(f"unsupported interpolation ${{{match['braced']}}} in {value!r}")
        name, op, word = braced["name"], braced["op"], braced["word"]
        if op is None:
            found["bare"].add(name)
            return env.get(name, "")
        if op == ":?":
            found["required"].add(name)
            if not env.get(name):
                raise ValueError(f"{name} is required ({word}) and not set")
            return env[name]
        found["default"].add(name)
        if op == ":-":
            return env.get(name) or word
        return env.get(name, word)

    return _VARIABLE.sub(substitute, value)


def _load_compose(env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, set[str]]]:
    found: dict[str, set[str]] = defaultdict(set)
    document = _interpolate(
        yaml.safe_load(COMPOSE_FILE.read_text()), harness_env() if env is None else env, found
    )
    return document, found


def _validate(document: dict[str, Any]) -> PyCompose:
    """Parse with the Compose-spec model (raises ValueError) and check its references."""
    compose = PyCompose.from_json(json.dumps(document))
    compose.validate()
    return compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document, _ = _load_compose()
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def common_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The environment every Airflow service gets from the x-airflow-common anchor."""
    envs = [services[name]["environment"] for name in sorted(AIRFLOW_SERVICES)]
    return {key: value for key, value in envs[0].items() if all(e.get(key) == value for e in envs)}


def _short_mounts(service: dict[str, Any]) -> dict[str, str]:
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            mounts[source] = target
        else:
            mounts[volume.get("source", "")] = volume["target"]
    return mounts


# (a) Compose specification


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    compose_model = _validate(compose)
    assert set(compose_model.service_names()) >= REQUIRED_SERVICES


@pytest.mark.parametrize(
    ("service", "key", "bad_value"),
    [
        ("airflow-worker", "no_such_key", True),
        ("airflow-worker", "ports", 5),
        ("redis", "healthcheck", {"test": ["CMD", "redis-cli", "ping"], "intervall": "5s"}),
        ("airflow-apiserver", "depends_on", {"postgres": {"condition": "service_up"}}),
        ("app-db", "image", "postgres:${UNSET_TAG}"),
    ],
)
def test_compose_spec_validation_rejects_a_broken_file(
    compose: dict[str, Any], service: str, key: str, bad_value: Any
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"][service][key] = bad_value
    with pytest.raises(ValueError):
        _validate(broken)


SECRETS = {
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "APP_DB_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "STRIPE_API_KEY",
}


def test_secrets_have_no_default_and_every_other_variable_has_one() -> None:
    _, found = _load_compose()
    assert found["required"] == SECRETS
    assert not found["bare"], f"variables with neither a default nor :? {sorted(found['bare'])}"
    assert not (found["default"] & SECRETS), sorted(found["default"] & SECRETS)


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret(secret: str) -> None:
    env = {k: v for k, v in harness_env().items() if k != secret}
    with pytest.raises(ValueError, match=f"{secret} is required"):
        _load_compose(env)


def test_references_point_at_defined_services_and_volumes(compose: dict[str, Any]) -> None:
    # compose-spec's validate() does not check these; `docker compose up` refuses the file.
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert set(depends_on) <= set(services), f"{name} depends on an undefined service"
        for source in _short_mounts(service):
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"


# (b) services and health checks


def test_every_design_service_is_present(services: dict[str, dict[str, Any]]) -> None:
    assert REQUIRED_SERVICES - set(services) == set()


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT_SERVICES:
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"


def test_airflow_services_wait_for_a_successful_init(services: dict[str, dict[str, Any]]) -> None:
    for name in AIRFLOW_SERVICES - ONE_SHOT_SERVICES:
        condition = services[name]["depends_on"]["airflow-init"]["condition"]
        assert condition == "service_completed_successfully", name
    init_command = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init_command


def test_airflow_runs_the_celery_executor_on_redis_and_postgres(common_env: dict[str, str]) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common_env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "@postgres/" in common_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "@postgres/" in common_env["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert common_env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )
    assert common_env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".SimpleAuthManager")


def test_sentry_gets_no_frame_locals_and_no_per_call_breadcrumbs(
    common_env: dict[str, str],
) -> None:
    """As on the local stack: locals hold connection passwords; the httpx/redis integrations cost
    a drain 0.35 ms of CPU per execution task, and the default stdlib one doubled the executor
    client's CPU per call."""
    from devstack.stack import airflow_env

    names = ("INCLUDE_LOCAL_VARIABLES", "AUTO_ENABLING_INTEGRATIONS", "DEFAULT_INTEGRATIONS")
    ports = defaultdict(lambda: 1)
    secret = defaultdict(lambda: "x")
    local = airflow_env(Path("/nowhere"), ports, secret)
    for name in names:
        assert common_env[f"AIRFLOW__SENTRY__{name}"] == "false"
        assert local[f"AIRFLOW__SENTRY__{name}"] == "False"


# (c) the worker scales


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["airflow-worker"]
    assert "container_name" not in worker
    for port in worker.get("ports", []):
        if isinstance(port, dict):
            assert "published" not in port, f"worker publishes a host port: {port}"
        else:
            assert ":" not in str(port), f"worker publishes a host port: {port}"


# (d) connections


@pytest.mark.parametrize(("conn_id", "conn_type"), sorted(CONNECTIONS.items()))
def test_connection_is_set_as_json(common_env: dict[str, str], conn_id: str, conn_type: str) -> None:
    raw = common_env.get(f"AIRFLOW_CONN_{conn_id}")
    assert raw, f"AIRFLOW_CONN_{conn_id} is not in the common Airflow environment"
    connection = json.loads(raw)
    assert connection["conn_type"] == conn_type


def test_connections_point_at_the_compose_services(common_env: dict[str, str]) -> None:
    def conn(conn_id: str) -> dict[str, Any]:
        return json.loads(common_env[f"AIRFLOW_CONN_{conn_id}"])

    app_db = conn("APP_DB")
    assert (app_db["host"], app_db["schema"]) == ("app-db", "app")
    aws = conn("AWS_DEFAULT")
    assert aws["extra"] == {"endpoint_url": "http://moto:5000", "region_name": "us-east-1"}
    stripe = conn("STRIPE_DEFAULT")
    assert stripe["host"] == "http://localstripe:8420"
    assert stripe["password"].startswith("sk_test_")
    smtp = conn("SMTP_DEFAULT")
    assert (smtp["host"], smtp["port"]) == ("smtp-sink", 1025)
    redis = conn("REDIS_DEFAULT")
    # as on the local stack: the cache in db 0, the Celery broker in db 1
    assert (redis["host"], redis["port"], redis["extra"]["db"]) == ("redis", 6379, 0)
    assert common_env["REDIS_URL"] == "redis://redis:6379/0"
    assert common_env["AIRFLOW__CELERY__BROKER_URL"].endswith("/1")


def test_secrets_come_from_variables() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    env = raw["x-airflow-common"]["environment"]
    assert "${APP_DB_PASSWORD:?" in env["AIRFLOW_CONN_APP_DB"]
    assert "${STRIPE_API_KEY:?" in env["AIRFLOW_CONN_STRIPE_DEFAULT"]
    assert "${AIRFLOW_DB_PASSWORD:?" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "${APP_DB_PASSWORD:?" in raw["services"]["app-db"]["environment"]["POSTGRES_PASSWORD"]


def test_the_ui_is_published_on_loopback_unless_told_otherwise() -> None:
    document, _ = _load_compose({**harness_env(), "AIRFLOW_UI_PORT": "8080"})
    assert document["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    for name, service in document["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_redis_is_configured_as_the_cache_expects(services: dict[str, dict[str, Any]]) -> None:
    """A memory cap with LFU eviction, as on the local stack (devstack/stack.py)."""
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lfu"
    assert command[command.index("--maxmemory") + 1] == "256mb"


def test_localstripe_runs_the_launcher_with_the_disputes_resource(
    services: dict[str, dict[str, Any]],
) -> None:
    """roi_sync lists disputes, which localstripe lacks: the service runs the project's launcher
    (devstack/stripe_server.py, mounted from the checkout), as the local stack does."""
    service = services["localstripe"]
    mounts = _short_mounts(service)
    target = mounts["./devstack/stripe_server.py"]
    assert (ROOT / "devstack/stripe_server.py").is_file()
    assert service["command"][:2] == ["python", target]


def test_postgres_is_the_major_that_make_test_pg15_covers(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "app-db", "rehearsal-db"):
        assert services[name]["image"] == "postgres:15", name
    assert re.search(r"^ENV PG_BIN=/usr/lib/postgresql/15/bin$", DOCKERFILE.read_text(), re.M)


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert not image.endswith(":latest") and ":" in image, f"{name} uses an unpinned image {image!r}"


# (e) import path and mounts


def test_include_is_importable_in_every_airflow_container(
    services: dict[str, dict[str, Any]], common_env: dict[str, str]
) -> None:
    assert common_env["PYTHONPATH"] == "/opt/airflow:/opt/airflow/plugins"
    for name in AIRFLOW_SERVICES:
        mounts = _short_mounts(services[name])
        for source, target in PROJECT_MOUNTS.items():
            assert mounts.get(source) == target, f"{name} does not mount {source} at {target}"


# (f) the image


def _pinned_airflow_version() -> str:
    assert REQUIREMENTS.exists(), "requirements.txt is missing"
    match = re.search(r"^apache-airflow==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE)
    assert match, "requirements.txt does not pin apache-airflow==X"
    return match[1]


def _dockerfile_base() -> re.Match[str]:
    """The default of the base image's build argument, and that the FROM line uses it."""
    text = DOCKERFILE.read_text()
    match = re.search(
        r"^ARG\s+AIRFLOW_BASE_IMAGE=apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)\s*$",
        text,
        re.MULTILINE,
    )
    assert match, (
        "Dockerfile's AIRFLOW_BASE_IMAGE does not default to apache/airflow:<version>-python<version>"
    )
    assert re.search(r"^FROM\s+\$\{AIRFLOW_BASE_IMAGE\}\s*$", text, re.MULTILINE)
    return match


def test_image_airflow_version_matches_the_requirements_pin() -> None:
    assert _dockerfile_base()["airflow"] == _pinned_airflow_version()


def test_image_python_matches_the_project() -> None:
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires_python).contains(_dockerfile_base()["python"])


def test_image_installs_the_requirements_under_the_lock() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^COPY\s+requirements\.txt\s+requirements\.lock\s", dockerfile, re.M)
    assert re.search(r"pip install .*-r \S*requirements\.txt -c \S*requirements\.lock", dockerfile)


def test_airflow_services_are_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in AIRFLOW_SERVICES:
        assert services[name].get("build") in (".", {"context": "."}), name


def test_buckets_are_named_as_on_the_local_stack(common_env: dict[str, str]) -> None:
    from devstack.stack import BACKUP_BUCKET, MODEL_BUCKET

    assert (common_env["BACKUP_BUCKET"], common_env["MODEL_BUCKET"]) == (
        BACKUP_BUCKET,
        MODEL_BUCKET,
    )
