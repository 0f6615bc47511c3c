-- What this orchestrator replica loads (`loaded_definitions`, migration 0014). The gateway reads
-- the live rows (`services/gateway/queries.sql`, `loaded_versions`).

-- name: announce
-- One row per (workflow, version) loaded by replica $1, seen now; and the rows of replicas not
-- seen for $4 seconds (they died without withdrawing) go, so the table holds only the living.
WITH seen AS (
    INSERT INTO loaded_definitions (replica, name, version, seen_at)
    SELECT $1, loaded.name, loaded.version, now()
    FROM unnest($2::text[], $3::text[]) AS loaded (name, version)
    ON CONFLICT (replica, name, version) DO UPDATE SET seen_at = excluded.seen_at
    RETURNING 1
)
DELETE FROM loaded_definitions
WHERE seen_at < now() - make_interval(secs => $4) AND replica <> $1;

-- name: withdraw
-- A replica that stops cleanly: what it loaded no longer counts at once, not after it lapses.
DELETE FROM loaded_definitions WHERE replica = $1;
