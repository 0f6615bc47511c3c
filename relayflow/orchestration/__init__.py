"""Advancing workflows in PostgreSQL: a batch of inputs through the state machine in the caller's
transaction (`processor`), the tables it reads and writes (`store`), local task bodies run in that
transaction (`local`), and the relay that publishes what it committed (`relay`). The orchestrator
service is its transport; a step service that advances workflows itself (`relayflow.steps`'
result sink) runs it in the transaction that records a step's outcome."""
