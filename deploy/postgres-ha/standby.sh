#!/bin/sh
# The standby's entry point: on its first start (an empty data directory) copy the primary with
# pg_basebackup and configure streaming from it (standby.signal, primary_conninfo naming this
# standby as synchronous_standby_names does, the primary's slot); then run PostgreSQL. Once
# promoted (SELECT pg_promote()), the same server goes on as the primary.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres; do sleep 1; done
    pg_basebackup -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres -D "$PGDATA" \
        -X stream -S "$STANDBY_NAME" -c fast --write-recovery-conf
    cat >> "$PGDATA/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=$PRIMARY_HOST port=$PRIMARY_PORT user=postgres application_name=$STANDBY_NAME'
primary_slot_name = '$STANDBY_NAME'
CONF
    chmod 700 "$PGDATA"
fi
# Not the primary's synchronous_standby_names (it is on the primary's command line, not in the
# copied files): promoted, this server has no standby to wait for.
exec postgres -c hot_standby=on
