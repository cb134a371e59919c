"""Static checks of the multi-host setup: docker-compose.yaml and the Airflow Dockerfile.

The compose file is loaded as Docker Compose loads it: YAML (anchors and ``<<`` merges
resolved), then ``${VAR:-default}`` interpolation with an empty environment (so the dev
defaults are what gets checked), then validation against the Compose specification by the
``compose-spec`` package, whose Rust parser rejects unknown keys and wrongly typed values.
No Docker daemon is needed.
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
    "./config": "/opt/airflow/config",
}

# Compose interpolation: $$ (literal $), ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR.
_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_]\w*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_]\w*)(?::?-(?P<default>.*))?", re.DOTALL)


def _interpolate(value: Any, missing: set[str]) -> Any:
    """Substitute variables as Compose does with nothing set; record those lacking a default."""
    if isinstance(value, dict):
        return {key: _interpolate(item, missing) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, missing) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            missing.add(match["named"])
            return ""
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ValueError(f"unsupported interpolation ${{{match['braced']}}} in {value!r}")
        if braced["default"] is None:
            missing.add(braced["name"])
            return ""
        return braced["default"]

    return _VARIABLE.sub(substitute, value)


def _load_compose() -> tuple[dict[str, Any], set[str]]:
    missing: set[str] = set()
    document = _interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), missing)
    return document, missing


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


def test_every_variable_has_a_dev_default() -> None:
    _, missing = _load_compose()
    assert not missing, f"variables without a ${{VAR:-default}} dev default: {sorted(missing)}"


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
    assert (redis["host"], redis["port"], redis["extra"]["db"]) == ("redis", 6379, 1)
    # db 0 is the Celery broker; the cache must not share it.
    assert common_env["AIRFLOW__CELERY__BROKER_URL"].endswith("/0")


def test_secrets_come_from_variables() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    env = raw["x-airflow-common"]["environment"]
    assert "${APP_DB_PASSWORD:-" in env["AIRFLOW_CONN_APP_DB"]
    assert "${STRIPE_API_KEY:-" in env["AIRFLOW_CONN_STRIPE_DEFAULT"]
    assert "${AIRFLOW_DB_PASSWORD:-" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "${APP_DB_PASSWORD:-" in raw["services"]["app-db"]["environment"]["POSTGRES_PASSWORD"]


# (e) import path and mounts


def test_include_is_importable_in_every_airflow_container(
    services: dict[str, dict[str, Any]], common_env: dict[str, str]
) -> None:
    assert common_env["PYTHONPATH"] == "/opt/airflow"
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
    match = re.search(
        r"^FROM\s+apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)\s*$",
        DOCKERFILE.read_text(),
        re.MULTILINE,
    )
    assert match, "Dockerfile does not start FROM apache/airflow:<version>-python<version>"
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
