-- API keys (`api_keys`, migration 0016): made and revoked by `relayflow keys`, checked by the
-- gateway on every request.

-- name: insert_key
INSERT INTO api_keys (id, tenant, role, name, secret_hash)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, tenant, role, name, created_at, last_used_at, revoked_at;

-- name: key_to_verify
-- One row by the key's public id; `stale` says whether its last use is older than $2 seconds
-- (on the database's clock, as `touch_key` compares), so that a check writes at most that often.
SELECT id, tenant, role, name, created_at, last_used_at, revoked_at, secret_hash,
       last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2) AS stale
FROM api_keys
WHERE id = $1;

-- name: touch_key
-- Guarded like `key_to_verify`'s `stale`: of requests racing with the same key, one writes.
UPDATE api_keys SET last_used_at = now()
WHERE id = $1
  AND revoked_at IS NULL
  AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2));

-- name: list_keys
-- Every key, or those of tenant $1; never the hash.
SELECT id, tenant, role, name, created_at, last_used_at, revoked_at
FROM api_keys
WHERE $1::text IS NULL OR tenant = $1
ORDER BY tenant, created_at, id;

-- name: revoke_key
-- Revoked once: the first revocation's time stays. No row: no such key, or revoked already.
UPDATE api_keys SET revoked_at = now()
WHERE id = $1 AND revoked_at IS NULL
RETURNING id, tenant, role, name, created_at, last_used_at, revoked_at;

-- name: get_key
SELECT id, tenant, role, name, created_at, last_used_at, revoked_at
FROM api_keys
WHERE id = $1;

-- name: any_active_key
-- Whether any key could authenticate: the gateway's `auto` mode runs open only when none can.
SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL);
