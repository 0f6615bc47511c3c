-- Each effect of an approval run, counted: a step whose effect committed twice shows as a 2.
CREATE TABLE approval_ledger (
    workflow_id text NOT NULL,
    effect      text NOT NULL,
    count       integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, effect)
);
