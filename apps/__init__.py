"""Applications built on relayflow, each in its own package: its workflow definitions, its step
bodies and the migrations of its own tables, outside the core (`relayflow/`, `services/`)."""
