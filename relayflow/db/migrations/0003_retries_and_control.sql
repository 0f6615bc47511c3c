-- Retry policies, step and workflow timeouts, cancel and retry-from-failed.

-- Timers now also schedule retries and time out steps and whole runs.
ALTER TABLE timers ADD COLUMN kind text NOT NULL DEFAULT 'wait_timeout'
    CHECK (kind IN ('wait_timeout', 'step_timeout', 'retry', 'workflow_timeout'));
ALTER TABLE timers ALTER COLUMN kind DROP DEFAULT;

-- A workflow can be cancelled, and a failed or cancelled one run again: `run` counts the runs so
-- that the timers of an earlier run are recognised as stale.
ALTER TABLE workflows DROP CONSTRAINT workflows_status_check;
ALTER TABLE workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('running', 'completed', 'failed', 'cancelled'));
ALTER TABLE workflows ADD COLUMN run integer NOT NULL DEFAULT 1;
