-- batchImport's own tables. One row per (workflow, sku): `importItem` inserts it in the
-- transaction that records its success, so a line imported twice would fail on the key.
CREATE TABLE imported_items (
    workflow_id text NOT NULL,
    sku         text NOT NULL,
    qty         integer NOT NULL CHECK (qty >= 0),
    item_index  integer NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, sku)
);

-- What `notification` sent, once per notification workflow.
CREATE TABLE import_notifications (
    workflow_id text PRIMARY KEY,
    message     text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);
