"""relayflow's benchmark against Celery and DBOS: `python -m bench` (or `scripts/bench`).

The harness starts each system as real processes on the shared RabbitMQ and PostgreSQL (its own
database and queue names, removed afterwards), drives it from this process in a closed loop and
reports throughput, latency, CPU per workflow and memory, with our figures divided by each peer's.
"""
