-- What an order's steps did, one row per effect, each written in the transaction that records
-- its step's success: a duplicate would break a primary key rather than count twice.
CREATE TABLE order_reservations (
    workflow_id text NOT NULL,
    sku         text NOT NULL,
    qty         integer NOT NULL CHECK (qty > 0),
    reserved_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    PRIMARY KEY (workflow_id, sku)
);

CREATE TABLE order_payments (
    workflow_id text PRIMARY KEY,
    order_id    text NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),
    charged_at  timestamptz NOT NULL DEFAULT now(),
    refunded_at timestamptz
);

CREATE TABLE order_shipments (
    workflow_id text PRIMARY KEY,
    order_id    text NOT NULL,
    country     text NOT NULL,
    units       integer NOT NULL,
    tracking    text NOT NULL,
    shipped_at  timestamptz NOT NULL DEFAULT now()
);
