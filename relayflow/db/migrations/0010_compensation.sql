-- Compensation: a workflow that failed or was cancelled after compensable steps completed runs
-- their undo steps (`compensating`), then ends `compensated` or `compensation_failed`.
ALTER TABLE workflows DROP CONSTRAINT workflows_status_check;
ALTER TABLE workflows ADD CONSTRAINT workflows_status_check
    CHECK (status IN ('running', 'completed', 'failed', 'cancelled', 'compensating',
                      'compensated', 'compensation_failed'));
