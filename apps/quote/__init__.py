"""`quote`: price a list of lines, with the pricing step served by a program in another
language — `examples/node/` (Node.js, amqplib) or `examples/pika/` (synchronous Python, pika) —
started beside the system, not by it. relayflow has no Python body for `price`: its commands
wait on the queue `<ns>.step.price` until such a service consumes them.

Served by the README's run command: `POST /workflows/quote` with
`{"currency": "eur", "items": [{"sku": "A-1", "qty": 3, "unitCents": 250}, …]}`.
"""
