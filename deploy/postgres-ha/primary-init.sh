#!/bin/sh
# The primary's first start (docker-entrypoint-initdb.d): let the standby replicate, and keep the
# WAL it has not received yet in a slot of its own, so it can never fall too far behind.
# Development only, like compose.yaml: trust auth. In production, a replication role with a
# password (or a certificate) and `hostssl replication <role> <network> scram-sha-256`.
# Nothing here may commit a transaction: this runs on the entrypoint's temporary server, which
# already has synchronous_standby_names, and a commit would wait for a standby not yet made.
set -eu
echo "host replication all all trust" >> "$PGDATA/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "SELECT pg_create_physical_replication_slot('standby1')"
