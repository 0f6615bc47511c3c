-- Signals sent from outside (the gateway's route and `relayflow workflows signal --broker`):
-- what they read of their workflow, and the idempotency keys they record (`signal_keys`,
-- migration 0009).

-- name: signal_target
-- What a signal needs to know of its workflow: which definition (and version: a run is pinned
-- to the one it started on), and whether it still runs.
-- Scoped to tenant $2 (null: any).
SELECT name, version, status FROM workflows WHERE id = $1 AND ($2::text IS NULL OR tenant = $2);

-- name: claim_signal_key
-- First use of a key for one signal of one workflow records the request it stands for and the
-- signal id it names; a later use returns nothing here and is compared with `get_signal_key`.
INSERT INTO signal_keys (workflow_id, signal_name, key, signal_id, request_hash)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (workflow_id, signal_name, key) DO NOTHING
RETURNING signal_id, request_hash;

-- name: get_signal_key
SELECT signal_id, request_hash
FROM signal_keys
WHERE workflow_id = $1 AND signal_name = $2 AND key = $3;
