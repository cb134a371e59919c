# The project's commands (see README.md). Everything runs from the project's own .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
export PYTHONPATH := $(CURDIR)

.PHONY: run up down env psql metrics connections-file test test-fast test-stack test-e2e test-pg15 test-compose lint fmt bench lock clean

# The venv is rebuilt only when the lock changes; a second `make` reuses it. The project's own
# provider (plugins/execplatform) is installed editable, with the locked setuptools and nothing
# else, so that Airflow registers its connection types. Bytecode is compiled once at install
# (30 s): where PYTHONDONTWRITEBYTECODE is set, every Airflow process would otherwise compile
# Airflow from source at each start (4.2 s instead of 2.0 s to import the scheduler, measured).
$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@$(VENV)/bin/uv pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	@$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	@touch $@

run: $(VENV)/.installed  ## the whole local stack in the foreground; Ctrl-C stops it
	@$(PY) -m devstack run

up: $(VENV)/.installed  ## the same in the background
	@$(PY) -m devstack up

down: $(VENV)/.installed
	@$(PY) -m devstack down

env: $(VENV)/.installed  ## eval "$$(make -s env)" points airflow ... at the running stack
	@$(PY) -m devstack env

psql: $(VENV)/.installed  ## psql on the running stack's app database
	@$(PY) -m devstack psql

metrics: $(VENV)/.installed  ## the metrics the running stack's CloudWatch (moto) holds
	@$(PY) -m devstack metrics

connections-file: $(VENV)/.installed  ## the running stack's connections for `airflow connections import`
	@$(PY) -m devstack connections-file

lint: $(VENV)/.installed  ## ruff's linter (with the AIR rules) and formatter, checking only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(VENV)/.installed  ## format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The test tiers. tests/conftest.py marks every test that needs a server (`stack`: it uses the
# local stack's fixtures) and every suite under tests/e2e (`airflow_stack`), so the fast tier is
# what is left; pytest fails (exit 5) when a tier selects nothing.
FAST_TIER := not stack and not airflow_stack and not compose_stack

test: lint  ## lint, then every tier in turn: fast, server-backed, end-to-end
	$(VENV)/bin/pytest -m "$(FAST_TIER)"
	$(VENV)/bin/pytest -m "stack and not airflow_stack"
	$(VENV)/bin/pytest tests/e2e

test-fast: $(VENV)/.installed  ## the tests that need no server: logic, DAG integrity, compose file (<1 min)
	$(VENV)/bin/pytest -m "$(FAST_TIER)"

test-stack: $(VENV)/.installed  ## the tests on the local stack's servers (no Airflow stack)
	$(VENV)/bin/pytest -m "stack and not airflow_stack"

test-e2e: $(VENV)/.installed  ## the end-to-end suites in tests/e2e: whole stacks with Airflow
	$(VENV)/bin/pytest tests/e2e

# The migration, undo, schema-lock and backup-comparison tests again, against another PostgreSQL
# major version already running at PG15_SERVER (host:port, trust auth for `postgres`); `make test`
# needs no such server.
PG15_SERVER ?= 127.0.0.1:5432
test-pg15: $(VENV)/.installed
	TEST_PG_SERVER=$(PG15_SERVER) $(VENV)/bin/pytest -p no:cacheprovider \
	  tests/include/migrations/test_migrations.py tests/include/migrations/test_runner.py \
	  tests/include/migrations/test_undo.py tests/include/migrations/test_schema_lock.py \
	  tests/include/migrations/test_throttle.py \
	  tests/include/backup/test_archive.py

# docker-compose.yaml run for real (tests/compose/run.sh): installs Docker when missing (root),
# starts dockerd when none runs, builds the images from a Debian base, `up` with two Celery
# workers, the suite in tests/compose over the REST API, then `down -v`. Prints its wall time.
test-compose: $(VENV)/.installed
	tests/compose/run.sh

bench: $(VENV)/.installed
	@set -e; for f in bench/bench_*.py; do $(PY) $$f; done

lock: $(VENV)/.installed  ## re-resolve the whole tree after editing requirements*.txt
	$(VENV)/bin/uv pip compile --quiet requirements-dev.txt --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-annotate --custom-compile-command "make lock" -o requirements.lock

clean: down
	rm -rf .local
