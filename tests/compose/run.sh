#!/usr/bin/env bash
# make test-compose: docker-compose.yaml run for real in a Docker engine on this machine.
#
# Installs the engine (docker.io, docker-compose, debootstrap) when missing, starts dockerd when
# none runs, builds the images (stand-ins for what compose pulls from Docker Hub, built from a
# Debian base; then the project's own Dockerfile FROM the stand-in Airflow base), and runs
# tests/compose/ against `docker-compose up` with two Celery workers. On the way out, whatever
# happened: `down -v`, and every process this script started is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=tests/compose
STATE=${COMPOSE_TEST_STATE:-/var/tmp/execplatform-compose-test}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-execplatform-test}
COMPOSE=(docker-compose --env-file "$HERE/test.env" -f docker-compose.yaml -f "$HERE/docker-compose.test.yaml")
STARTED=$SECONDS
DOCKERD_PID=""
mkdir -p "$STATE"

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if docker info >/dev/null 2>&1; then
    "${COMPOSE[@]}" logs --no-color >"$STATE/compose.log" 2>&1 || true
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  echo "test-compose: exit $rc after $((SECONDS - STARTED)) s (compose log: $STATE/compose.log)"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# 1. The engine: Debian's packages, installed once (needs root).
missing=()
for tool in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "test-compose: install ${missing[*]} (as root) first" >&2; exit 1; }
  echo "test-compose: installing ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  dockerd >"$STATE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "test-compose: dockerd did not start ($STATE/dockerd.log)" >&2; exit 1; }
fi
phase() { echo "test-compose: $1 ($((SECONDS - STARTED)) s)"; }

# 2. The Debian base (debootstrap's minimal bookworm and the machine's CA bundle), tagged by a
# hash of its inputs: a second run reuses it.
CA=/etc/ssl/certs/ca-certificates.crt
BASE_TAG=$(cat <(echo "debootstrap --variant=minbase bookworm") "$CA" | sha256sum | cut -c1-16)
BASE=execplatform-debian-minbase:$BASE_TAG
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  phase "building $BASE with debootstrap"
  rootfs=$STATE/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$STATE/debootstrap.log"
  # the machine's CA bundle at a path of its own: a later apt-get of ca-certificates overwrites
  # the system bundle, never this one
  mkdir -p "$rootfs/etc/ssl" && cp "$CA" "$rootfs/etc/ssl/host-ca.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

# 3. The images: stand-ins, then the project's Dockerfile FROM the stand-in Airflow base.
phase "building images"
build() { docker build -q "$@" . >/dev/null; }
build -f "$HERE/debian-base.Dockerfile" --build-arg BASE="$BASE" -t execplatform-debian:test
build -f "$HERE/airflow-base.Dockerfile" --build-arg BASE=execplatform-debian:test -t execplatform-airflow-base:test
build -f "$HERE/standins.Dockerfile" --build-arg BASE=execplatform-debian:test -t execplatform-standins:test
build --build-arg AIRFLOW_BASE_IMAGE=execplatform-airflow-base:test -t execplatform-airflow:test
phase "images built"

# 4. The stack, and the suite against it through the REST API.
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
"${COMPOSE[@]}" up -d --no-build --scale airflow-worker=2
phase "stack up"
.venv/bin/pytest -p no:cacheprovider --basetemp="$STATE/pytest" -o log_cli=true --log-cli-level=WARNING "$HERE" "$@"
phase "suite passed"
