-- Retention (relayflow/orchestration/retention.py): every batch of the pruning loop is an index
-- range scan, never a scan of a whole table. IF NOT EXISTS: on a large database, build them first
-- by hand with CREATE INDEX CONCURRENTLY (same names), since this migration's transaction would
-- hold writes to the tables while it builds. What each index costs the hot path:
-- finished workflows, oldest first. Partial: a running workflow's updates leave finished_at
-- NULL, so they stay HOT; the index gains an entry once, when the run ends (status, indexed
-- already, changes in that same update).
CREATE INDEX IF NOT EXISTS workflows_finished_at_idx ON workflows (finished_at)
    WHERE finished_at IS NOT NULL;
-- invocation records by age: one more entry per claim. started_at, not finished_at: recording an
-- outcome (finished_at) then changes no indexed column and stays HOT.
CREATE INDEX IF NOT EXISTS step_invocations_started_at_idx ON step_invocations (started_at);
-- Idempotency-Keys go with their workflow, and those whose workflow never started by age; a
-- keyed start writes two more entries (starts without a key write none).
CREATE INDEX IF NOT EXISTS idempotency_keys_workflow_idx ON idempotency_keys (workflow_id);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at_idx ON idempotency_keys (created_at);
