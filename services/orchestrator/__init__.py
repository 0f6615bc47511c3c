"""The orchestrator: advances workflows in PostgreSQL as start, step-result and reply messages
arrive, and sends the next commands and events through an outbox."""
