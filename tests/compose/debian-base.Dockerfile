# The Debian packages every stand-in needs, on the debootstrap base (run.sh): Python 3.11,
# PostgreSQL 15 (server and clients) and Redis 7 from bookworm. Docker's layer cache keeps it.
ARG BASE
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3.11-venv curl dumb-init procps \
         postgresql-15 postgresql-client-15 redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
