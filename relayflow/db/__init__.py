"""PostgreSQL access shared by the services: pools, migrations and named SQL queries."""

from relayflow.db.migrate import ensure_database, migrate
from relayflow.db.pool import Connection, close_pool, create_pool
from relayflow.db.queries import Queries

__all__ = ["Connection", "Queries", "close_pool", "create_pool", "ensure_database", "migrate"]
