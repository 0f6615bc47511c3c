-- The step services' invocation records: one row per (workflow_id, step_name, step_key).
-- Every transition is guarded by the lease owner, the attempt and the status it leaves.
-- Times are statement_timestamp(), not now(): a batch may run in a transaction opened ahead
-- (store.py), whose now() is when it was opened, perhaps long before its claim.

-- name: claim_many
-- Take invocations to run them (distinct ones, a batch of commands in one statement): a new one,
-- a failed one on a newer attempt, or one whose lease expired (its holder died). A stale command
-- never takes over a newer attempt's row. Rows are taken in key order, so two workers claiming
-- overlapping batches lock them in the same order and cannot deadlock. Only the rows claimed
-- come back.
INSERT INTO step_invocations AS s (
    workflow_id, step_name, step_key, status, attempt, executions,
    lease_owner, lease_expires_at, started_at
)
SELECT c.workflow_id, c.step_name, c.step_key, 'running', c.attempt, 1,
       $5, statement_timestamp() + make_interval(secs => $6), statement_timestamp()
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[])
     AS c(workflow_id, step_name, step_key, attempt)
ORDER BY c.workflow_id, c.step_name, c.step_key
ON CONFLICT (workflow_id, step_name, step_key) DO UPDATE
SET status = 'running',
    attempt = EXCLUDED.attempt,
    executions = s.executions + 1,
    lease_owner = EXCLUDED.lease_owner,
    lease_expires_at = EXCLUDED.lease_expires_at,
    output = NULL,
    error = NULL,
    started_at = statement_timestamp(),
    finished_at = NULL
WHERE (s.status = 'failed' AND s.attempt < EXCLUDED.attempt)
   OR (s.status = 'running' AND s.lease_expires_at < statement_timestamp()
       AND s.attempt <= EXCLUDED.attempt)
RETURNING s.workflow_id, s.step_name, s.step_key,
          s.status, s.attempt, s.executions, s.lease_owner, s.output, s.error,
          s.started_at, s.finished_at,
          EXTRACT(EPOCH FROM (s.lease_expires_at - statement_timestamp()))::float8 AS lease_remaining;

-- name: settle_many
-- Record outcomes (succeeded with an output, or failed with an error) of invocations this worker
-- holds, any number in one statement; each row is guarded by lease owner, attempt and status
-- (a lost lease: no row). Only the rows settled come back.
UPDATE step_invocations AS s
SET status = o.status, output = o.output, error = o.error, finished_at = statement_timestamp(),
    lease_owner = NULL, lease_expires_at = NULL
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::jsonb[],
            $7::jsonb[])
     AS o(workflow_id, step_name, step_key, attempt, status, output, error)
WHERE s.workflow_id = o.workflow_id AND s.step_name = o.step_name AND s.step_key = o.step_key
  AND s.attempt = o.attempt AND s.lease_owner = $8 AND s.status = 'running'
RETURNING s.workflow_id, s.step_name, s.step_key,
          s.status, s.attempt, s.executions, s.lease_owner, s.output, s.error,
          s.started_at, s.finished_at, NULL::float8 AS lease_remaining;

-- name: get
SELECT status, attempt, executions, lease_owner, output, error, started_at, finished_at,
       EXTRACT(EPOCH FROM (lease_expires_at - statement_timestamp()))::float8 AS lease_remaining
FROM step_invocations
WHERE workflow_id = $1 AND step_name = $2 AND step_key = $3;

-- name: renew
UPDATE step_invocations
SET lease_expires_at = statement_timestamp() + make_interval(secs => $6)
WHERE workflow_id = $1 AND step_name = $2 AND step_key = $3
  AND attempt = $4 AND lease_owner = $5 AND status = 'running'
RETURNING lease_expires_at;

-- name: release
-- Give the lease up at once (a stop that hands the command back), so that the redelivery
-- need not wait for it to expire.
UPDATE step_invocations
SET lease_expires_at = statement_timestamp() - interval '1 millisecond'
WHERE workflow_id = $1 AND step_name = $2 AND step_key = $3
  AND attempt = $4 AND lease_owner = $5 AND status = 'running';

-- A batch's transaction when the store opens it (store.py): the commit or rollback that ends
-- one also opens the next one's, in the same round trip.

-- name: begin
BEGIN;

-- name: commit_and_begin
COMMIT; BEGIN;

-- name: rollback_and_begin
ROLLBACK; BEGIN;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;
