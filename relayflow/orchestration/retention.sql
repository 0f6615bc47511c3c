-- Retention's batches (retention.py; the rules are ARCHITECTURE.md's "Retention"). Each
-- statement deletes at most $2 rows of one table, found by an index range scan (migration 0018),
-- and takes its rows with SKIP LOCKED: a row the hot path holds is left for a later pass, and
-- replicas running the same pass take disjoint rows. $1 is the window in seconds.
-- Two shapes keep every plan an index scan whatever the table's size (checked with EXPLAIN):
-- a delete names its rows by ctid (`ctid = ANY(ARRAY(...))`, a TID scan; a row's ctid holds
-- while our lock does), since `WHERE key IN (subquery)` may be planned as a hash join over
-- the whole table; and "has no row in t" is a correlated scalar subquery (`(SELECT ... LIMIT 1)
-- IS NULL`), an index probe per row, which NOT EXISTS inside an OR, or against a small
-- estimate, may turn into a hash of the whole other table.

-- name: batch_limits
-- For the batch's transaction only: wait at most this long for a lock (none of the statements
-- below should wait at all), and give up a statement that takes longer than this.
SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true);

-- name: pick_finished
-- Finished workflows past the window, oldest first, locked for this batch. A child is taken
-- only once its parent is gone (so never while the parent runs): runs go top-down, a parent
-- with its finished children in consecutive passes. A workflow a transaction holds (a retry,
-- a late input) is skipped; one retried meanwhile no longer matches (its finished_at is
-- cleared, and FOR UPDATE re-checks the condition on the row it locks).
SELECT id FROM workflows AS w
WHERE finished_at < now() - make_interval(secs => $1)
  AND (parent IS NULL
       OR (SELECT 1 FROM workflows AS p WHERE p.id = w.parent ->> 'workflowId') IS NULL)
ORDER BY finished_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- What a picked workflow owns, table by table, in workflow id order (so that the first
-- workflows of the batch are emptied whole and can go in the same batch).

-- name: delete_events
DELETE FROM workflow_events
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM workflow_events
    WHERE workflow_id = ANY($1::text[])
    ORDER BY workflow_id, seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: delete_items
DELETE FROM step_items
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM step_items
    WHERE workflow_id = ANY($1::text[])
    ORDER BY workflow_id, step_name, item_index
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: delete_invocations
DELETE FROM step_invocations
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM step_invocations
    WHERE workflow_id = ANY($1::text[])
    ORDER BY workflow_id, step_name, step_key
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: delete_signal_keys
DELETE FROM signal_keys
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM signal_keys
    WHERE workflow_id = ANY($1::text[])
    ORDER BY workflow_id, signal_name, key
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: delete_idempotency_keys
DELETE FROM idempotency_keys
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys
    WHERE workflow_id = ANY($1::text[])
    ORDER BY workflow_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: delete_emptied
-- The picked workflows that own nothing any more (this transaction's deletes are visible here:
-- an earlier statement). One with rows left, a bigger run, is emptied by the next batches.
DELETE FROM workflows AS w
WHERE w.id = ANY($1::text[])
  AND (SELECT 1 FROM workflow_events AS e WHERE e.workflow_id = w.id LIMIT 1) IS NULL
  AND (SELECT 1 FROM step_items AS i WHERE i.workflow_id = w.id LIMIT 1) IS NULL
  AND (SELECT 1 FROM step_invocations AS s WHERE s.workflow_id = w.id LIMIT 1) IS NULL
  AND (SELECT 1 FROM signal_keys AS k WHERE k.workflow_id = w.id LIMIT 1) IS NULL
  AND (SELECT 1 FROM idempotency_keys AS k WHERE k.workflow_id = w.id LIMIT 1) IS NULL;

-- name: prune_inbox
-- Applied message ids past the window, oldest first.
DELETE FROM inbox
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM inbox
    WHERE received_at < now() - make_interval(secs => $1)
    ORDER BY received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_invocations
-- Invocation records whose attempt started and ended (or whose lease lapsed: its holder died
-- and no copy came back) before the window; one still running, its lease renewed, stays
-- however old. The index is on started_at (migration 0018), which is never later than the end.
DELETE FROM step_invocations
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM step_invocations
    WHERE started_at < now() - make_interval(secs => $1)
      AND coalesce(finished_at, lease_expires_at) < now() - make_interval(secs => $1)
    ORDER BY started_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_orphan_keys
-- Idempotency-Keys past the window whose workflow does not exist (its start was refused, never
-- confirmed, or its run was pruned before the key was recorded again). A key whose workflow
-- exists goes with it (delete_idempotency_keys), however old.
DELETE FROM idempotency_keys
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys AS k
    WHERE created_at < now() - make_interval(secs => $1)
      AND (SELECT 1 FROM workflows AS w WHERE w.id = k.workflow_id) IS NULL
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));
