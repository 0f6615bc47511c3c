"""`order`: an orders workflow built on relayflow as a library, in a package of its own.

validate (a local task, in the orchestrator) → reserveStock (a map: one reservation per item,
keyed by sku) → holdReservation → charge → ship. A card that declines (`"card":
"tok_declined"`) or a country the carrier does not serve (`"country"` outside `SHIPS_TO`) fails
the run for good, and what was done is undone in reverse: the payment refunded, the stock
released; the run ends `compensated`.

Served with `relayflow-run --app orders_app` (or `RELAYFLOW_APPS=orders_app` for each service);
start one with `POST /workflows/order`. Its parts: `workflows.py` (the definition and its
models), `steps.py` (the bodies), `queries.sql` (their SQL), `migrations/` (its tables).
"""
