"""relayflow: durable workflows over RabbitMQ and PostgreSQL.

The shared core that every service builds on: message contracts, broker topology, database access,
workflow definitions and the step SDK. No module here imports a service.
"""
