-- name: reserve
INSERT INTO order_reservations (workflow_id, sku, qty) VALUES ($1, $2, $3);

-- name: release
UPDATE order_reservations SET released_at = now()
WHERE workflow_id = $1 AND released_at IS NULL;

-- name: charge
INSERT INTO order_payments (workflow_id, order_id, amount) VALUES ($1, $2, $3);

-- name: refund
UPDATE order_payments SET refunded_at = now()
WHERE workflow_id = $1 AND refunded_at IS NULL;

-- name: ship
INSERT INTO order_shipments (workflow_id, order_id, country, units, tracking)
VALUES ($1, $2, $3, $4, $5);
