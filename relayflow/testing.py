"""Test your workflows in one process, on a clock you move: sleeps, timeouts and retry backoff
pass at once, and nothing needs a broker or the orchestrator.

    env = WorkflowTestEnv([APPROVAL], steps, connection=conn)   # conn: for transactional steps
    run = await env.start("approval", {"requestId": "r-1", "amount": 5})
    await env.signal(run, "decision", {"approved": True, "by": "ada"})
    state = await env.run(run)              # runs to the end, jumping over sleeps and backoffs
    assert state.status is WorkflowStatus.COMPLETED
    assert "step.sleeping" in [e.event for e in env.events(run)]

It drives the same pure state machine the orchestrator runs (`relayflow.machine`), map items
held the way the orchestrator holds them (`relayflow.machine.memory`), and calls the step bodies
exactly as a step service does (input parsed into the body's model, typed reads bound at start,
errors as data) — each invocation once per attempt, as the step services' dedup guarantees. A
transactional body runs on `connection` (say, one inside a transaction the test rolls back); without
one it fails as it would if declared wrongly. What it does not show is delivery: redelivery,
crashes, concurrency — the project's own tests run those against RabbitMQ and PostgreSQL.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from relayflow import machine
from relayflow.contracts import (
    CancelWorkflow,
    Envelope,
    ExternalReply,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    WorkflowEvent,
    new_message_id,
    new_workflow_id,
)
from relayflow.errors import RelayflowError
from relayflow.machine import (
    CancelChild,
    DispatchStep,
    Ignored,
    NotifyParent,
    Rejected,
    RunLocal,
    StartChild,
    Timer,
    TimerFired,
    Transition,
    WorkflowState,
)
from relayflow.machine.memory import MemoryItems
from relayflow.steps.body import call
from relayflow.steps.context import DbConnection
from relayflow.steps.invocation import result_of_run
from relayflow.steps.registry import StepRegistry
from relayflow.workflow import MapSpec, WorkflowDefinition, WorkflowRegistry

__all__ = ["InputRefused", "Stuck", "WorkflowTestEnv"]


class InputRefused(RelayflowError):
    """The machine refused an input (the orchestrator would dead-letter it): the reason says
    why — an undeclared signal, a payload that does not fit, an unknown workflow."""


class Stuck(RelayflowError):
    """`run` found nothing left to do and no timer to wait for, yet the workflow has not ended:
    it waits for a signal or a reply the test has not sent."""


# Inputs queued for the machine or for a step body, in the order they were produced.
_Work = StartWorkflow | StepCommand | StepResult | CancelWorkflow


class WorkflowTestEnv:
    def __init__(
        self,
        workflows: Iterable[WorkflowDefinition],
        steps: StepRegistry,
        *,
        now: datetime | None = None,
        connection: DbConnection | None = None,
    ) -> None:
        self.registry = WorkflowRegistry(workflows)
        self.steps = steps
        steps.bind(self.registry)
        self.now = now or datetime(2026, 1, 1, tzinfo=UTC)
        self._connection = connection
        self._states: dict[str, WorkflowState] = {}
        self._events: dict[str, list[WorkflowEvent]] = {}
        self._items = MemoryItems()
        self._queue: deque[_Work] = deque()
        self._timers: list[tuple[datetime, int, Timer]] = []
        self._order = itertools.count()
        # What step bodies published (`ctx.publish`), with the routing key.
        self.published: list[tuple[str, Envelope]] = []

    # --- what a test does ---

    async def start(
        self, name: str, input: dict[str, Any], *, workflow_id: str | None = None
    ) -> str:
        """Start workflow `name` (its newest version) and run until nothing is left to do
        without moving the clock; returns its id."""
        workflow_id = workflow_id or new_workflow_id()
        self._queue.append(
            StartWorkflow(
                message_id=new_message_id(),
                workflow_id=workflow_id,
                workflow_name=name,
                input=input,
            )
        )
        await self.run_until_idle()
        return workflow_id

    async def signal(
        self, workflow_id: str, name: str, payload: dict[str, Any], *, sent_by: str | None = None
    ) -> None:
        message = SignalWorkflow(
            message_id=new_message_id(),
            workflow_id=workflow_id,
            signal_name=name,
            payload=payload,
            sent_by=sent_by,
        )
        self._apply(workflow_id, self._with(workflow_id, machine.on_signal, message))
        await self.run_until_idle()

    async def reply(self, workflow_id: str, correlation_id: str, payload: dict[str, Any]) -> None:
        """An external system's reply to a `wait(..., correlation_from=)` step."""
        message = ExternalReply(
            message_id=new_message_id(),
            workflow_id=workflow_id,
            correlation_id=correlation_id,
            payload=payload,
        )
        self._apply(workflow_id, self._with(workflow_id, machine.on_reply, message))
        await self.run_until_idle()

    async def cancel(self, workflow_id: str, reason: str = "") -> None:
        self._queue.append(
            CancelWorkflow(message_id=new_message_id(), workflow_id=workflow_id, reason=reason)
        )
        await self.run_until_idle()

    async def retry(self, workflow_id: str, reason: str = "") -> None:
        message = RetryWorkflow(message_id=new_message_id(), workflow_id=workflow_id, reason=reason)
        self._apply(workflow_id, self._with(workflow_id, machine.on_retry, message))
        await self.run_until_idle()

    async def advance(self, delta: timedelta) -> None:
        """Move the clock by `delta`, firing the timers that come due on the way, in order."""
        until = self.now + delta
        while self._timers and self._timers[0][0] <= until:
            fire_at, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, fire_at)
            self._fire(timer)
            await self.run_until_idle()
        self.now = until

    async def run(
        self, workflow_id: str, *, within: timedelta = timedelta(days=30)
    ) -> WorkflowState:
        """Run `workflow_id` to its end, jumping the clock to each next timer (at most `within`
        ahead); raises `Stuck` if it waits for something only the test can send."""
        deadline = self.now + within
        await self.run_until_idle()
        while not self.state(workflow_id).finished:
            if not self._timers or self._timers[0][0] > deadline:
                raise Stuck(
                    f"workflow {workflow_id} is {self.state(workflow_id).status.value} with "
                    "nothing to run and no timer due: it waits for a signal or a reply"
                )
            await self.advance(max(self._timers[0][0] - self.now, timedelta(0)))
        return self.state(workflow_id)

    async def run_until_idle(self) -> None:
        """Run everything queued — commands through their bodies, child starts, results —
        without moving the clock."""
        while self._queue:
            work = self._queue.popleft()
            if isinstance(work, StepCommand):
                self._queue.append(await self._run_body(work))
            elif isinstance(work, StartWorkflow):
                self._start(work)
            elif isinstance(work, CancelWorkflow):
                self._apply(work.workflow_id, self._with(work.workflow_id, machine.on_cancel, work))
            else:
                self._apply(work.workflow_id, self._deliver(work))

    # --- what a test looks at ---

    def state(self, workflow_id: str) -> WorkflowState:
        return self._states[workflow_id]

    def events(self, workflow_id: str) -> list[WorkflowEvent]:
        return list(self._events.get(workflow_id, []))

    def items(self, workflow_id: str, step: str) -> list[Any]:
        """A map step's items (`ItemState`), in item order."""
        return list(self._items.of(workflow_id, step))

    # --- internals ---

    def _definition(self, state: WorkflowState) -> WorkflowDefinition:
        definition = self.registry.get(state.name, state.version)
        if definition is None:
            raise InputRefused(f"workflow {state.name!r} version {state.version!r} is not loaded")
        return definition

    def _with(self, workflow_id: str, apply: Any, message: Any) -> machine.Outcome:
        state = self.state(workflow_id)
        outcome: machine.Outcome = apply(self._definition(state), state, message, self.now)
        return outcome

    def _start(self, message: StartWorkflow) -> None:
        if message.workflow_id in self._states:
            self._apply(
                message.workflow_id,
                machine.duplicate_start(self._states[message.workflow_id], message),
            )
            return
        definition = self.registry.get(message.workflow_name)
        if definition is None:
            raise InputRefused(f"unknown workflow {message.workflow_name!r}")
        self._apply(message.workflow_id, machine.start(definition, message, self.now))

    def _deliver(self, result: StepResult) -> machine.Outcome:
        state = self.state(result.workflow_id)
        definition = self._definition(state)
        spec = definition.steps.get(result.step_name)
        item = (
            self._items.get(result.workflow_id, result.step_name, result.step_key)
            if isinstance(spec, MapSpec)
            else None
        )
        return machine.on_step_result(definition, state, result, self.now, item)

    def _fire(self, timer: Timer) -> None:
        state = self._states.get(timer.workflow_id)
        if state is None:
            return
        item = (
            self._items.get(timer.workflow_id, timer.step_name, timer.step_key)
            if timer.step_key
            else None
        )
        fired = TimerFired(
            timer.workflow_id,
            timer.kind,
            timer.attempt,
            step_name=timer.step_name,
            step_key=timer.step_key,
        )
        self._apply(
            timer.workflow_id,
            machine.on_timer(self._definition(state), state, fired, self.now, item),
        )

    def _apply(self, workflow_id: str, outcome: machine.Outcome) -> None:
        if isinstance(outcome, Rejected):
            raise InputRefused(outcome.reason)
        if isinstance(outcome, Ignored):
            return
        self._record(workflow_id, outcome)
        state = outcome.state
        ops = list(outcome.item_ops)
        while ops:
            answers = self._items.answer(ops, self.now)
            ops = []
            for answer in answers:
                answered = machine.on_items(self._definition(state), state, answer, self.now)
                if isinstance(answered, Transition):
                    self._record(workflow_id, answered)
                    state = answered.state
                    ops.extend(answered.item_ops)

    def _record(self, workflow_id: str, transition: Transition) -> None:
        self._states[workflow_id] = transition.state
        self._events.setdefault(workflow_id, []).extend(transition.events)
        for timer in transition.timers:
            heapq.heappush(self._timers, (timer.fire_at, next(self._order), timer))
        for intent in transition.intents:
            match intent:
                case DispatchStep(command=command):
                    self._queue.append(command)
                case StartChild(start=start):
                    self._queue.append(start)
                case CancelChild(cancel=cancel):
                    self._queue.append(cancel)
                case NotifyParent(result=result):
                    self._queue.append(result)
                case RunLocal(command=command):
                    # The orchestrator runs it in the transition's own transaction; here,
                    # next in line, through the same call as any body.
                    self._queue.append(command)

    async def _run_body(self, command: StepCommand) -> StepResult:
        body = command.body or command.step_name
        definition = self.steps.get(body)
        if definition is None:
            raise InputRefused(f"no step body {body!r} is registered (known: {self.steps.names()})")

        async def publish(message: Envelope, routing_key: str, _correlation: str | None) -> None:
            self.published.append((routing_key, message))

        started = self.now
        outcome = await call(
            definition,
            command,
            publish=publish,
            connection=self._connection if definition.transactional else None,
            reads=self.steps.reads_of(command.workflow_name, command.step_name, body),
        )
        return result_of_run(command, outcome, started, self.now)
