#!/bin/bash
# What the official postgres image does with POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB,
# for Debian's PostgreSQL 15: initialise the data folder once, then run the server on all
# interfaces with password (scram) authentication.
set -euo pipefail
export PGDATA=/var/lib/postgresql/data
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "$POSTGRES_PASSWORD" > /run/postgresql/pw
  chown postgres /run/postgresql/pw
  su postgres -c "initdb -D $PGDATA -U $POSTGRES_USER --encoding=UTF8 --locale=C.UTF-8 --pwfile=/run/postgresql/pw --auth-host=scram-sha-256 --auth-local=trust" >/dev/null
  rm /run/postgresql/pw
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  su postgres -c "pg_ctl -D $PGDATA -o '-c listen_addresses=' -w start" >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    su postgres -c "createdb -U $POSTGRES_USER $POSTGRES_DB"
  fi
  su postgres -c "pg_ctl -D $PGDATA -m fast -w stop" >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA" -c listen_addresses='*' 
