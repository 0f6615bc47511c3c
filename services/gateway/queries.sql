-- The gateway's reads and its one write (idempotency keys).

-- name: claim_idempotency_key
-- First use of a key records the request it stands for; a later use returns nothing here and
-- is compared with `get_idempotency_key`.
INSERT INTO idempotency_keys (workflow_name, key, workflow_id, request_hash)
VALUES ($1, $2, $3, $4)
ON CONFLICT (workflow_name, key) DO NOTHING
RETURNING workflow_id, request_hash;

-- name: get_idempotency_key
SELECT workflow_id, request_hash
FROM idempotency_keys
WHERE workflow_name = $1 AND key = $2;

-- name: get_workflow
SELECT id, name, status, input, output, error, steps, created_at, updated_at, finished_at
FROM workflows
WHERE id = $1;

-- name: workflow_exists
SELECT EXISTS (SELECT 1 FROM workflows WHERE id = $1)
    OR EXISTS (SELECT 1 FROM workflow_events WHERE workflow_id = $1);

-- name: events_after
-- The replay source of event streams, in order, from just after the last event a client saw.
SELECT seq, event, body
FROM workflow_events
WHERE workflow_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3;

-- name: ping
SELECT 1;
