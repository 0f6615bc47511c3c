-- The orchestrator's queries. Each takes whole batches (arrays) so that a batch of messages costs
-- a handful of round trips, not a handful per message.

-- name: claim_and_lock
-- The inbox claim and the lock of the workflows a batch is about, in one round trip: the message
-- ids not seen before (`fresh`, on every row; the rest are duplicates to acknowledge and skip)
-- and the workflows, locked in id order. The outer join to one row answers `fresh` even when no
-- workflow is locked. With no message ids it is the lock alone (`lock_workflows`).
WITH fresh AS (
    INSERT INTO inbox (message_id)
    SELECT unnest($1::text[])
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
)
SELECT (SELECT array_agg(message_id) FROM fresh) AS fresh, w.*
FROM (VALUES (1)) AS one (x)
LEFT JOIN LATERAL (
    SELECT id, name, status,
           -- An input the orchestrator holds in memory (same id, same hash) is left out: CASE
           -- does not detoast the branch it does not take.
           CASE WHEN input_hash = ($4::text[])[array_position($3::text[], id)] THEN NULL
                ELSE input END AS input,
           (input_hash = ($4::text[])[array_position($3::text[], id)]) IS TRUE AS input_cached,
           pg_column_size(input) AS input_size,
           input_hash, idempotency_key, steps, signals, output, error,
           last_seq, run, created_at, updated_at, finished_at, parent, mailbox, version, tenant,
           trace_parent
    FROM workflows
    WHERE id = ANY($2::text[])
    ORDER BY id
    FOR UPDATE
) AS w ON true;

-- name: insert_workflows
INSERT INTO workflows (id, name, status, input, input_hash, idempotency_key, steps, signals,
                       output, error, last_seq, run, created_at, updated_at, finished_at, parent,
                       mailbox, version, tenant, trace_parent)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[],
                     $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::integer[],
                     $12::integer[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
                     $16::jsonb[], $17::jsonb[], $18::text[], $19::text[], $20::text[])
ORDER BY 1
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: write_batch
-- Everything a batch changes, in one round trip: the workflows' new states, their events, the
-- timers they set and the messages to send (outbox) — and the removal of outbox rows the relay
-- has meanwhile had confirmed. PostgreSQL runs every data-modifying CTE exactly once, whether or
-- not the final query reads it; empty arrays write nothing.
WITH sent AS (
    DELETE FROM outbox WHERE id = ANY($27::bigint[])
    RETURNING 1
), updated AS (
    UPDATE workflows AS w
    SET status = u.status, steps = u.steps, signals = u.signals, output = u.output,
        error = u.error, last_seq = u.last_seq, run = u.run, updated_at = u.updated_at,
        finished_at = u.finished_at, mailbox = u.mailbox
    FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::jsonb[],
                $7::integer[], $8::integer[], $9::timestamptz[], $10::timestamptz[],
                $29::jsonb[])
         AS u(id, status, steps, signals, output, error, last_seq, run, updated_at, finished_at,
              mailbox)
    WHERE w.id = u.id
    RETURNING 1
), events AS (
    INSERT INTO workflow_events (workflow_id, seq, event, body, created_at)
    SELECT * FROM unnest($11::text[], $12::integer[], $13::text[], $14::jsonb[],
                         $15::timestamptz[])
    RETURNING 1
), new_timers AS (
    INSERT INTO timers (workflow_id, kind, step_name, attempt, fire_at, step_key)
    SELECT * FROM unnest($16::text[], $17::text[], $18::text[], $19::integer[],
                         $20::timestamptz[], $28::text[])
    RETURNING 1
)
INSERT INTO outbox (exchange, routing_key, message_id, type, body, mandatory, correlation_id,
                    traceparent)
SELECT * FROM unnest($21::text[], $22::text[], $23::text[], $24::text[], $25::bytea[],
                     $26::boolean[], $30::text[], $31::text[])
RETURNING id, message_id;

-- name: claim_due_timers
-- Several replicas poll; SKIP LOCKED hands each due timer to exactly one of them.
DELETE FROM timers
WHERE id IN (
    SELECT id FROM timers
    WHERE fire_at <= now()
    ORDER BY fire_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING workflow_id, kind, step_name, attempt, step_key;

-- name: forget_messages
DELETE FROM inbox WHERE message_id = ANY($1::text[]);

-- name: delete_outbox
DELETE FROM outbox WHERE id = ANY($1::bigint[]);

-- name: claim_stale_outbox
-- Rows a crash (or a failed publish) left behind; SKIP LOCKED keeps replicas from sending the
-- same row at once. Walked in id order (the primary key; ids rise with created_at), so the scan
-- stops at the limit once that many stale rows are found.
SELECT id, exchange, routing_key, message_id, type, body, mandatory, correlation_id, traceparent
FROM outbox
WHERE created_at < now() - make_interval(secs => $1)
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- Map items (`step_items`). The workflow rows they belong to are locked by the batch, so no two
-- transactions write the items of one workflow at once. An item is found by key through
-- `ARRAY[workflow_id, step_name, key]`, spelled exactly as step_items_key_idx is, so that no
-- other index can serve (and slow) the lookup (migration 0012).

-- name: load_items
SELECT i.workflow_id, i.step_name, i.key, i.item_index, i.status, i.attempts, i.item, i.output,
       i.error, i.started_at, i.finished_at
FROM unnest($1::text[], $2::text[], $3::text[]) AS w(workflow_id, step_name, key)
JOIN step_items AS i
  ON ARRAY[i.workflow_id, i.step_name, i.key] = ARRAY[w.workflow_id, w.step_name, w.key];

-- name: create_items
INSERT INTO step_items (workflow_id, step_name, key, item_index, status, item)
SELECT w.workflow_id, w.step_name, w.key, w.item_index, 'pending', w.item
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::jsonb[])
     AS w(workflow_id, step_name, key, item_index, item)
