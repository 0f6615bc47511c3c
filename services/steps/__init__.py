"""The step service: serves the step bodies of the configured modules from their queues.

python -m services.steps [--steps validate,persist]
"""
