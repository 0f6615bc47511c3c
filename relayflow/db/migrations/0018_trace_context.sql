-- Traces (`relayflow.tracing`): the trace context a workflow started with, for what its own inputs
-- do not carry (timers, a sender without one), and the context each outbox message continues, so
-- that a relayed message — by this process or, after a crash, by the sweep of another — carries
-- its `traceparent` as a direct publish would. Null while tracing is off.
ALTER TABLE workflows ADD COLUMN trace_parent text;
ALTER TABLE outbox ADD COLUMN traceparent text;
