"""`approval`: reserve, wait for a person's decision (a signal), charge, cool down, notify — and
undo what was done when a later step fails (compensation).

Served by the README's run command: `POST /workflows/approval` with
`{"requestId": "r-1", "amount": 120, "failAt": null}`, then a `SignalWorkflow` named `decision`
with `{"approved": true, "by": "ada"}` on routing key `workflow.signal`. `failAt` names a
step that fails for good, to watch compensation run: with `"notify"`, `refund` then `release` run
and the run ends `compensated`. A rejected decision releases the reservation and completes with
`{"approved": false}`.
"""
