-- Map steps: one row per item, so that an item's result updates one small row, never the
-- workflow's whole `steps` jsonb. The step's own state keeps only the counts (`progress`).
CREATE TABLE step_items (
    workflow_id text NOT NULL,
    step_name   text NOT NULL,
    -- the item's stepKey: its index as text, or the key the definition derives from the item
    key         text NOT NULL,
    item_index  integer NOT NULL,
    status      text NOT NULL
        CHECK (status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'cancelled')),
    attempts    integer NOT NULL DEFAULT 0,
    item        jsonb,
    output      jsonb,
    error       jsonb,
    started_at  timestamptz,
    finished_at timestamptz,
    PRIMARY KEY (workflow_id, step_name, key)
);
-- Item order: the map's output, and the gateway's pages of items.
CREATE UNIQUE INDEX step_items_order_idx ON step_items (workflow_id, step_name, item_index);
-- The next pending items in order, found without walking past the ones already done.
CREATE INDEX step_items_pending_idx ON step_items (workflow_id, step_name, item_index)
    WHERE status = 'pending';

-- A map item's timers (its retry, its attempt's timeout) name the item; '' for a step's own.
ALTER TABLE timers ADD COLUMN step_key text NOT NULL DEFAULT '';
-- An item that ends drops its timers, found by the item.
CREATE INDEX timers_item_idx ON timers (workflow_id, step_name, step_key) WHERE step_key <> '';
