-- The readiness probe's question to PostgreSQL (relayflow/probes.py): a round trip, nothing read.

-- name: ping
SELECT 1;
