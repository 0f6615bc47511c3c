-- The gateway's reads and its writes (idempotency keys of starts; those of signals, which
-- relayflow workflows signal --broker records too, are relayflow/signal_keys.sql's).

-- name: claim_idempotency_key
-- First use of a key (per tenant $5) records the request it stands for; a later use returns
-- nothing here and is compared with `get_idempotency_key`.
INSERT INTO idempotency_keys (workflow_name, key, workflow_id, request_hash, tenant)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant, workflow_name, key) DO NOTHING
RETURNING workflow_id, request_hash;

-- name: get_idempotency_key
SELECT workflow_id, request_hash
FROM idempotency_keys
WHERE tenant = $3 AND workflow_name = $1 AND key = $2;

-- name: get_workflow
-- The mailbox is read as counts per signal name: the payloads it keeps are not shown.
SELECT id, name, status, input, output, error, steps, created_at, updated_at, finished_at,
       last_seq, parent ->> 'workflowId' AS parent_workflow_id, version, tenant, trace_parent,
       (SELECT coalesce(jsonb_object_agg(m.key, jsonb_array_length(m.value)), '{}'::jsonb)
        FROM jsonb_each(mailbox) AS m
        WHERE jsonb_typeof(m.value) = 'array') AS mailbox_counts
FROM workflows
WHERE id = $1 AND ($2::text IS NULL OR tenant = $2);

-- name: workflow_exists
-- (Events are written in the transaction that inserts their workflow; a workflow's events
-- without its row are those of a run deleted since, whose tenant is not known: unscoped only.)
SELECT EXISTS (SELECT 1 FROM workflows WHERE id = $1 AND ($2::text IS NULL OR tenant = $2))
    OR ($2::text IS NULL AND EXISTS (SELECT 1 FROM workflow_events WHERE workflow_id = $1));

-- name: events_after
-- The replay source of event streams, in order, from just after the last event a client saw.
-- Scoped to tenant $4 (null: any), checked on the workflow's row.
SELECT seq, event, body
FROM workflow_events
WHERE workflow_id = $1 AND seq > $2
  AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM workflows WHERE id = $1 AND tenant = $4))
ORDER BY seq
LIMIT $3;

-- name: ping
SELECT 1;

-- name: wal_position
-- On the primary: every commit acknowledged so far lies at or below this WAL position.
SELECT pg_current_wal_lsn();

-- name: has_replayed
-- On a read replica: whether it has applied the WAL up to position $1 (so it shows every commit
-- the primary had acknowledged when it was taken); a server out of recovery (a replica since
-- promoted) is the primary itself and has.
SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= $1::pg_lsn;

-- name: workflow_progress
-- What decides whether a resuming event stream has anything left to send.
SELECT status, last_seq FROM workflows WHERE id = $1 AND ($2::text IS NULL OR tenant = $2);

-- name: list_workflows
-- The dashboard's list, newest first. Each filter applies only when its parameter is not null
-- (status $1, name $2, version $3, id LIKE pattern $4, keyset cursor $5/$6, tenant $8);
-- parameters are planned per call (custom plans), so each combination uses its index:
-- workflows_status_created_id_idx, workflows_name_created_idx, workflows_name_version_idx,
-- workflows_version_created_id_idx, workflows_id_pattern_idx, workflows_tenant_created_id_idx
-- or workflows_created_at_idx.
SELECT id, name, status, created_at, updated_at, finished_at, last_seq, error, version, tenant,
       (SELECT coalesce(jsonb_object_agg(s.key, s.value -> 'status'), '{}'::jsonb)
        FROM jsonb_each(steps) AS s) AS step_statuses
FROM workflows
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR name = $2)
  AND ($3::text IS NULL OR version = $3)
  AND ($4::text IS NULL OR id LIKE $4)
  AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::text))
  AND ($8::text IS NULL OR tenant = $8)
ORDER BY created_at DESC, id DESC
LIMIT $7;

