# Stand-ins for the images compose pulls from Docker Hub (postgres, redis, moto, localstripe,
# mailpit), built from the Debian base (run.sh), which already holds PostgreSQL 15 and Redis 7
# from Debian's packages. moto, localstripe and the SMTP sink come from PyPI at the lock's
# versions. docker-compose.test.yaml selects this image for each of those services.
ARG BASE
FROM ${BASE}
ENV PIP_CERT=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt \
    PATH=/opt/venv/bin:/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY requirements.lock /tmp/req/
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --disable-pip-version-check uv==0.13.8 \
    && /opt/venv/bin/uv pip install --quiet --python /opt/venv/bin/python \
         'moto[server]' localstripe aiosmtpd -c /tmp/req/requirements.lock
# the SMTP sink is the local stack's own (localstripe's launcher is mounted by docker-compose.yaml)
COPY devstack/__init__.py devstack/smtp_sink.py /opt/standins/devstack/
COPY include/__init__.py /opt/standins/include/
COPY include/audit/__init__.py include/audit/alarm_check.py /opt/standins/include/audit/
COPY tests/compose/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PYTHONPATH=/opt/standins
