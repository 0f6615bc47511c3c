"""The peers' own programs (run as separate processes by the harness): a Celery app and a DBOS
worker. They import their peer package, so only the `bench` extra makes them runnable."""
