"""The gateway: the HTTP face of relayflow.

It validates a submitted form against its workflow's input model, publishes a `StartWorkflow`
with publisher confirms and answers 202 only once the broker has taken it; it shows a workflow's
state from PostgreSQL and streams its events over Server-Sent Events (replayed from PostgreSQL,
then followed live from the events fanout).

    app.py       the app factory and the lifespan that owns pool, connection, publisher and hub
    submit.py    POST /submit, POST /workflows/{name}   (intake.py: validation, ids, hashes)
    workflows.py GET /workflows (list), GET /workflows/{id}, GET /workflows/{id}/events (SSE,
                 stream.py), GET /events (every workflow's events, feed.py)
    control.py   POST /workflows/{id}/cancel, POST /workflows/{id}/retry
    events.py    the live-event hub: one events-fanout consumer per process
    store.py     PostgreSQL reads and the idempotency-key write (queries.sql)
    dashboard.py the pages at / and /ui/… (html.py renders them, dag.py lays out steps; the
                 scripts and styles are in static/)
    pages.py     static assets, /healthz, /readyz, /openapi.json   (openapi.py builds it)
    metrics.py   GET /metrics and the request-duration middleware (relayflow.metrics names all)
    server.py    uvicorn under relayflow.runtime; __main__.py is `relayflow-gateway`
"""
