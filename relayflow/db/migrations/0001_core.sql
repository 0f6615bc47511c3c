-- The durable core: workflow state, its event history, and the orchestrator's inbox, outbox and
-- timers; the gateway's idempotency keys; the step services' invocation records.

CREATE TABLE workflows (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    status          text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    input           jsonb NOT NULL,
    input_hash      text NOT NULL,
    idempotency_key text,
    -- step name -> {status, attempts, output, error, startedAt, finishedAt, correlationId}
    steps           jsonb NOT NULL,
    -- replies (by correlation id) that arrived before their step started waiting
    signals         jsonb NOT NULL DEFAULT '{}'::jsonb,
    output          jsonb,
    error           jsonb,
    last_seq        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX workflows_created_at_idx ON workflows (created_at DESC, id DESC);
CREATE INDEX workflows_status_idx ON workflows (status, created_at DESC);

-- Every event a workflow emitted, numbered 1, 2, 3, … within it: the SSE replay source.
CREATE TABLE workflow_events (
    workflow_id text NOT NULL,
    seq         integer NOT NULL,
    event       text NOT NULL,
    body        jsonb NOT NULL,   -- the WorkflowEvent message exactly as published
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, seq)
);

-- Message ids the orchestrator has already applied: a redelivered or duplicated message is
-- acknowledged and skipped.
CREATE TABLE inbox (
    message_id  text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_received_at_idx ON inbox (received_at);

-- Messages committed with a state change and not yet confirmed by the broker. A row is deleted
-- once the broker has confirmed it; whatever a crash leaves behind is swept up and sent again.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    exchange    text NOT NULL,
    routing_key text NOT NULL,
    message_id  text NOT NULL,
    type        text NOT NULL,
    body        bytea NOT NULL,
    -- events go to a fanout that may have no listener yet: they need no queue to count as sent
    mandatory   boolean NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_created_at_idx ON outbox (created_at);

-- Durable timers (wait timeouts), fired by whichever orchestrator replica claims them first.
CREATE TABLE timers (
    id          bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    step_name   text NOT NULL,
    attempt     integer NOT NULL,
    fire_at     timestamptz NOT NULL
);
CREATE INDEX timers_fire_at_idx ON timers (fire_at);

-- The gateway's Idempotency-Key records: the same key with another body is refused.
CREATE TABLE idempotency_keys (
    workflow_name text NOT NULL,
    key           text NOT NULL,
    workflow_id   text NOT NULL,
    request_hash  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_name, key)
);

-- One row per step invocation (workflowId + stepName + stepKey), owned by the step services.
CREATE TABLE step_invocations (
    workflow_id      text NOT NULL,
    step_name        text NOT NULL,
    step_key         text NOT NULL,
    status           text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    attempt          integer NOT NULL,     -- the orchestrator's attempt number last run
    executions       integer NOT NULL DEFAULT 1,
    lease_owner      text,
    lease_expires_at timestamptz,
    output           jsonb,
    error            jsonb,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    PRIMARY KEY (workflow_id, step_name, step_key)
);
