# A stand-in for the official apache/airflow image, built from the Debian base (run.sh): Python
# 3.11, the locked runtime tree in a virtualenv first on PATH, the `airflow` user (uid 50000,
# AIRFLOW_HOME /opt/airflow) and an entrypoint that treats `command:` as the official one does.
# The project's Dockerfile is then built FROM it, unchanged.
ARG BASE
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_CERT=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt \
    AIRFLOW_HOME=/opt/airflow VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN useradd --uid 50000 --gid 0 --create-home --home-dir /home/airflow airflow \
    && mkdir -p /opt/airflow /opt/venv && chown airflow:0 /opt/airflow /opt/venv
COPY --chown=airflow:0 requirements.txt requirements.lock /tmp/req/
USER airflow
# uv installs the locked runtime tree (what requirements.txt needs, at the lock's versions)
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --disable-pip-version-check uv==0.13.8 \
    && /opt/venv/bin/uv pip install --quiet --python /opt/venv/bin/python \
         -r /tmp/req/requirements.txt -c /tmp/req/requirements.lock
COPY tests/compose/entrypoint.sh /entrypoint
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/dumb-init", "--", "/entrypoint"]
CMD ["--help"]
