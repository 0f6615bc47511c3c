-- Sleep steps wake up by a durable timer of their own kind.
ALTER TABLE timers DROP CONSTRAINT timers_kind_check;
ALTER TABLE timers ADD CONSTRAINT timers_kind_check
    CHECK (kind IN ('wait_timeout', 'step_timeout', 'retry', 'workflow_timeout', 'sleep'));