-- name: first_items
-- The first $3 items of each map step $2 of workflow $1, in item order: one indexed range scan
-- per step (step_items_pkey: a step's items in index order), whatever the number of items.
SELECT s.step_name, i.key, i.item_index, i.status, i.attempts, i.output, i.error, i.started_at,
       i.finished_at
FROM unnest($2::text[]) AS s (step_name)
CROSS JOIN LATERAL (
    SELECT key, item_index, status, attempts, output, error, started_at, finished_at
    FROM step_items
    WHERE workflow_id = $1 AND step_name = s.step_name
    ORDER BY item_index
    LIMIT $3
) AS i
ORDER BY s.step_name, i.item_index;

-- name: items_after
-- A page of one map step's items after index $3 (keyset), in item order, optionally only those
-- with status $4 (step_items_pkey either way).
SELECT $2::text AS step_name, key, item_index, status, attempts, output, error, started_at,
       finished_at
FROM step_items
WHERE workflow_id = $1 AND step_name = $2 AND item_index > $3
  AND ($4::text IS NULL OR status = $4)
ORDER BY item_index
LIMIT $5;

-- name: loaded_versions
-- The (workflow, version) pairs some live orchestrator replica loads (`loaded_definitions`,
-- migration 0014): seen in the last $1 seconds. No row at all: no replica announces (none has
-- started yet), so whether a run's version is loaded is not known.
SELECT DISTINCT name, version
FROM loaded_definitions
WHERE seen_at > now() - make_interval(secs => $1);

-- The overview page (services.gateway.overview): a handful of queries per load, none per row.

-- name: overview_statuses
-- Runs created in the last $1 seconds by status (workflows_created_at_idx, or with tenant $2
-- workflows_tenant_created_id_idx).
SELECT status, count(*) AS runs
FROM workflows
WHERE created_at > now() - make_interval(secs => $1)
  AND ($2::text IS NULL OR tenant = $2)
GROUP BY status;

-- name: overview_finished
-- Runs that finished in the last $1 seconds, per workflow name: how many, how many ended in
-- failure (failed, compensated, compensation_failed) or were cancelled, and their durations'
-- median and 99th percentile (created to finished, seconds). A range scan of
-- workflows_finished_at_idx (migration 0019).
SELECT name,
       count(*) AS finished,
       count(*) FILTER (WHERE status IN ('failed', 'compensated', 'compensation_failed'))
           AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
           AS p99
FROM workflows
WHERE finished_at > now() - make_interval(secs => $1)
  AND ($2::text IS NULL OR tenant = $2)
GROUP BY name
ORDER BY name;

-- name: overview_per_minute
-- Runs finished per minute over the last $1 seconds (0: the minute now ending), for the
-- throughput chart (workflows_finished_at_idx).
SELECT floor(extract(epoch FROM now() - finished_at) / 60)::int AS minutes_ago, count(*) AS runs
FROM workflows
WHERE finished_at > now() - make_interval(secs => $1)
  AND ($2::text IS NULL OR tenant = $2)
GROUP BY 1;

-- name: outbox_lag
-- What the relay has yet to have confirmed: rows, and the oldest one's age in seconds (a scan of
-- the table, which holds only those).
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest
FROM outbox;

-- name: step_timeline
-- A workflow's step-level events for its timeline (not its map items': those carry a stepKey),
-- in order, at most $3: which step, which attempt, when (workflow_events_pkey).
SELECT seq, event, body ->> 'stepName' AS step_name,
       CASE WHEN jsonb_typeof(body -> 'data' -> 'attempt') = 'number'
            THEN (body -> 'data' ->> 'attempt')::int END AS attempt,
       created_at
FROM workflow_events
WHERE workflow_id = $1
  AND event = ANY ($2::text[])
  AND body ->> 'stepKey' IS NULL
ORDER BY seq
LIMIT $3;

-- name: recently_keyed
-- Whether an Idempotency-Key started workflow $1 (of tenant $2; null: any) in the last $3
-- seconds: its start may still be on its way to the orchestrator.
SELECT EXISTS (
    SELECT 1 FROM idempotency_keys
    WHERE workflow_id = $1 AND ($2::text IS NULL OR tenant = $2)
      AND created_at > now() - make_interval(secs => $3)
);
