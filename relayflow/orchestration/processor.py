"""Applies a batch of inputs to the workflows they concern, inside the caller's transaction.

The batch is loaded and written with a few array queries whatever its size: new workflows are
inserted (an existing id makes the start a duplicate), the others are locked in id order, each
input runs through the pure state machine in arrival order, and the changed states, their events,
the outgoing messages (outbox) and timers are written back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from relayflow import machine, tracing
from relayflow.amqp import OutgoingMessage
from relayflow.contracts import (
    BaseMessage,
    CancelWorkflow,
    ExternalReply,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StepResult,
    WorkflowEvent,
    WorkflowEventBatch,
)
from relayflow.db import Connection
from relayflow.errors import DefinitionError
from relayflow.hops import HopTrace
from relayflow.machine import (
    CancelChild,
    ClaimItems,
    CollectItems,
    DispatchStep,
    Ignored,
    ItemAnswer,
    ItemOp,
    NotifyParent,
    Outcome,
    Rejected,
    RunLocal,
    SaveItem,
    StartChild,
    TimerFired,
    Transition,
)
from relayflow.model import ItemState, StepStatus, WorkflowState, ids
from relayflow.orchestration import store
from relayflow.orchestration.inputs import InputCache
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.log_limit import LogLimit
from relayflow.orchestration.store import ItemKey, OutboxRow
from relayflow.topology import CONTROL_KEY, RESULT_KEY, START_KEY, Topology, step_key
from relayflow.workflow import MapSpec, WorkflowDefinition, WorkflowRegistry

log = logging.getLogger(__name__)

# What arrives from outside, with a message id for the inbox; and everything applied.
Message = (
    StartWorkflow | StepResult | ExternalReply | CancelWorkflow | RetryWorkflow | SignalWorkflow
)
Input = Message | TimerFired


@dataclass(frozen=True, slots=True)
class Deferred:
    """The input may apply later, not now: a signal that overtook the start of its workflow.
    Handed back to the broker after a backoff, and dead-lettered with the reason once it has
    come back too often. (The machine never defers: only the processor finds a workflow
    missing.)"""

    reason: str


Applied = Outcome | Deferred


@dataclass(slots=True)
class BatchResult:
    # One outcome per input, in input order.
    outcomes: list[Applied] = field(default_factory=list)
    outbox: list[OutboxRow] = field(default_factory=list)
    # The events written, and the batch's workflows after it: what the metrics count once the
    # caller has committed (`relayflow.metrics.count_events`).
    events: list[WorkflowEvent] = field(default_factory=list)
    states: Mapping[str, WorkflowState] = field(default_factory=dict)


@dataclass(slots=True)
class Delivered:
    """What `Processor.deliver` did with messages: per message, whether it was fresh (the
    first copy of an id the inbox had not seen), and the result of applying the fresh ones
    (their outcomes in order)."""

    fresh: list[bool]
    result: BatchResult

    def outcomes(self) -> list[Applied]:
        """One outcome per message, a repeated one `Ignored`."""
        applied = iter(self.result.outcomes)
        return [
            next(applied) if is_fresh else Ignored("duplicate message") for is_fresh in self.fresh
        ]


class Processor:
    def __init__(
        self,
        registry: WorkflowRegistry,
        topology: Topology,
        *,
        inputs: InputCache | None = None,
        unloaded_warnings: LogLimit | None = None,
        local: LocalSteps | None = None,
    ) -> None:
        for definition in registry.all_versions():
            machine.check_supported(definition)
        if local is None and registry.local_bodies():
            raise DefinitionError(
                f"the workflows have local tasks (bodies {', '.join(registry.local_bodies())}): "
                "the processor needs their bodies (LocalSteps)"
            )
        # The bodies of local tasks, run in the batch's transaction.
        self._local = local
        self._registry = registry
        self._topology = topology
        # Large inputs of the workflows this process has locked (the caller's lock reads
        # through it too).
        self.inputs = inputs or InputCache()
        # One warning per (run, version) a minute: a stranded run refuses each of its inputs.
        self._unloaded_warnings = unloaded_warnings or LogLimit(60.0)

    async def deliver(
        self,
        conn: Connection,
        messages: Sequence[Message],
        *,
        sent: Sequence[int] = (),
        hops: HopTrace | None = None,
        traces: Mapping[str, str] | None = None,
    ) -> Delivered:
        """Apply messages that arrived from outside, each at most once: their ids go in the
        inbox (a copy seen before is not applied again) and the workflows they are about are
        locked, in one round trip, then the fresh ones are applied. A deferred message's id is
        taken out of the inbox again, since it comes back as the same message. `hops` records
        when the locks were taken; `traces`, the trace context each workflow's input is processed
        in, by workflow id (`relayflow.tracing`)."""
        ids = [message.message_id for message in messages]
        about = [m.workflow_id for m in messages if not isinstance(m, StartWorkflow)]
        unseen, locked = await store.claim_and_lock(conn, ids, about, self.inputs)
        if hops is not None:
            hops.record_each("orch.locked", ids)
        fresh: list[bool] = []
        for message_id in ids:
            # The first of several copies in one batch is the fresh one.
            fresh.append(message_id in unseen)
            unseen.discard(message_id)
        inputs = [m for m, is_fresh in zip(messages, fresh, strict=True) if is_fresh]
        result = await self.apply(conn, inputs, locked=locked, sent=sent, traces=traces)
        deferred = [
            item.message_id
            for item, outcome in zip(inputs, result.outcomes, strict=True)
            if isinstance(outcome, Deferred)
        ]
        await store.forget_messages(conn, deferred)
        return Delivered(fresh, result)

    async def apply(
        self,
        conn: Connection,
        inputs: Sequence[Input],
        now: datetime | None = None,
        *,
        locked: Mapping[str, WorkflowState] | None = None,
        sent: Sequence[int] = (),
        traces: Mapping[str, str] | None = None,
    ) -> BatchResult:
        """`locked`: workflows the caller has already locked in this transaction (they are not
        read again). `sent`: outbox rows the broker has confirmed, deleted with the batch's
        writes. `traces`: see `deliver`."""
        traces = traces or {}
        now = now or datetime.now(UTC)
        outcomes: list[Applied | None] = [None] * len(inputs)
        current: dict[str, WorkflowState] = dict(locked or {})

        transitions, deferred = await self._start_new(
            conn, inputs, outcomes, current, now, traces=traces
        )

        # Everything else acts on existing workflows, locked for the rest of the transaction.
        wanted = {item.workflow_id for item in inputs if not isinstance(item, StartWorkflow)}
        wanted.update(inputs[index].workflow_id for index in deferred)
        current.update(await store.lock_workflows(conn, wanted - current.keys(), self.inputs))
        for index in deferred:
            start = inputs[index]
            assert isinstance(start, StartWorkflow)
            existing = current.get(start.workflow_id)
            outcomes[index] = (
                machine.duplicate_start(existing, start)
                if existing
                else Ignored(f"workflow {start.workflow_id} is being started elsewhere")
            )

        items = await store.load_items(conn, self._items_addressed(inputs, current))
        batch = _Batch(current=current, items=items, transitions=transitions)
        for index, item in enumerate(inputs):
            if isinstance(item, StartWorkflow):
                continue
            outcome = self._apply_one(current, item, now, items)
            outcomes[index] = outcome
            if isinstance(outcome, Transition):
                batch.record(item.workflow_id, outcome)

        published = await self._follow_up(conn, batch, now)

        events = [event for t in transitions for event in t.events]
        outbox = await store.write_batch(
            conn,
            [current[wid] for wid in sorted(batch.changed)],
            events,
            [timer for t in transitions for timer in t.timers],
            [*self._outgoing(transitions, traces), *published],
            sent=sent,
        )
        final = [outcome if outcome is not None else Ignored("not applied") for outcome in outcomes]
        return BatchResult(outcomes=final, outbox=outbox, events=events, states=current)

    async def _start_new(
        self,
        conn: Connection,
        inputs: Sequence[Input],
        outcomes: list[Applied | None],
        current: dict[str, WorkflowState],
        now: datetime,
        *,
        traces: Mapping[str, str],
    ) -> tuple[list[Transition], list[int]]:
        """Build each new workflow's state in memory and insert them together. Returns the
        transitions of the workflows inserted, and the indexes of starts whose id already
        existed (to be checked against the stored workflow once it is locked). A new workflow
        keeps the trace context its start is processed in."""
        new, repeats = self._build_starts(inputs, outcomes, now)
        for workflow_id, transition in new.items():
            if workflow_id in traces:
                transition.state = replace(transition.state, trace_parent=traces[workflow_id])
        inserted = await store.insert_workflows(conn, [t.state for t in new.values()])
        deferred: list[int] = []
        for index, item in enumerate(inputs):
            if isinstance(item, StartWorkflow) and outcomes[index] is new.get(item.workflow_id):
                if item.workflow_id in inserted:
                    current[item.workflow_id] = new[item.workflow_id].state
                else:
                    # Someone else (an earlier message, another replica) started it first.
                    deferred.append(index)
        for index in repeats:
            item = inputs[index]
            assert isinstance(item, StartWorkflow)
            if item.workflow_id in inserted:
                outcomes[index] = machine.duplicate_start(new[item.workflow_id].state, item)
            else:
                deferred.append(index)
        return [t for wid, t in new.items() if wid in inserted], deferred

    def _build_starts(
        self, inputs: Sequence[Input], outcomes: list[Applied | None], now: datetime
    ) -> tuple[dict[str, Transition], list[int]]:
        """Each new workflow's first transition, by id, and the indexes of repeated starts: an
        id an earlier start of this batch claims, whose verdict is known only after the insert
        (against that start, or against a workflow stored before the batch)."""
        new: dict[str, Transition] = {}
        repeats: list[int] = []
        for index, item in enumerate(inputs):
            if not isinstance(item, StartWorkflow):
                continue
            definition = self._registry.get(item.workflow_name)
            if definition is None:
                outcomes[index] = Rejected(f"unknown workflow {item.workflow_name!r}")
            elif item.workflow_id in new:
                repeats.append(index)
            else:
                started = machine.start(definition, item, now)
                outcomes[index] = started
                if isinstance(started, Transition):
                    new[item.workflow_id] = started
        return new, repeats

    def _apply_one(
        self,
        current: dict[str, WorkflowState],
        item: Input,
        now: datetime,
        items: Mapping[ItemKey, ItemState],
    ) -> Applied:
        state = current.get(item.workflow_id)
        if state is None:
            if isinstance(item, TimerFired):
                return Ignored(f"timer for unknown workflow {item.workflow_id}")
            if isinstance(item, SignalWorkflow):
                # A sender may signal right after its start was accepted, and the signal can
                # overtake the start (another queue position, a start handed back once).
                return Deferred(f"signal for workflow {item.workflow_id}, which does not exist")
            return Rejected(f"unknown workflow {item.workflow_id}")
        definition = self._definition_of(state)
        if isinstance(definition, Rejected):
            return definition
        refusal = machine.tenant_refusal(state, item)
        if refusal is not None:
            return refusal
        return _route(definition, state, item, now, items)

    def _definition_of(self, state: WorkflowState) -> WorkflowDefinition | Rejected:
        """The definition a run is pinned to. A version no longer loaded here is refused (the
        input is dead-lettered with the reason, to redrive once that version is deployed
        again beside the new one), never applied to another version."""
        definition = self._registry.get(state.name, state.version)
        if definition is not None:
            return definition
        loaded = self._registry.versions(state.name)
        if not loaded:
            return Rejected(f"workflow {state.id} is a {state.name!r}, which is not registered")
        held = self._unloaded_warnings.admit((state.id, state.version))
        if held is not None:
            log.warning(
                "workflow %s runs %s version %s, which is not loaded here (loaded: %s); its "
                "inputs are dead-lettered until that version is deployed beside the new one%s",
                state.id,
                state.name,
                state.version,
                ", ".join(loaded),
                f" ({held} more refused since the last warning)" if held else "",
            )
        return Rejected(
            f"workflow {state.id} runs version {state.version!r} of {state.name!r}, which this "
            f"orchestrator does not load (loaded: {', '.join(loaded)}); deploy that version "
            "beside the new one, then redrive this message"
        )

    def _items_addressed(
        self, inputs: Sequence[Input], current: Mapping[str, WorkflowState]
    ) -> list[ItemKey]:
        """The map items the batch's results and timers are about: loaded once, up front."""
        keys: list[ItemKey] = []
        for item in inputs:
            if isinstance(item, TimerFired) and item.step_key:
                keys.append((item.workflow_id, item.step_name, item.step_key))
            elif isinstance(item, StepResult) and (state := current.get(item.workflow_id)):
                definition = self._registry.get(state.name, state.version)
                spec = definition.steps.get(item.step_name) if definition else None
                if isinstance(spec, MapSpec):
                    keys.append((item.workflow_id, item.step_name, item.step_key))
        return keys

    async def _follow_up(
        self, conn: Connection, batch: _Batch, now: datetime
    ) -> list[OutgoingMessage]:
        """Do, in this transaction, what the batch's transitions ask of it — item writes and
        requests, local task attempts — and apply what comes back; what that produces in turn
        (a completed map or local task may start the next step) is done the same way, until
        nothing is left. Returns what the local bodies published."""
        published: list[OutgoingMessage] = []
        done = 0
        while done < len(batch.transitions):
            fresh = batch.transitions[done:]
            done = len(batch.transitions)
            ops = [op for transition in fresh for op in transition.item_ops]
            runs = [i for t in fresh for i in t.intents if isinstance(i, RunLocal)]
            if ops:
                await self._answer_item_ops(conn, ops, batch, now)
            for run in runs:
                published.extend(await self._run_local(conn, run, batch, now))
        return published

    async def _run_local(
        self, conn: Connection, run: RunLocal, batch: _Batch, now: datetime
    ) -> list[OutgoingMessage]:
        command = run.command
        state = batch.current[command.workflow_id]
        step = state.steps.get(command.step_name)
        if (
            step is None
            or step.status is not StepStatus.RUNNING
            or step.attempts != command.attempt
        ):
            # A later input of the batch (a cancel, say) ended the attempt before it ran.
            return []
        # The constructor refused a registry with local tasks and no bodies to run them.
        assert self._local is not None
        result, published = await self._local.run(conn, run)
        outcome = machine.on_step_result(self._applied(state), state, result, now)
        _keep(batch, command.workflow_id, outcome, "local result")
        return [_traced(m, command.workflow_id, state.trace_parent) for m in published]

    def _applied(self, state: WorkflowState) -> WorkflowDefinition:
        """The definition of a workflow this batch has already applied an input to."""
        definition = self._registry.get(state.name, state.version)
        assert definition is not None, "a follow-up of a workflow this batch applied"
        return definition

    async def _answer_item_ops(
        self,
        conn: Connection,
        ops: Sequence[ItemOp],
        batch: _Batch,
        now: datetime,
    ) -> None:
        """Write the items the machine changed, answer what it asked for (the next pending
        items, a finished map's outputs) and apply the answers (the transitions they make are
        followed up by the caller: a completed map may start another)."""
        writes = [op for op in ops if not isinstance(op, (ClaimItems, CollectItems))]
        claims: dict[tuple[str, str], int] = {}
        for op in ops:
            if isinstance(op, ClaimItems):
                key = (op.workflow_id, op.step_name)
                claims[key] = claims.get(key, 0) + op.count
        collects = [(op.workflow_id, op.step_name) for op in ops if isinstance(op, CollectItems)]
        answers: list[ItemAnswer] = [
            *await store.write_and_claim(conn, writes, claims, now),
            *await store.collect_items(conn, collects),
        ]
        for answer in answers:
            state = batch.current[answer.workflow_id]
            outcome = machine.on_items(self._applied(state), state, answer, now)
            _keep(batch, answer.workflow_id, outcome, "item answer")

    def _outgoing(
        self, transitions: Sequence[Transition], traces: Mapping[str, str]
    ) -> list[OutgoingMessage]:
        """The one router from intents to messages: each intent type has its exchange and key.
        While tracing, each message continues the trace its workflow's input was processed in
        (else the one the workflow started in)."""
        messages: list[OutgoingMessage] = []
        for transition in transitions:
            state = transition.state
            parent = traces.get(state.id) or state.trace_parent
            for intent in transition.intents:
                message: BaseMessage
                match intent:
                    case DispatchStep(command=command):
                        message, key = command, step_key(command.body or command.step_name)
                    case StartChild(start=start):
                        message, key = start, START_KEY
                    case CancelChild(cancel=cancel):
                        message, key = cancel, CONTROL_KEY
                    case NotifyParent(result=result):
                        message, key = result, RESULT_KEY
                    case RunLocal():
                        continue  # run in the transaction (`_follow_up`), not sent
                outgoing = OutgoingMessage.of(
                    message, exchange=self._topology.exchange, routing_key=key
                )
                messages.append(_traced(outgoing, state.id, parent))
        events = [event for transition in transitions for event in transition.events]
        if events:
            # One broadcast for the whole batch: its first event's id names it uniquely.
            batch = WorkflowEventBatch(
                message_id=ids.event_batch_id(events[0].message_id), events=events
            )
            messages.append(
                OutgoingMessage.of(
                    batch, exchange=self._topology.events_exchange, routing_key="", mandatory=False
                )
            )
        return messages


