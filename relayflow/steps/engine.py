"""The invocation engine: takes `StepCommand`s to one recorded outcome each — claim, run the body,
lease, record — and gives back the `StepResult` that answers each. It knows nothing of the
broker; its records are an `InvocationStorage`. The rules it follows are in ARCHITECTURE.md,
"Step invocations".

    started = await engine.start(commands)      # the batch: one transaction, one commit
    result = await engine.finish(started[i])    # then each on its own: the result to publish
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from relayflow import metrics, tracing
from relayflow.contracts import StepCommand, StepResult
from relayflow.hops import HopTrace
from relayflow.steps.advance import Advanced, Advancer
from relayflow.steps.body import call
from relayflow.steps.context import DbConnection, PublishFn
from relayflow.steps.invocation import (
    Invocation,
    InvocationKey,
    InvocationStatus,
    Outcome,
    Verdict,
    decide,
    invocation_key,
    result_for,
)
from relayflow.steps.registry import StepDefinition, StepRegistry
from relayflow.steps.storage import InvocationBatch, InvocationStorage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    # A body that finishes within this many seconds runs in the claim's own transaction: one
    # commit records claim and outcome together. A longer one gets its claim committed and runs
    # on under a renewed lease. (Transactional steps always run in that transaction.)
    inline_budget: float = 0.2
    # Longest pause between two looks at an invocation held by a duplicate in flight.
    poll_max: float = 1.0
    # How long a duplicate waits for the holder before giving up (its delivery is handed back).
    duplicate_wait: float = 300.0


class _NotClaimed:
    """The invocation's row would not be claimed: look at it and decide."""


_NOT_CLAIMED = _NotClaimed()


@dataclass(frozen=True, slots=True)
class _Slow:
    """A body that outlived the inline budget: its claim is committed as a lease."""

    body: asyncio.Future[Outcome]


# What one claim-and-run gives for a command.
_Attempt: TypeAlias = "Invocation | _NotClaimed | _Slow"


@dataclass(frozen=True, slots=True)
class Started:
    """A command the engine has taken, and what its claim-and-run in a batch gave, if it was in
    one. `InvocationEngine.finish` takes it the rest of the way. `advanced`: its result was
    applied to the workflow in that batch's transaction, so there is nothing to publish."""

    command: StepCommand
    definition: StepDefinition
    first: _Attempt | None
    advanced: bool = False