ON CONFLICT DO NOTHING;

-- name: reset_items
UPDATE step_items AS i
SET status = 'pending', error = NULL, started_at = NULL, finished_at = NULL
FROM unnest($1::text[], $2::text[]) AS w(workflow_id, step_name)
WHERE i.workflow_id = w.workflow_id AND i.step_name = w.step_name AND i.status <> 'completed';

-- name: cancel_items
WITH cancelled AS (
    UPDATE step_items AS i
    SET status = 'cancelled', finished_at = $3
    FROM unnest($1::text[], $2::text[]) AS w(workflow_id, step_name)
    WHERE i.workflow_id = w.workflow_id AND i.step_name = w.step_name
      AND i.status IN ('pending', 'running', 'retrying')
    RETURNING i.workflow_id, i.step_name, i.key
)
DELETE FROM timers AS t
USING cancelled AS c
WHERE t.workflow_id = c.workflow_id AND t.step_name = c.step_name AND t.step_key = c.key
  AND t.step_key <> '';

-- name: claim_items
-- The next `n` pending items of each map, in item order, moved to their next attempt.
WITH picked AS (
    SELECT p.workflow_id, p.step_name, p.item_index
    FROM unnest($1::text[], $2::text[], $3::integer[]) AS w(workflow_id, step_name, n)
    CROSS JOIN LATERAL (
        SELECT i.workflow_id, i.step_name, i.item_index
        FROM step_items AS i
        WHERE i.workflow_id = w.workflow_id AND i.step_name = w.step_name
          AND i.status = 'pending'
        ORDER BY i.item_index
        LIMIT w.n
    ) AS p
)
UPDATE step_items AS i
SET status = 'running', attempts = i.attempts + 1, started_at = $4, finished_at = NULL
FROM picked
WHERE i.workflow_id = picked.workflow_id AND i.step_name = picked.step_name
  AND i.item_index = picked.item_index
RETURNING i.workflow_id, i.step_name, i.key, i.item_index, i.status, i.attempts, i.item,
          i.output, i.error, i.started_at, i.finished_at;

-- name: save_and_claim_items
-- Each saved item's new state, and the next `n` pending items of each map ($10-$12) moved to
-- their next attempt, in one round trip: the common batch of a map (items ended, their places
-- refilled); with no claims, saves alone. An item that has ended drops its timers (a timeout
-- set for an attempt that has answered would only fire to be ignored). Claims ride along only
-- when no save makes an item pending, so that the claim cannot miss an item the same statement
-- frees; and a row being saved is never also claimed (two updates of one row in one statement
-- would apply only one).
WITH saved AS (
    UPDATE step_items AS i
    SET status = u.status, attempts = u.attempts, output = u.output, error = u.error,
        started_at = u.started_at, finished_at = u.finished_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::jsonb[],
                $7::jsonb[], $8::timestamptz[], $9::timestamptz[])
         AS u(workflow_id, step_name, key, status, attempts, output, error, started_at,
              finished_at)
    WHERE ARRAY[i.workflow_id, i.step_name, i.key] = ARRAY[u.workflow_id, u.step_name, u.key]
    RETURNING i.workflow_id, i.step_name, i.key, i.status
), dropped AS (
    DELETE FROM timers AS t
    USING saved AS s
    WHERE s.status IN ('completed', 'failed', 'cancelled')
      AND t.workflow_id = s.workflow_id AND t.step_name = s.step_name AND t.step_key = s.key
      AND t.step_key <> ''
    RETURNING 1
), picked AS (
    SELECT p.workflow_id, p.step_name, p.item_index
    FROM unnest($10::text[], $11::text[], $12::integer[]) AS w(workflow_id, step_name, n)
    CROSS JOIN LATERAL (
        SELECT i.workflow_id, i.step_name, i.item_index
        FROM step_items AS i
        WHERE i.workflow_id = w.workflow_id AND i.step_name = w.step_name
          AND i.status = 'pending'
          AND NOT EXISTS (
              SELECT 1 FROM saved AS s
              WHERE s.workflow_id = i.workflow_id AND s.step_name = i.step_name
                AND s.key = i.key
          )
        ORDER BY i.item_index
        LIMIT w.n
    ) AS p
)
UPDATE step_items AS i
SET status = 'running', attempts = i.attempts + 1, started_at = $13, finished_at = NULL
FROM picked
WHERE i.workflow_id = picked.workflow_id AND i.step_name = picked.step_name
  AND i.item_index = picked.item_index
RETURNING i.workflow_id, i.step_name, i.key, i.item_index, i.status, i.attempts, i.item,
          i.output, i.error, i.started_at, i.finished_at;

-- name: collect_items
-- Every item's output in item order (None where the item did not complete).
SELECT i.workflow_id, i.step_name,
       array_agg(CASE WHEN i.status = 'completed' THEN i.output END ORDER BY i.item_index)
           AS outputs
FROM unnest($1::text[], $2::text[]) AS w(workflow_id, step_name)
JOIN step_items AS i USING (workflow_id, step_name)
GROUP BY i.workflow_id, i.step_name;

-- name: backlog
-- For the metrics' gauges: what the relay has yet to have confirmed (rows, the oldest one's age)
-- and the timers past their due time (timers_fire_at_idx).
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest,
       (SELECT count(*) FROM timers WHERE fire_at <= now()) AS timers_due
FROM outbox;
