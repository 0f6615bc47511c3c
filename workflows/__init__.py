"""Workflow definitions: the DAGs and input models that the gateway validates against and the
orchestrator runs. Step bodies live with the step services (`services/steps`)."""
