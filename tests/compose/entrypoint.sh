#!/bin/bash
# The stand-in Airflow base's entrypoint, as the official image's treats `command:`: `bash` and
# `python` run as given, `airflow ...` as given, anything else as an Airflow subcommand
# (`api-server`, `celery worker`).
set -euo pipefail
case "${1:-}" in
  bash | python | airflow) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