class InvocationEngine:
    """Runs the invocations of the steps in `steps`, recording them in `storage`. `publish` is
    what a body's `ctx.publish` sends through."""

    def __init__(
        self,
        steps: StepRegistry,
        storage: InvocationStorage,
        *,
        publish: PublishFn,
        config: EngineConfig | None = None,
        hops: HopTrace | None = None,
        advancer: Advancer | None = None,
    ) -> None:
        self._hops = hops or HopTrace()
        # Applies a batch's results to their workflows before it commits (`relayflow.steps.
        # advance`); the commands of a batch that failed run again without it.
        self._advancer = advancer
        self._steps = steps
        self._storage = storage
        self._publish = publish
        self._config = config or EngineConfig()

    async def run(self, command: StepCommand) -> StepResult | None:
        """Take one command all the way: the result that answers it, or None for a stale
        attempt that has nothing to answer."""
        (started,) = await self.start([command])
        return await self.finish(started)

    async def start(self, commands: Sequence[StepCommand]) -> list[Started]:
        """Claim, run and record `commands` in one transaction, as far as they can share one;
        one `Started` per command, in order. Copies of one invocation (one statement cannot
        claim a row twice: a copy meets the first one's outcome) and transactional steps (each
        body holds its transaction, so that slow ones run side by side) are left to `finish`,
        as is the whole batch if its transaction fails."""
        definitions = [self._definition(command) for command in commands]
        shared: list[int] = []
        keys: set[InvocationKey] = set()
        for i, (command, definition) in enumerate(zip(commands, definitions, strict=True)):
            key = invocation_key(command)
            if key not in keys and not definition.transactional:
                shared.append(i)
            keys.add(key)
        firsts: list[_Attempt | None] = [None] * len(commands)
        advanced: frozenset[InvocationKey] = frozenset()
        try:
            attempts, advanced = await self._run(
                [(commands[i], definitions[i]) for i in shared], advance=True
            )
        except Exception:
            log.warning(
                "a batch of %d command(s) failed; going on one by one", len(shared), exc_info=True
            )
        else:
            for i, attempt in zip(shared, attempts, strict=True):
                firsts[i] = attempt
        return [
            Started(
                command,
                definition,
                first,
                advanced=invocation_key(command) in advanced,
            )
            for command, definition, first in zip(commands, definitions, firsts, strict=True)
        ]

    async def finish(self, started: Started) -> StepResult | None:
        """Take a started command to its recorded outcome — claiming it if its batch did not,
        finishing a slow body under its lease, waiting out a duplicate in flight — and return
        the result that answers it (None: a stale attempt, nothing to answer). Raises when the
        storage fails or a duplicate holds the invocation past `duplicate_wait`: the command
        should then be tried again later."""
        try:
            return await self._process(started.command, started.definition, started.first)
        except BaseException:
            if isinstance(started.first, _Slow):
                started.first.body.cancel()
            raise

    def _definition(self, command: StepCommand) -> StepDefinition:
        body = command.body or command.step_name
        definition = self._steps.get(body)
        if definition is None:
            raise ValueError(f"this engine does not run step body {body!r}")
        return definition

    async def _process(
        self, command: StepCommand, definition: StepDefinition, first: _Attempt | None
    ) -> StepResult | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.duplicate_wait
        delay = 0.05
        attempt = first
        while True:
            if attempt is None:
                (attempt,), _ = await self._run([(command, definition)], advance=False)
            settled: Invocation | _NotClaimed | None = (
                await self._finish_under_lease(command, attempt.body)
                if isinstance(attempt, _Slow)
                else attempt
            )
            attempt = None  # from here on, every look claims afresh
            if not isinstance(settled, _NotClaimed):
                if settled is not None:
                    return result_for(command, settled)
                log.warning(
                    "lost the lease of %s/%s/%s during attempt %d; not publishing",
                    command.workflow_id,
                    command.step_name,
                    command.step_key,
                    command.attempt,
                )
            current = await self._storage.get(command)
            if current is None:
                continue
            verdict = decide(current, command)
            if verdict is Verdict.REPUBLISH:
                if current.status is InvocationStatus.SUCCEEDED:
                    metrics.count_cache_hit(command.step_name)
                return result_for(command, current)
            if verdict is Verdict.STALE:
                log.info(
                    "ignoring attempt %d of %s/%s: attempt %d holds it",
                    command.attempt,
                    command.workflow_id,
                    command.step_name,
                    current.attempt,
                )
                return None
            if verdict is Verdict.CLAIM:
                continue
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{command.workflow_id}/{command.step_name} is still held by "
                    f"{current.lease_owner} after {self._config.duplicate_wait}s"
                )
            remaining = max(current.lease_remaining or 0.0, 0.0) + 0.01
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self._config.poll_max)

    async def _run(
        self, items: Sequence[tuple[StepCommand, StepDefinition]], *, advance: bool
    ) -> tuple[list[_Attempt], frozenset[InvocationKey]]:
        """Claim the invocations of `items` (distinct ones) and run them, in one transaction;
        for each, the recorded outcome, `_NOT_CLAIMED` if its row would not be claimed, or
        `_Slow` for a body still running at `inline_budget`, whose claim then commits as its
        lease so that no transaction stays open for long. With `advance` (and an advancer),
        the recorded results are applied to their workflows in the same transaction: the keys
        of those applied come second."""
        if not items:
            return [], frozenset()
        loop = asyncio.get_running_loop()
        budget_ends = loop.time() + self._config.inline_budget
        results: list[_Attempt] = [_NOT_CLAIMED] * len(items)
        bodies: dict[int, asyncio.Future[Outcome]] = {}
        commands = [command for command, _ in items]
        transactional = any(definition.transactional for _, definition in items)
        async with self._storage.batch(transactional=transactional) as batch:
            try:
                claimed = await batch.claim_many(commands)
                self._hops.record_each("step.claimed", commands)
                if not claimed:
                    await batch.rollback()
                    return results, frozenset()
                mine = [i for i, (c, _) in enumerate(items) if invocation_key(c) in claimed]
                outcomes = await self._run_bodies(batch, items, mine, bodies, budget_ends)
                recorded = (
                    await batch.settle_many([(items[i][0], o) for i, o in outcomes.items()])
                    if outcomes
                    else {}
                )
                self._hops.record_each("step.recorded", commands)
                advanced, applied = (
                    await self._advance(batch, items, recorded)
                    if advance and self._advancer is not None and recorded
                    else (None, frozenset[InvocationKey]())
                )
                # Commits the outcomes, and the claims of slow bodies as their leases.
                await batch.commit()
                self._hops.record_each("step.committed", commands)
                if advanced is not None:
                    advanced.committed()
            except BaseException:
                for running in bodies.values():
                    running.cancel()
                raise
        for i in mine:
            command = items[i][0]
            if i in outcomes:
                # Missing only if the lease was lost, which a held row lock rules out; the
                # caller then looks at the row again.
                results[i] = recorded.get(invocation_key(command), _NOT_CLAIMED)
            else:
                results[i] = _Slow(bodies[i])
        return results, applied

    async def _advance(
        self,
        batch: InvocationBatch,
        items: Sequence[tuple[StepCommand, StepDefinition]],
        recorded: Mapping[InvocationKey, Invocation],
    ) -> tuple[Advanced, frozenset[InvocationKey]]:
        """Apply the recorded results to their workflows: what the advancer did, and the keys
        of the invocations whose results it applied."""
        assert self._advancer is not None
        pairs = [
            (result_for(command, recorded[key]), key)
            for command, _ in items
            if (key := invocation_key(command)) in recorded
        ]
        traces = (
            {
                command.workflow_id: tracing.traceparent_of(span)
                for command, _ in items
                if (span := tracing.active(command.message_id)) is not None
            }
            if tracing.on
            else None
        )
        advanced = await self._advancer.apply(
            batch.connection, [result for result, _ in pairs], traces
        )
        self._hops.record_each("step.advanced", [c for c, _ in items])
        return advanced, frozenset(
            key for result, key in pairs if result.message_id in advanced.applied
        )

    async def _run_bodies(
        self,
        batch: InvocationBatch,
        items: Sequence[tuple[StepCommand, StepDefinition]],
        mine: Sequence[int],
        bodies: dict[int, asyncio.Future[Outcome]],
        budget_ends: float,
    ) -> dict[int, Outcome]:
        """Run the claimed `items[i]` for i in `mine`; the outcomes of those done by
        `budget_ends` (transactional ones always). The others stay running in `bodies`."""
        for i in mine:
            command, definition = items[i]
            if not definition.transactional:
                bodies[i] = asyncio.ensure_future(self._call(command, definition, None))
        outcomes: dict[int, Outcome] = {}
        for i in mine:
            command, definition = items[i]
            if definition.transactional:
                outcomes[i] = await batch.run_transactional(
                    functools.partial(self._call, command, definition)
                )
        if bodies:
            await asyncio.wait(
                bodies.values(), timeout=budget_ends - asyncio.get_running_loop().time()
            )
        outcomes.update((i, done.result()) for i, done in bodies.items() if done.done())
        return outcomes

    async def _call(
        self, command: StepCommand, definition: StepDefinition, connection: DbConnection | None
    ) -> Outcome:
        self._hops.record(
            "step.body.start", command.message_id, command.workflow_id, command.step_name
        )
        outcome = await call(
            definition,
            command,
            publish=self._publish,
            connection=connection,
            reads=self._steps.reads_of(
                command.workflow_name, command.step_name, command.body or command.step_name
            ),
        )
        self._hops.record("step.body.end", command.message_id)
        return outcome

    async def _finish_under_lease(
        self, command: StepCommand, running: asyncio.Future[Outcome]
    ) -> Invocation | None:
        try:
            async with self._lease(command):
                outcome = await running
            recorded = await self._storage.settle_many([(command, outcome)])
            return recorded.get(invocation_key(command))
        except asyncio.CancelledError:
            running.cancel()
            # Stopping: give the lease up so that the redelivery can run it at once.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._storage.release(command), timeout=2.0)
            raise

    @contextlib.asynccontextmanager
    async def _lease(self, command: StepCommand) -> AsyncIterator[None]:
        """Keep renewing the lease while the body runs."""
        renewer = asyncio.create_task(self._renew(command))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, command: StepCommand) -> None:
        interval = self._storage.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._storage.renew(command):
                    log.warning(
                        "lease of %s/%s lost while running; its outcome will not be recorded",
                        command.workflow_id,
                        command.step_name,
                    )
                    return
            except Exception:
                log.warning("could not renew the lease of %s", command.message_id, exc_info=True)
