-- A local task's body publishes through the orchestrator's outbox (it runs in the orchestrator's
-- transaction), and what it publishes may carry an AMQP correlation id, as a step service's
-- direct publish does: kept here so that a relayed message goes out the same.
ALTER TABLE outbox ADD COLUMN correlation_id text;
