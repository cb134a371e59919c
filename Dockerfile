# The Airflow image for the multi-host setup (docker-compose.yaml).
# The FROM tag's Airflow version must equal the apache-airflow pin in requirements.txt
# (tests/test_compose.py checks it), so the image never silently up- or downgrades Airflow.
FROM apache/airflow:3.3.2-python3.11

# Runtime pins only; requirements.lock constrains every transitive dependency to the
# versions the test suite ran against. Installed as the image's `airflow` user (the default).
COPY requirements.txt requirements.lock /opt/airflow/
RUN pip install --no-cache-dir -r /opt/airflow/requirements.txt -c /opt/airflow/requirements.lock
