-- Idempotency keys of signals sent through the gateway: the first use of a key for one signal of
-- one workflow records the request it stands for (its hash) and the signal id the key names, so
-- that the same key with the same request sends the same message again (the orchestrator's inbox
-- counts it once) and the same key with another request is refused. Kept apart from
-- `idempotency_keys`, whose key is per workflow name and which names the workflow a key started.
CREATE TABLE signal_keys (
    workflow_id  text NOT NULL,
    signal_name  text NOT NULL,
    key          text NOT NULL,
    signal_id    text NOT NULL,
    request_hash text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, signal_name, key)
);
