# The Airflow image for docker-compose.yaml. Its base is a build argument: the official image of
# the pinned Airflow version by default (its version must equal the apache-airflow pin in
# requirements.txt; tests/test_compose.py checks it), or a stand-in built from the same parts
# (make test-compose builds one from Debian, since this machine cannot pull from Docker Hub).
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# What the DAGs run besides Python: pg_dump and pg_restore for db_backup, db_restore and
# db_migrate's rehearsal, of the compose database's major (15; a newer server needs a newer
# client). PG_BIN points the backup code at them.
USER root
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends postgresql-client-15 >/dev/null \
    && rm -rf /var/lib/apt/lists/*
USER airflow
ENV PG_BIN=/usr/lib/postgresql/15/bin

# Runtime pins only (squawk, db_migrate's linter, among them); requirements.lock constrains every
# transitive dependency to the versions the test suite ran against.
COPY requirements.txt requirements.lock /opt/airflow/
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt -c /opt/airflow/requirements.lock
