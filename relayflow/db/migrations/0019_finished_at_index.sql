-- The dashboard's overview (services/gateway/queries.sql: overview_finished, overview_per_minute)
-- reads the runs that finished in the last hour: a range scan of this index, not a scan of every
-- workflow. Partial: a running workflow's updates leave finished_at NULL and stay HOT; the index
-- gains an entry once, when the run ends. The same index as retention's (same name and
-- definition, IF NOT EXISTS), so whichever migration runs first builds it. On a large database,
-- build it first by hand with CREATE INDEX CONCURRENTLY (same name).
CREATE INDEX IF NOT EXISTS workflows_finished_at_idx ON workflows (finished_at)
    WHERE finished_at IS NOT NULL;