def _traced(message: OutgoingMessage, workflow_id: str, parent: str | None) -> OutgoingMessage:
    """`message` with the context of its `create` span under `parent`, while tracing."""
    if not tracing.on:
        return message
    traceparent = tracing.created(
        parent, message.exchange, message.routing_key, message.message_id, workflow_id
    )
    return replace(message, traceparent=traceparent)


def _keep(batch: _Batch, workflow_id: str, outcome: Outcome, what: str) -> None:
    """Record a follow-up's transition; a refusal here is a bug in the machine (its own
    request was answered), logged rather than failing the batch."""
    if isinstance(outcome, Transition):
        batch.record(workflow_id, outcome)
    elif isinstance(outcome, Rejected):
        log.error("%s for %s refused: %s", what, workflow_id, outcome.reason)


@dataclass(slots=True)
class _Batch:
    """What applying a batch has changed so far."""

    current: dict[str, WorkflowState]
    items: dict[ItemKey, ItemState]
    transitions: list[Transition]
    changed: set[str] = field(default_factory=set)

    def record(self, workflow_id: str, transition: Transition) -> None:
        self.current[workflow_id] = transition.state
        self.changed.add(workflow_id)
        self.transitions.append(transition)
        # A later input of the batch about the same item sees it as the machine left it.
        for op in transition.item_ops:
            if isinstance(op, SaveItem):
                self.items[(op.item.workflow_id, op.item.step_name, op.item.key)] = op.item


def _route(
    definition: WorkflowDefinition,
    state: WorkflowState,
    item: Input,
    now: datetime,
    items: Mapping[ItemKey, ItemState],
) -> Outcome:
    match item:
        case StepResult():
            about = items.get((item.workflow_id, item.step_name, item.step_key))
            return machine.on_step_result(definition, state, item, now, about)
        case ExternalReply():
            return machine.on_reply(definition, state, item, now)
        case CancelWorkflow():
            return machine.on_cancel(definition, state, item, now)
        case RetryWorkflow():
            return machine.on_retry(definition, state, item, now)
        case SignalWorkflow():
            return machine.on_signal(definition, state, item, now)
        case TimerFired():
            about = items.get((item.workflow_id, item.step_name, item.step_key))
            return machine.on_timer(definition, state, item, now, about)
        case StartWorkflow():
            raise AssertionError("starts are applied before everything else")
